"""load(..., mmap=True): tensors are copy-on-write views of the mapped files."""

from __future__ import annotations

import gc
import os
import shutil

import numpy as np
import pytest
import safetensors.torch
import torch

import fastsafetensors
from fastsafetensors import _cpp, errors
from fastsafetensors._src.files import read_file_header, read_headers
from fastsafetensors._src.api import load_files
from fastsafetensors._src.plan import plan_mapped

from .helpers import assert_exact, data_ptr, entry, random_tensor, reference_bytes, save, tensor_bytes, write_raw


def _mapped_from(path: str, t) -> bool:
    """Whether the tensor's first byte lies in a mapping of ``path`` (/proc/self/maps)."""
    ptr, real = data_ptr(t), os.path.realpath(path)
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split()
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            if lo <= ptr < hi:
                return len(fields) >= 6 and fields[5] == real
    return False


@pytest.mark.parametrize("framework", ["numpy", "torch"])
def test_every_dtype_bit_exact_and_mapped(dtype_file, framework):
    metrics = fastsafetensors.LoadMetrics()
    out = fastsafetensors.load(dtype_file, framework=framework, mmap=True, raw=framework == "numpy",
                               metrics=metrics)
    ref = reference_bytes(dtype_file)
    assert set(out) == set(ref)
    assert all(tensor_bytes(out[k]) == ref[k] for k in ref)
    if framework == "torch":
        assert_exact(out, dtype_file)
    nonempty = [k for k, v in ref.items() if v]
    assert all(_mapped_from(dtype_file, out[k]) for k in nonempty)
    assert metrics.mapped_bytes == metrics.bytes_read == sum(len(v) for v in ref.values())


@pytest.mark.parametrize("framework", ["numpy", "torch"])
def test_writes_never_reach_the_file(tmp_path, framework):
    path = save(tmp_path / "m.safetensors", {"w": random_tensor("F32", (64, 64), 1)})
    before = open(path, "rb").read()
    t = fastsafetensors.load(path, framework=framework, mmap=True)["w"]
    t[:] = 7.0
    assert open(path, "rb").read() == before
    assert (t == 7.0).all()
    again = fastsafetensors.load(path, framework=framework, mmap=True)["w"]
    assert tensor_bytes(again) == reference_bytes(path)["w"]


@pytest.mark.parametrize("mmap", [True, False])
def test_numpy_exports_each_buffer_once(tmp_path, monkeypatch, mmap):
    """NumPy arrays view one array of each buffer's bytes: a DLPack export per tensor took a third
    of a mapped load's own time (issue 14)."""
    paths = [save(tmp_path / f"{i}.safetensors", {f"{k}{i}": random_tensor(dt, (5, 3), 12 + i)
                                                  for k, dt in (("a", "F32"), ("b", "BF16"), ("c", "I8"))})
             for i in range(2)]
    views = []
    real = _cpp.Buffer.view
    monkeypatch.setattr(_cpp.Buffer, "view", lambda self, *a: views.append(a) or real(self, *a))
    out = fastsafetensors.load(paths, framework="numpy", mmap=mmap)
    assert len(views) == 2
    assert_exact(out, {k: v for p in paths for k, v in safetensors.torch.load_file(p).items()})
    assert [str(out[k].dtype) for k in ("a0", "b0", "c0")] == ["float32", "bfloat16", "int8"]


def test_tensors_outlive_everything_else(tmp_path):
    """A tensor keeps its mapping alive: the dict, the other tensors and the file itself gone."""
    d = tmp_path / "ckpt"
    os.makedirs(d)
    path = save(d / "m.safetensors", {"a": random_tensor("BF16", (300, 70), 2), "b": random_tensor("I32", (9,), 3)})
    want = reference_bytes(path)["a"]
    out = fastsafetensors.load(str(d), framework="numpy", mmap=True)
    a = out.pop("a")
    del out
    gc.collect()
    shutil.rmtree(d)
    assert tensor_bytes(a) == want


def test_misaligned_tensors_are_read_instead(tmp_path):
    data = bytes(range(1, 6)) + np.arange(4, dtype=np.float32).tobytes()  # F32 at data offset 5
    path = write_raw(tmp_path / "odd.safetensors",
                     {"bytes": entry("U8", [5], 0, 5), "f": entry("F32", [4], 5, 21)}, data, pad_to=8)
    metrics = fastsafetensors.LoadMetrics()
    out = fastsafetensors.load(path, mmap=True, metrics=metrics)
    assert out["f"].tolist() == [0.0, 1.0, 2.0, 3.0] and out["bytes"].tolist() == [1, 2, 3, 4, 5]
    assert _mapped_from(path, out["bytes"]) and not _mapped_from(path, out["f"])
    assert metrics.mapped_bytes == 5 and metrics.bytes_read == 21


def test_names_and_dtype(llama_dir):
    names = ["model.norm.weight", "lm_head.weight"]
    out = fastsafetensors.load(llama_dir, framework="torch", names=names, mmap=True)
    full = fastsafetensors.load(llama_dir, framework="torch")
    assert_exact(out, {k: full[k] for k in names})
    half = fastsafetensors.load(llama_dir, framework="torch", names=names, mmap=True, dtype="F16")
    assert all(half[k].dtype == torch.float16 and torch.equal(half[k], full[k].half()) for k in names)


def test_a_file_changed_since_its_header_was_read_is_refused(tmp_path):
    path = save(tmp_path / "m.safetensors", {"w": random_tensor("F32", (8,), 4)})
    f = read_file_header(path)
    with open(path, "ab") as fh:
        fh.write(b"\0" * 4096)
    with pytest.raises(errors.TruncatedFileError, match="changed after its header was read"):
        load_files([f], "numpy", mmap=True)


@pytest.mark.parametrize("kwargs, match", [
    ({"framework": "jax"}, "not jax"),
    ({"device": "cuda"}, "on the CPU"),
    ({"verify": True}, "mmap=True reads none"),
    ({"sha256": {"m.safetensors": "0" * 64}}, "mmap=True reads none"),
    ({"direct_io": True}, "direct_io=True bypasses the page cache"),
])
def test_what_mmap_cannot_do_is_refused(tmp_path, kwargs, match):
    path = save(tmp_path / "m.safetensors", {"w": random_tensor("F32", (8,), 5)})
    with pytest.raises(ValueError, match=match):
        fastsafetensors.load(path, mmap=True, **kwargs)


def test_a_mapped_load_plans_no_reads(tmp_path, monkeypatch):
    """Its tensors are views of the mapping: no read plan is built (to be thrown away) for them."""
    path = save(tmp_path / "m.safetensors", {"a": random_tensor("F32", (64,), 6), "b": random_tensor("BF16", (3, 5), 7)})

    def no_reads(*args):
        raise AssertionError("a mapped load planned reads")

    monkeypatch.setattr(_cpp, "plan_file", no_reads)
    assert_exact(fastsafetensors.load(path, framework="torch", mmap=True), path)


def test_the_mapped_plan_places_tensors_at_their_file_offsets(tmp_path):
    a = save(tmp_path / "a.safetensors", {"x": random_tensor("F32", (4, 4), 8), "y": random_tensor("I16", (3, 1), 9)})
    b = save(tmp_path / "b.safetensors", {"z": random_tensor("F64", (2,), 10)})
    files = read_headers([a, b])
    plan = plan_mapped(files, ["z", "y"])
    assert list(plan.tensors) == ["y", "z"]  # file order, as plan_load
    assert plan.buffer_sizes == [f.size for f in files] and len(plan.ranges) == 0
    for name, loc in plan.tensors.items():
        f = files[loc.file]
        info = f.tensors[name]
        assert loc.buffer == loc.file and (loc.dtype, loc.shape) == (info.dtype, tuple(info.shape))
        with open(f.path, "rb") as fh:
            fh.seek(loc.offset)
            assert fh.read(info.nbytes) == reference_bytes(f.path)[name]
    with pytest.raises(errors.TensorNotFound):
        plan_mapped(files, ["x", "nope"])
    with pytest.raises(errors.DuplicateTensorName):
        plan_mapped(read_headers([a, save(tmp_path / "c.safetensors", {"x": random_tensor("U8", (1,), 11)})]))
