"""What a framework backend can do is said by the backend (Framework attributes and methods), not
by its name checked elsewhere."""

from __future__ import annotations

import pytest

from fastsafetensors.frameworks import Framework, get_framework

torch = pytest.importorskip("torch")


def test_only_torch_tensors_travel_over_a_process_group():
    assert get_framework("torch").group_shareable
    numpy = get_framework("numpy")
    assert not numpy.group_shareable
    for call in (lambda: numpy.view_type("F16", (2,)), lambda: numpy.from_bytes(b"", "F16", (2,))):
        with pytest.raises(NotImplementedError, match="numpy: tensors cannot be shared over a process group"):
            call()


def test_file_mappings_are_viewed_by_numpy_and_torch_only():
    assert get_framework("numpy").maps_files and get_framework("torch").maps_files
    assert not Framework.maps_files  # a new backend maps nothing until it says so


@pytest.mark.parametrize("framework", ["numpy", "torch", "jax"])
@pytest.mark.parametrize("offset, shape", [(60, (2,)), (-4, (1,)), (0, (-1,)), (65, (0,))])
def test_from_buffer_refuses_a_view_outside_its_buffer(framework, offset, shape):
    """Every backend refuses what the engine's Buffer.view refuses, NumPy's arrays over its
    prepare_buffer array included: a negative offset would read the bytes before the buffer, a -1
    dimension would be inferred from what the buffer has left."""
    from fastsafetensors import _cpp

    fw = get_framework(framework)
    buf = _cpp.HostBuffer.allocate(64)
    for source in (buf, fw.prepare_buffer(buf)):
        with pytest.raises((ValueError, TypeError)):
            fw.from_buffer(source, offset, "F32", shape)
        with pytest.raises((ValueError, TypeError)):
            fw.from_buffer(source, offset, "F32", shape, raw=True)
