"""Direct reads: each rank reads its own piece of each tensor straight from the file.

Used where every rank can open every file (local disk, shared filesystem): a rank reads only the
bytes of its blocks (``_cpp.plan_box`` turns a block into runs of contiguous bytes) instead of
waiting for the owner rank to read the whole file and scatter it. No collective is involved.
"""

from __future__ import annotations

import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from .. import _cpp
from .distributed import ALIGN, Piece
from .engine import DEFAULT_CHUNK_BYTES, get_reader
from .files import SafeTensorsFile
from ..metrics import LoadMetrics
from .plan import align_up

__all__ = ["readable_by_me", "read_pieces"]


def readable_by_me(files_by_rank: Mapping[int, Sequence[SafeTensorsFile]]) -> bool:
    """Whether this process can open every file of every rank (the precondition of direct reads);
    an object in a store is read by the rank given it, never directly."""
    return all(f.remote is None and os.access(f.path, os.R_OK) for files in files_by_rank.values() for f in files)


def read_pieces(pieces: Sequence[Piece], *, threads: Optional[int] = None, metrics: Optional[LoadMetrics] = None,
                chunk_bytes: int = DEFAULT_CHUNK_BYTES, base: int = 0) -> Tuple["_cpp.HostBuffer", List[int]]:
    """Reads every piece into one host buffer, the first at ``base`` (64-aligned), each 64-byte aligned;
    returns the buffer and each piece's byte offset in it."""
    file_index: Dict[str, int] = {}
    sources: List["_cpp.ReadSource"] = []
    offsets: List[int] = []
    ranges = _cpp.RangeList()
    total = base
    for p in pieces:
        f = p.entry.file
        k = file_index.get(f.path)
        if k is None:
            k = file_index[f.path] = len(sources)
            sources.append(_cpp.ReadSource(f.path, f.header))
        start, stop = p.box
        offsets.append(total)
        ranges.extend(_cpp.plan_box(f.header, p.entry.index, start, stop, k, 0, total))
        total += align_up(p.nbytes, ALIGN)
    buffer = _cpp.HostBuffer.allocate(max(total, ALIGN))
    stats = get_reader(threads).read(sources, ranges, [buffer], chunk_bytes, False) if len(ranges) else None
    if metrics is not None and stats is not None:
        metrics.count_files([s.path for s in sources], stats["bytes_per_file"])
        metrics.count_host_reads(stats)
    return buffer, offsets
