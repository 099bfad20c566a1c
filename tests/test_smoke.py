"""End-to-end smoke test: a file written by safetensors loads bit-exact into NumPy."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import load_file, save_file  # noqa: E402

import fastsafetensors  # noqa: E402


def test_load_numpy_matches_reference(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"w": torch.randn(17, 33), "i": torch.arange(9, dtype=torch.int64)}, str(path))
    ref = load_file(str(path))
    out = fastsafetensors.load(path, framework="numpy")
    assert set(out) == set(ref)
    for name, arr in out.items():
        assert arr.tobytes() == ref[name].numpy().tobytes()
        assert arr.ctypes.data % 64 == 0
