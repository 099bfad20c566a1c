"""Read plan to host buffers over the network: the plan's ranges as concurrent ranged GETs.

Ranges are cut at FASTSAFETENSORS_REMOTE_CHUNK_MB and neighbours in one object share a GET when
the bytes between them are at most FASTSAFETENSORS_REMOTE_GAP_KB; each response is copied once,
piece by piece as it arrives, straight into its destinations in the host buffers. At most
``concurrency`` GETs are in flight, each holding about one piece (objects.stream_range), so the
responses held at once stay near concurrency x 1 MiB whatever the chunk size. The destination
pages of each piece are mapped in by one call before it is copied (_populate).
"""

from __future__ import annotations

import ctypes
import mmap
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple, cast

import numpy as np

from ... import settings
from ..plan import LoadPlan
from .objects import RemoteObject, stream_range
from .requests import Counters

__all__ = ["Get", "plan_gets", "read_ranges"]

_MADV_POPULATE_WRITE = 23  # Linux 5.14+; older kernels refuse it (EINVAL) and pages fault in as they are written


def _madvise() -> Optional[Callable[[int, int, int], int]]:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.madvise.restype = ctypes.c_int
    return cast(Callable[[int, int, int], int], libc.madvise)


_MADVISE = _madvise()


@dataclass
class Get:
    """One ranged GET of object ``file``: bytes [start, end), delivered to ``parts``, each
    (object offset, length, destination buffer, destination offset)."""

    file: int
    start: int
    end: int
    parts: List[Tuple[int, int, int, int]] = field(default_factory=list)

    @property
    def wanted(self) -> int:
        return sum(p[1] for p in self.parts)


def plan_gets(ranges: Iterable[Any], chunk: int, gap: int) -> List[Get]:
    """The GETs that read ``ranges`` (ReadRanges): big ones split, close neighbours merged."""
    gets: List[Get] = []
    for r in sorted(ranges, key=lambda r: (r.file, r.file_offset)):
        offset, end = r.file_offset, r.file_offset + r.length
        while offset < end:
            last = gets[-1] if gets else None
            if last is not None and last.file == r.file and offset - last.end <= gap and offset < last.start + chunk:
                n = min(end - offset, last.start + chunk - offset)  # fill the open GET up to a chunk
                last.end = max(last.end, offset + n)
            else:
                n = min(chunk, end - offset)
                last = Get(r.file, offset, offset + n)
                gets.append(last)
            last.parts.append((offset, n, r.dst, r.dst_offset + offset - r.file_offset))
            offset += n
    return gets


def _populate(start: int, length: int) -> None:
    """Maps in the destination pages of a piece in one madvise(MADV_POPULATE_WRITE) before it is
    copied there (what the engine's file reads do in C++, detail/populate.hpp): faulting fresh pages in one at a time under the copy cost the client ~0.17 s of
    CPU more per GiB (0.63 against 0.46 s on the 2-vCPU VMs), CPU that the server on the same
    cores needs. Per piece, not per GET, so pages are mapped in as their bytes arrive (the peak
    memory does not move). Only the speed depends on it: a page not mapped in faults in when
    written, as before."""
    if _MADVISE is not None:
        first = start - start % mmap.PAGESIZE  # madvise wants a page-aligned start; it rounds the end up
        _MADVISE(first, start + length - first, _MADV_POPULATE_WRITE)


def _deliver(get: Get, offset: int, piece: Any, addresses: Sequence[int]) -> None:
    """Copies the piece of a response that starts at object ``offset`` to the parts it overlaps
    (madvise and ctypes.memmove let go of the GIL)."""
    src, end = np.frombuffer(piece, dtype=np.uint8).ctypes.data, offset + len(piece)
    for part_offset, n, dst, dst_offset in get.parts:
        lo, hi = max(offset, part_offset), min(end, part_offset + n)
        if lo < hi:
            to = addresses[dst] + dst_offset + lo - part_offset
            _populate(to, hi - lo)
            ctypes.memmove(to, src + lo - offset, hi - lo)


def read_ranges(plan: LoadPlan, buffers: List[Any], counters: Counters, *, concurrency: Optional[int] = None,
                on_bytes: Optional[Callable[[int], None]] = None) -> Tuple[List[int], int]:
    """Runs the plan's ranges as ranged GETs into ``buffers``, counting requests in ``counters``.
    Returns the wanted bytes per file and the unwanted gap bytes fetched. The first failure (or
    Ctrl-C) cancels the GETs not yet started, aborts those in flight, waits for their threads, and raises."""
    chunk = settings.get("FASTSAFETENSORS_REMOTE_CHUNK_MB") << 20
    gets = plan_gets(plan.ranges, chunk, settings.get("FASTSAFETENSORS_REMOTE_GAP_KB") << 10)
    objects = cast(List[RemoteObject], [f.remote for f in plan.files])  # engine.is_remote: every file is one
    targets = list(buffers)  # held by the workers until they stop
    addresses = [b.data_ptr for b in targets]

    def fetch(get: Get) -> int:
        stream_range(objects[get.file], get.start, get.end, counters,
                     lambda offset, piece: _deliver(get, offset, piece, addresses))
        return get.wanted

    per_file = [0] * len(plan.files)
    workers = concurrency or settings.get("FASTSAFETENSORS_REMOTE_CONCURRENCY")
    pool = ThreadPoolExecutor(max_workers=max(1, min(workers, len(gets))), thread_name_prefix="fst-remote")
    try:
        futures = {pool.submit(fetch, g): g.file for g in gets}
        for future in as_completed(futures):
            n = future.result()  # the first failure raises here
            per_file[futures[future]] += n
            if on_bytes is not None:
                on_bytes(n)
    except BaseException:
        counters.cancel()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        targets.clear()  # a failure's traceback holds this frame: it must not keep the buffers alive
    gap = max(0, sum(g.end - g.start for g in gets) - sum(g.wanted for g in gets))
    return per_file, gap
