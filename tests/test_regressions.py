"""Bugs found by the fuzzers and fault tests, each pinned by the input that found it."""

from __future__ import annotations

import json
import struct

import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import load_file, save_file  # noqa: E402

import fastsafetensors  # noqa: E402
from fastsafetensors._src.files import read_file_header  # noqa: E402
from fastsafetensors.errors import InvalidHeaderDeserialization, TensorInvalidInfo  # noqa: E402


def _image(header: dict, data: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


@pytest.mark.parametrize("framework", ["numpy", "torch"])
def test_raw_wide_dtypes_return_every_byte(tmp_path, framework):
    """raw=True on an I64 tensor used to return one byte per element (found by test_fuzz_api)."""
    path = tmp_path / "m.safetensors"
    save_file({"i": torch.arange(-3, 3, dtype=torch.int64).reshape(2, 3), "h": torch.randn(5).half()}, str(path))
    out = fastsafetensors.load(path, framework=framework, raw=True)
    ref = load_file(str(path))
    for name, arr in out.items():
        data = arr.numpy() if framework == "torch" else arr
        assert tuple(data.shape) == (*ref[name].shape, ref[name].element_size())
        assert data.tobytes() == ref[name].view(torch.uint8).numpy().tobytes()


@pytest.mark.parametrize("shape", [[0, 2**63], [0, 2**64 - 1, 7], [0, 67, 67, 67, 157471, 48686073], [1] * 65])
def test_shapes_no_framework_can_hold(tmp_path, shape):
    """Valid headers whose (empty or all-ones) shapes no framework can hold used to escape as
    pybind11 TypeError or NumPy ValueError (found by test_fuzz_api.test_shapes)."""
    path = tmp_path / "m.safetensors"
    nbytes = 4 if 0 not in shape else 0
    path.write_bytes(_image({"t": {"dtype": "F32", "shape": shape, "data_offsets": [0, nbytes]}}, b"\0" * nbytes))
    assert read_file_header(path).tensors["t"].shape == tuple(shape)  # the header is valid
    with pytest.raises(TensorInvalidInfo, match="no framework can hold"):
        fastsafetensors.load(path)


def test_rank_is_bounded_while_parsing(tmp_path):
    """A 50-million-dimension shape took 12x the header in memory (found by test_resource_limits)."""
    path = tmp_path / "m.safetensors"
    path.write_bytes(_image({"t": {"dtype": "U8", "shape": [1] * 1025, "data_offsets": [0, 1]}}, b"x"))
    with pytest.raises(InvalidHeaderDeserialization, match="more than 1024 dimensions"):
        read_file_header(path)
    path.write_bytes(_image({"t": {"dtype": "U8", "shape": [1] * 1024, "data_offsets": [0, 1]}}, b"x"))
    assert len(read_file_header(path).tensors["t"].shape) == 1024
