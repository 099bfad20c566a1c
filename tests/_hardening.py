"""Helpers shared by the hardening tests: small real checkpoints, exactness and leak checks."""

from __future__ import annotations

import gc
import os
import time
from dataclasses import dataclass
from typing import Dict, List

import torch
from safetensors.torch import load_file, save_file

from fastsafetensors import _cpp


def make_checkpoint(directory, files: int = 2, seed: int = 0, scale: int = 1) -> List[str]:
    """``files`` safetensors files written by safetensors itself, a few hundred KB each."""
    g = torch.Generator().manual_seed(seed)
    paths = []
    for i in range(files):
        tensors = {
            f"layer{i}.w": torch.randn(128 * scale, 257, generator=g),
            f"layer{i}.b": torch.randn(257, generator=g).to(torch.bfloat16),
            f"layer{i}.idx": torch.randint(0, 1 << 40, (1000,), generator=g),
            f"layer{i}.odd": torch.randn(3, 5, 7, generator=g).half(),
        }
        path = os.path.join(os.fspath(directory), f"model-{i:05d}.safetensors")
        save_file(tensors, path, metadata={"format": "pt"})
        paths.append(path)
    return paths


def assert_exact(out: Dict[str, object], paths: List[str]) -> None:
    """``out`` (NumPy arrays) holds exactly the tensors of ``paths``, bit for bit."""
    ref = {}
    for p in paths:
        ref.update(load_file(p))
    assert set(out) == set(ref)
    for name, arr in out.items():
        expected = ref[name]
        assert tuple(arr.shape) == tuple(expected.shape), name
        assert arr.tobytes() == expected.contiguous().view(torch.uint8).numpy().tobytes(), name


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Resources:
    """What a failed load must give back: file descriptors, threads and engine host memory."""

    fds: int
    threads: int
    host_bytes: int

    @classmethod
    def now(cls) -> "Resources":
        # Garbage left by earlier tests (reference cycles holding arrays) must not count here.
        gc.collect()
        return cls(len(os.listdir("/proc/self/fd")), len(os.listdir("/proc/self/task")), _cpp.testing.host_live_bytes())


def assert_released(before: Resources, timeout: float = 20.0) -> None:
    """No more fds, threads or engine host bytes than ``before``. Polled for a moment, because a
    Python thread that join() returned for leaves /proc/self/task a little later (threads that
    were finishing when ``before`` was taken may also be gone by now, hence at most); up to 20 s because
    5 s failed on an unchanged tree on a 2-vCPU VM at load average ~10."""
    deadline = time.monotonic() + timeout
    while True:
        now = Resources.now()
        released = now.fds == before.fds and now.host_bytes == before.host_bytes and now.threads <= before.threads
        if released or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert released, f"resources not released: before {before}, now {now}"
