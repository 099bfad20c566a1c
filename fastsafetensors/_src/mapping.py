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
from .dtypes import ELEMENT_BYTES
from ..metrics import LoadMetrics
from .plan import LoadPlan, TensorLocation

__all__ = ["map_files"]

logger = logging.getLogger("fastsafetensors")


def map_files(planned: LoadPlan,
              metrics: LoadMetrics) -> Tuple[LoadPlan, List[Optional["_cpp.FileMapping"]], List[str]]:
    """Maps the files holding the tensors of a mapped plan (``plan_mapped``: buffer ``i`` is file
    ``i``, offsets are file offsets).

    Returns the plan of the aligned tensors, whose buffer ``i`` is the mapping of file ``i``, the
    mappings (None for a file none of whose planned tensors is mapped), and the names of the
    tensors left out because they are misaligned.
    """
    files = planned.files
    tensors: Dict[str, TensorLocation] = planned.tensors
    misaligned = [name for name, loc in tensors.items() if loc.offset % ELEMENT_BYTES[loc.dtype]]
    if misaligned:  # rare: most writers align every tensor
        tensors = {name: loc for name, loc in tensors.items() if loc.offset % ELEMENT_BYTES[loc.dtype] == 0}
    mapped_of: Dict[int, int] = {}  # file -> bytes of its tensors that are mapped
    for loc in tensors.values():
        mapped_of[loc.file] = mapped_of.get(loc.file, 0) + loc.info.nbytes
    mappings: List[Optional["_cpp.FileMapping"]] = [None] * len(files)
    for i, nbytes in sorted(mapped_of.items()):
        f = files[i]
        mappings[i] = _cpp.FileMapping.map(_cpp.ReadSource(f.path, f.header))
        metrics.mapped_bytes += nbytes
        metrics.count_files([f.path], [nbytes])
    plan = LoadPlan(list(files), planned.ranges, planned.buffer_sizes, tensors)
    if misaligned:
        logger.debug("mmap: %d misaligned tensor(s) read into host memory instead", len(misaligned))
    return plan, mappings, misaligned
