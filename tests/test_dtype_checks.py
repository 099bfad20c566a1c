"""A dtype a framework cannot hold is refused before any byte is read, by the same rule that
from_buffer applies when it builds the array."""

from __future__ import annotations

import math

import pytest

import fastsafetensors
from fastsafetensors import _cpp, errors
from fastsafetensors._src.dtypes import BITS
from fastsafetensors.frameworks import get_framework

from .helpers import random_tensor, save

FRAMEWORKS = ["numpy", "torch", "jax"]


def _outcome(fn):
    try:
        fn()
        return "ok"
    except errors.UnsupportedDtype:
        return "unsupported"


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("shape", [(2, 4), (3,), ()])
def test_check_dtype_agrees_with_from_buffer(framework, shape):
    fw = get_framework(framework)
    buf = _cpp.HostBuffer.allocate(4096)
    for dtype in BITS:
        if BITS[dtype] * math.prod(shape) % 8:
            continue  # no such tensor passes the header checks
        built = _outcome(lambda: fw.from_buffer(buf, 0, dtype, shape))
        checked = _outcome(lambda: fw.check_dtype(dtype, shape))
        assert checked == built, (framework, dtype, shape)


def test_jax_64_bit_tensors_are_refused_before_reading(tmp_path):
    import jax

    if jax.config.jax_enable_x64:
        pytest.skip("x64 is on in this process")
    path = save(tmp_path / "m.safetensors", {"ids": random_tensor("I64", (4,), 0), "w": random_tensor("F32", (4,), 1)})
    metrics = fastsafetensors.LoadMetrics()
    with pytest.raises(errors.UnsupportedDtype, match="JAX_ENABLE_X64=1") as exc_info:
        fastsafetensors.load(path, framework="jax", metrics=metrics)
    assert exc_info.value.tensor == "ids" and exc_info.value.filename == path
    assert metrics.bytes_read == 0 and "read" not in metrics.seconds


def test_an_impossible_conversion_is_refused_before_reading(tmp_path):
    path = save(tmp_path / "m.safetensors", {"w": random_tensor("F32", (4,), 1)})
    metrics = fastsafetensors.LoadMetrics()
    with pytest.raises(errors.UnsupportedDtype):
        fastsafetensors.load(path, framework="numpy", dtype="F4", metrics=metrics)
    assert metrics.bytes_read == 0
