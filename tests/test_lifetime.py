"""Tensors own their memory: they outlive close() and the loader, nothing leaks, threads are safe."""

from __future__ import annotations

import gc
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np
import pytest
from safetensors.torch import load_file

import fastsafetensors
from fastsafetensors import SafeTensorsFileLoader, SingleGroup, _cpp, errors, fastsafe_open

from .helpers import assert_exact, open_fds, rss_bytes, tensor_bytes

FRAMEWORKS = ["numpy", "torch", "jax"]


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def _scribble(nbytes: int) -> None:
    """Allocates and fills memory of about the size just freed, so a tensor still pointing at
    freed memory would read these bytes instead of its own."""
    junk = [np.full(nbytes // 8 + 64, 0x5A, dtype=np.uint8) for _ in range(8)]
    del junk


def _file_bytes(paths) -> int:
    return sum(t.numel() * t.element_size() for p in paths for t in load_file(p).values())


def _settle() -> int:
    gc.collect()
    return _cpp.testing.host_live_bytes()


# --- tensors outlive their owners ----------------------------------------------------------------

@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_tensors_valid_after_buffer_and_loader_close(multi_files, fw):
    start = _settle()
    loader = SafeTensorsFileLoader(SingleGroup(), device="cpu", framework=fw)
    loader.add_filenames({0: multi_files})
    fb = loader.copy_files_to_device()
    tensors = {n: fb.get_tensor(n) for n in fb.key_to_rank_lidx}
    fb.close()
    loader.close()
    _scribble(_file_bytes(multi_files))
    assert _settle() > start  # the tensors hold the buffers
    assert_exact(tensors, _ref(multi_files))


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_tensors_valid_after_loader_deleted(multi_files, fw):
    loader = SafeTensorsFileLoader(SingleGroup(), device="cpu", framework=fw)
    loader.add_filenames({0: multi_files})
    fb = loader.copy_files_to_device()
    tensors = {n: fb.get_tensor(n) for n in fb.key_to_rank_lidx}
    del fb, loader  # never closed
    _settle()
    _scribble(_file_bytes(multi_files))
    assert_exact(tensors, _ref(multi_files))


@pytest.mark.parametrize("fw", ["pt", "numpy", "jax"])
def test_tensors_valid_after_fastsafe_open_exits(multi_files, fw):
    with fastsafe_open(multi_files, framework=fw, nogds=True) as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    _settle()
    _scribble(_file_bytes(multi_files))
    assert_exact(tensors, _ref(multi_files))


def test_tensors_valid_after_load_returns(dtype_file):
    out = fastsafetensors.load(dtype_file, framework="torch")
    _settle()
    _scribble(_file_bytes([dtype_file]))
    assert_exact(out, dtype_file)


# --- close() -------------------------------------------------------------------------------------

def test_close_twice_and_never(multi_files):
    start = _settle()
    loader = SafeTensorsFileLoader(SingleGroup(), device="cpu", framework="numpy")
    loader.add_filenames({0: multi_files})
    fb = loader.copy_files_to_device()
    fb.close()
    fb.close()
    loader.close()
    loader.close()
    with fastsafe_open(multi_files, framework="numpy") as f:
        f.get_tensor("layer0.w")
        f.close()  # then __exit__ closes again
    # Never closed: dropping the objects frees everything.
    never = SafeTensorsFileLoader(SingleGroup(), device="cpu", framework="numpy")
    never.add_filenames({0: multi_files})
    kept = never.copy_files_to_device()
    kept.get_tensor("layer1.w")
    del never, kept
    assert _settle() == start


def test_use_after_close_raises(multi_files):
    loader = SafeTensorsFileLoader(SingleGroup(), device="cpu", framework="numpy")
    loader.add_filenames({0: multi_files})
    fb = loader.copy_files_to_device()
    fb.get_tensor("layer0.w")  # cached before close: must not be served from the cache after it
    fb.close()
    for call in (lambda: fb.get_tensor("layer0.w"), lambda: fb.get_tensor("layer1.b"),
                 lambda: fb.get_filename("layer0.w"), lambda: fb.get_shape("layer0.w"),
                 lambda: fb.get_sharded("layer0.w", 0)):
        with pytest.raises(errors.LoaderClosedError):
            call()
    loader.close()
    for call in (lambda: loader.add_filenames({0: multi_files}), loader.get_keys,
                 lambda: loader.get_shape("layer0.w"), loader.copy_files_to_device):
        with pytest.raises(errors.LoaderClosedError):
            call()
    f = fastsafe_open(multi_files, framework="numpy")
    f.get_tensor("layer0.w")
    f.close()
    for call in (lambda: f.get_tensor("layer0.w"), f.keys, f.get_keys, f.metadata):
        with pytest.raises(errors.LoaderClosedError):
            call()
    unused = fastsafe_open(multi_files, framework="numpy")
    unused.close()
    with pytest.raises(errors.LoaderClosedError):
        unused.get_tensor("layer0.w")
    assert issubclass(errors.LoaderClosedError, RuntimeError)


# --- memory accounting -------------------------------------------------------------------------------

@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_host_live_bytes_returns_to_start(multi_files, dtype_file, fw):
    start = _settle()
    names = None if fw == "torch" else [n for n in load_file(dtype_file) if n != "t_F4"]
    out = fastsafetensors.load(dtype_file, framework=fw, names=names)
    out.update(fastsafetensors.load(multi_files, framework=fw))
    assert _settle() >= start + _file_bytes(multi_files)
    kept = out.pop("layer0.w")
    out.clear()
    assert _settle() > start  # one tensor keeps its whole buffer alive
    assert tensor_bytes(kept) == tensor_bytes(load_file(multi_files[0])["layer0.w"])
    del kept
    assert _settle() == start


def test_load_drop_cycles_do_not_leak(multi_files):
    """200 loads of three files through each API: no file descriptor, buffer or RSS growth."""
    ref = _ref(multi_files)

    def cycle(i: int) -> None:
        if i % 3 == 0:
            out = fastsafetensors.load(multi_files, framework="torch")
        elif i % 3 == 1:
            out = fastsafetensors.load(multi_files, framework="numpy")
        else:
            with fastsafe_open(multi_files, framework="pt") as f:
                out = {k: f.get_tensor(k) for k in f.keys()}
        if i % 50 == 0:
            assert_exact(out, ref)

    start_live = _settle()
    for i in range(20):
        cycle(i)
    gc.collect()
    fds, rss = open_fds(), rss_bytes()
    for i in range(20, 200):
        cycle(i)
    gc.collect()
    assert open_fds() <= fds
    assert _cpp.testing.host_live_bytes() == start_live
    # 180 more loads of ~10 KB each: growth beyond a few MiB would be a leak, not allocator noise.
    assert rss_bytes() - rss < 8 << 20


# --- threads -------------------------------------------------------------------------------------

def test_eight_threads_load_at_once(multi_files, dtype_file, llama_dir):
    jobs = [("same", multi_files[0], "numpy")] * 3 + [("same", multi_files[0], "torch")] * 2 + [
        ("other", multi_files[1], "torch"), ("other", dtype_file, "torch"), ("other", llama_dir, "numpy")]
    barrier = threading.Barrier(len(jobs))

    def run(job):
        _, path, fw = job
        barrier.wait(timeout=30)
        results = []
        for _ in range(5):
            results.append(fastsafetensors.load(path, framework=fw))
        return results

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        outcomes = list(pool.map(run, jobs, timeout=120))
    for (_, path, _), results in zip(jobs, outcomes):
        ref = _ref(_shards(path))
        for out in results:
            assert_exact(out, ref)


def test_eight_threads_share_one_loader_buffer(multi_files):
    loader = SafeTensorsFileLoader(SingleGroup(), device="cpu", framework="pt")
    loader.add_filenames({0: multi_files})
    fb = loader.copy_files_to_device()
    ref = _ref(multi_files)
    names = sorted(ref)

    def run(k):
        return {n: fb.get_tensor(n) for n in names[k % 3:] + names[: k % 3]}

    with ThreadPoolExecutor(max_workers=8) as pool:
        for out in pool.map(run, range(8), timeout=60):
            assert_exact(out, ref)
    loader.close()


def _shards(path):
    if os.path.isdir(path):
        return sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".safetensors"))
    return [path]


def _ref(paths):
    ref = {}
    for p in paths:
        ref.update(load_file(p))
    return ref

