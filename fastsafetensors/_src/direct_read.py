"""Direct reads: each rank reads its own piece of each tensor straight from the file or object.

Used where every rank can reach every file (local disk, shared filesystem, an object store every
rank read the headers from): a rank reads only the bytes of its blocks (``_cpp.plan_box`` turns a
block into runs of contiguous bytes) instead of waiting for the owner rank to read the whole file
and scatter it. No collective is involved. The read is a whole load's (``engine.read_into_host``):
ranges out of the page cache take the cold-read shape, objects the remote reader's ranged GETs, whose
gap merging decides how many of a column block's row runs share a GET (the bytes between them are
counted in ``LoadMetrics.gap_bytes``).
"""

from __future__ import annotations

import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from .. import _cpp
from .distributed import ALIGN, Piece
from .engine import DEFAULT_CHUNK_BYTES, read_into_host
from .files import SafeTensorsFile
from ..metrics import LoadMetrics
from .plan import LoadPlan, align_up

__all__ = ["readable_by_me", "read_pieces"]


def readable_by_me(files_by_rank: Mapping[int, Sequence[SafeTensorsFile]]) -> bool:
    """Whether this process can read every file of every rank (the precondition of direct reads).
    Every rank GETs every object's header when the files are added, so an object is one it can
    reach; a mix of objects and local files is not (one read reads one kind), and is scattered."""
    files = [f for fs in files_by_rank.values() for f in fs]
    if any(f.remote is not None for f in files):
        return all(f.remote is not None for f in files)
    return all(os.access(f.path, os.R_OK) for f in files)


def read_pieces(pieces: Sequence[Piece], *, threads: Optional[int] = None, metrics: Optional[LoadMetrics] = None,
                chunk_bytes: int = DEFAULT_CHUNK_BYTES, base: int = 0) -> Tuple["_cpp.HostBuffer", List[int]]:
    """Reads every piece into one host buffer, the first at ``base`` (64-aligned), each 64-byte aligned;
    returns the buffer and each piece's byte offset in it. Pieces of objects in a store go as ranged
    GETs (``threads`` of them at once), with the store's ETag pinning, retries and errors."""
    file_index: Dict[str, int] = {}
    files: List[SafeTensorsFile] = []
    offsets: List[int] = []
    ranges = _cpp.RangeList()
    total = base
    for p in pieces:
        f = p.entry.file
        k = file_index.get(f.path)
        if k is None:
            k = file_index[f.path] = len(files)
            files.append(f)
        start, stop = p.box
        offsets.append(total)
        ranges.extend(_cpp.plan_box(f.header, p.entry.index, start, stop, k, 0, total))
        total += align_up(p.nbytes, ALIGN)
    buffer = _cpp.HostBuffer.allocate(max(total, ALIGN))
    if not len(ranges):
        return buffer, offsets
    # The same read as a whole load's: pages out of the page cache go the cold-read way, objects by ranged GETs.
    read_into_host(LoadPlan(files, ranges, [buffer.size], {}), threads=threads, chunk_bytes=chunk_bytes,
                   metrics=metrics, buffers=[buffer])
    return buffer, offsets
