"""What a load did: bytes, files and seconds per phase, for users, logs and benchmarks."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Type, TypeVar
from .errors import ArgumentTypeError

__all__ = ["LoadMetrics"]

_M = TypeVar("_M", bound="LoadMetrics")


@dataclass
class LoadMetrics:
    """Filled in by a load. ``seconds`` holds wall time per phase (headers, plan, read, ...)."""

    # Distinct files (or objects) the load read bytes from, each once however many reads touched it
    # (kept by count_files, so every read path counts alike).
    files: int = 0
    tensors: int = 0
    bytes_read: int = 0
    bytes_per_file: Dict[str, int] = field(default_factory=dict)
    # GPU loads: bytes carried by each read path ("staged", "mapped", "gds").
    bytes_per_path: Dict[str, int] = field(default_factory=dict)
    # Bytes read between wanted ranges only so that neighbouring ranges share one vectored read,
    # then dropped (never part of bytes_read).
    gap_bytes: int = 0
    read_calls: int = 0  # host loads: vectored reads issued (one reaches many destinations)
    # Host buffer bytes whose memory the host cache served (already faulted in: no page faults).
    reused_bytes: int = 0
    # mmap=True: bytes of bytes_read that are views of the files' mappings (nothing copied).
    mapped_bytes: int = 0
    # URLs: bytes received (headers, wanted ranges and the gaps fetched between them), ranged GETs
    # and HEADs sent (retries included), and retries of failed requests.
    remote_bytes: int = 0
    remote_requests: int = 0
    remote_retries: int = 0
    # Host loads: bytes of bytes_read that were outside the page cache, read with their device's
    # cold shape (docs/usage.md, Cold reads).
    cold_bytes: int = 0
    # ... of which read through the page cache ("buffered") and with O_DIRECT ("O_DIRECT"): the
    # cold read mode actually used. O_DIRECT asked for (FASTSAFETENSORS_COLD_ODIRECT=1) but not
    # possible adds a line to cold_fallbacks (file, device, why), also logged as a warning.
    cold_bytes_per_mode: Dict[str, int] = field(default_factory=dict)
    cold_fallbacks: List[str] = field(default_factory=list)
    seconds: Dict[str, float] = field(default_factory=dict)

    @classmethod
    def given(cls: Type[_M], metrics: Optional[_M]) -> _M:
        """The caller's ``metrics=`` (which must be one of these), or a new one to fill in."""
        if metrics is None:
            return cls()
        if not isinstance(metrics, cls):
            raise ArgumentTypeError(f"metrics must be a {cls.__name__}, not {type(metrics).__name__}")
        return metrics

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())

    @property
    def gb_per_s(self) -> float:
        t = self.total_seconds
        return self.bytes_read / t / 1e9 if t > 0 else 0.0

    def count_files(self, paths: Sequence[str], per_file: Sequence[int]) -> None:
        """Adds the bytes a load read (or mapped) from each file: ``per_file[i]`` from ``paths[i]``,
        as the readers report them (one number per file, never a walk over the ranges)."""
        for path, n in zip(paths, per_file):
            if n:
                self.bytes_per_file[path] = self.bytes_per_file.get(path, 0) + n
        self.files = len(self.bytes_per_file)
        self.bytes_read += sum(per_file)

    def count_host_reads(self, stats: Dict[str, Any]) -> None:
        """Adds what one ``HostReader.read`` reports beyond the bytes (callers count those)."""
        self.gap_bytes += stats["gap_bytes"]
        self.read_calls += stats["reads"]
        self.cold_bytes += stats["cold_bytes"]
        for device in stats["cold_reads"]:
            mode = "O_DIRECT" if device["direct"] else "buffered"
            self.cold_bytes_per_mode[mode] = self.cold_bytes_per_mode.get(mode, 0) + device["bytes"]

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def summary(self) -> str:
        phases = ", ".join(f"{k} {v:.3f}s" for k, v in self.seconds.items())
        remote = (f"; {self.remote_requests} requests, {self.remote_retries} retries, "
                  f"{self.remote_bytes / 1e9:.3f} GB received" if self.remote_requests else "")
        cold = "".join(f", {n / 1e9:.3f} GB cold {mode}" for mode, n in sorted(self.cold_bytes_per_mode.items()))
        return (f"{self.tensors} tensors from {self.files} file(s), {self.bytes_read / 1e9:.3f} GB{cold} "
                f"in {self.total_seconds:.3f}s ({self.gb_per_s:.2f} GB/s; {phases}{remote})")
