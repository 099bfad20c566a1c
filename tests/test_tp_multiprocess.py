"""Tensor parallelism in real process groups: 2 and 4 gloo ranks on 127.0.0.1.

Each world size starts one group that runs every scenario of tp_worker.py (see tp_harness); each
test here checks one scenario's outcome on every rank. Every loaded tensor is compared bit for bit
with slices of safetensors.torch.load_file's output.
"""

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from . import tp_harness  # noqa: E402

WORLDS = (2, 4)


@pytest.mark.timeout(tp_harness.GROUP_TIMEOUT_S + 60)
@pytest.mark.parametrize("scenario", tp_harness.scenario_names())
@pytest.mark.parametrize("world", WORLDS)
def test_scenario(world, scenario):
    tp_harness.assert_scenario(world, scenario)


@pytest.mark.gpu
@pytest.mark.timeout(tp_harness.GROUP_TIMEOUT_S + 60)
@pytest.mark.parametrize("scenario", tp_harness.scenario_names())
def test_scenario_to_cuda(scenario):
    """The same scenarios with device="cuda:0" on every rank (gloo moves the bytes; one GPU suffices)."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    tp_harness.assert_scenario(2, scenario, device="cuda:0")
