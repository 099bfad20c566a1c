"""Headers to file mappings: ``load(..., mmap=True)``.

Each file is mapped private and copy-on-write, and its tensors are views of the mapping: no byte
is copied until a tensor is written to, and no write reaches the file. A tensor whose offset in
the file is not a multiple of its element size is read into host memory as usual instead, since
frameworks assume aligned elements.

The price is the page cache's: a file truncated while mapped makes reading the missing pages
fault (SIGBUS), and a file rewritten in place changes the tensors. That is why it is not the
default (docs/usage.md).
"""

from __future__ import annotations

import logging
from typing import Dict, List, Optional, Tuple

from .. import _cpp
from .dtypes import BITS
from .files import SafeTensorsFile
from ..metrics import LoadMetrics
from .plan import LoadPlan, TensorLocation

__all__ = ["map_files"]

logger = logging.getLogger("fastsafetensors")


def _aligned(f: SafeTensorsFile, info: "_cpp.TensorInfo") -> bool:
    return (f.header.data_start + info.begin) % max(1, BITS[info.dtype] // 8) == 0


def map_files(planned: LoadPlan,
              metrics: LoadMetrics) -> Tuple[LoadPlan, List[Optional["_cpp.FileMapping"]], List[str]]:
    """Maps the files holding the tensors of a read plan (``plan_load``: it selects, checks and
    orders them as for any load).

    Returns a plan whose buffer ``i`` is the mapping of file ``i`` (offsets are file offsets), the
    mappings (None for a file none of whose planned tensors is mapped), and the names of the
    tensors left out because they are misaligned.
    """
    files = planned.files
    tensors: Dict[str, TensorLocation] = {}
    misaligned: List[str] = []
    mapped_of: Dict[int, int] = {}  # file -> bytes of its tensors that are mapped
    for name, loc in planned.tensors.items():
        f = files[loc.file]
        if _aligned(f, loc.info):
            tensors[name] = TensorLocation(name, loc.file, loc.file, f.header.data_start + loc.info.begin, loc.info)
            mapped_of[loc.file] = mapped_of.get(loc.file, 0) + loc.info.nbytes
        else:
            misaligned.append(name)
    mappings: List[Optional["_cpp.FileMapping"]] = [None] * len(files)
    for i, nbytes in sorted(mapped_of.items()):
        f = files[i]
        mappings[i] = _cpp.FileMapping.map(_cpp.ReadSource(f.path, f.header))
        metrics.mapped_bytes += nbytes
        metrics.count_files([f.path], [nbytes])
    plan = LoadPlan(list(files), _cpp.RangeList(), [f.size for f in files], tensors)
    if misaligned:
        logger.debug("mmap: %d misaligned tensor(s) read into host memory instead", len(misaligned))
    return plan, mappings, misaligned
