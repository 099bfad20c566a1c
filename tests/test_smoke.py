"""End-to-end smoke test: a file written by safetensors loads bit-exact into NumPy."""

import os
import shutil
import subprocess
import sys

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


def test_an_unbuilt_source_tree_says_how_to_build(tmp_path):
    # -S: no site-packages, where the installed (built) package would be found first
    src = os.path.dirname(fastsafetensors.__file__)
    shutil.copytree(src, tmp_path / "fastsafetensors", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    proc = subprocess.run([sys.executable, "-S", "-c", "import fastsafetensors"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, env={"PATH": os.environ.get("PATH", "")})
    assert proc.returncode != 0
    assert "compiled engine (_cpp*.so) is missing" in proc.stderr and "pip install ." in proc.stderr
