"""Soak and concurrency: repeated loads keep RSS, fds, threads and host memory flat; loads from
several threads at once are exact; loaders used after close() raise a clear error."""

from __future__ import annotations

import os
import threading

import pytest

torch = pytest.importorskip("torch")

import fastsafetensors  # noqa: E402
from fastsafetensors import SafeTensorsFileLoader, _cpp, fastsafe_open  # noqa: E402
from fastsafetensors.errors import LoaderClosedError  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from ._hardening import Resources, assert_exact, assert_released, make_checkpoint, rss_bytes  # noqa: E402

CYCLES = 1000
RSS_SLACK = 24 << 20  # allocator noise; one leaked load per cycle would be ~600 MB


def test_load_drop_cycles_stay_flat(tmp_path):
    paths = make_checkpoint(tmp_path, files=2)
    for _ in range(50):  # warm-up: reader threads, framework caches, allocator arenas
        fastsafetensors.load(paths, framework="numpy")
        fastsafetensors.load(paths, framework="torch")
    before, rss0 = Resources.now(), rss_bytes()
    for i in range(CYCLES):
        out = fastsafetensors.load(paths, framework="numpy" if i % 2 else "torch")
        assert len(out) == 8
        del out
    assert_released(before)
    grown = rss_bytes() - rss0
    assert grown < RSS_SLACK, f"RSS grew by {grown / 2**20:.1f} MiB over {CYCLES} load/drop cycles"
    assert_exact(fastsafetensors.load(paths), paths)


def test_eight_threads_same_and_different_files(tmp_path):
    os.makedirs(tmp_path / "shared")
    shared = make_checkpoint(tmp_path / "shared", files=2)
    own = []
    for t in range(4):
        os.makedirs(tmp_path / f"own{t}")
        own.append(make_checkpoint(tmp_path / f"own{t}", files=1, seed=10 + t))
    jobs = [shared] * 4 + own
    results = [[] for _ in jobs]
    errors = []
    start = threading.Barrier(len(jobs))

    def work(k):
        try:
            start.wait()
            for _ in range(5):
                # Half the threads share the default reader, half use their own thread count.
                results[k].append(fastsafetensors.load(jobs[k], threads=None if k % 2 else 3))
        except BaseException as exc:  # reported from the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors
    for k, outs in enumerate(results):
        assert len(outs) == 5
        for out in outs:
            assert_exact(out, jobs[k])


def test_loader_after_close(tmp_path):
    paths = make_checkpoint(tmp_path, files=1)
    loader = SafeTensorsFileLoader(framework="pytorch")
    loader.add_filenames({0: paths})
    fb = loader.copy_files_to_device()
    kept = fb.get_tensor("layer0.w")
    fb.close()
    loader.close()
    loader.close()  # idempotent
    with pytest.raises(LoaderClosedError, match="closed"):
        fb.get_tensor("layer0.b")
    with pytest.raises(LoaderClosedError, match="closed"):
        loader.add_filenames({0: paths})
    with pytest.raises(LoaderClosedError, match="closed"):
        loader.copy_files_to_device()
    with pytest.raises(LoaderClosedError, match="closed"):
        loader.get_keys()
    assert torch.equal(kept, load_file(paths[0])["layer0.w"])  # taken before close: still valid

    with fastsafe_open(paths, framework="pt") as f:
        t = f.get_tensor("layer0.idx")
    with pytest.raises(LoaderClosedError):
        f.get_tensor("layer0.idx")
    assert torch.equal(t, load_file(paths[0])["layer0.idx"])
    assert _cpp.testing.host_live_bytes() > 0  # `kept` and `t` still own their buffers
