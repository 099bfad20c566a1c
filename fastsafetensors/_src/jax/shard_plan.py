"""Which bytes this host reads for its shards, and reading them into host buffers.

Each distinct shard index of a tensor gets its own aligned slot in the host buffer of its file;
devices with the same index share the slot. ``_cpp.plan_boxes`` lists the runs of all of a
tensor's shards in file order, so the engine reads neighbouring runs bound for different shards
(the rows of column shards) with one vectored read, straight into their slots.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

import jax
import numpy as np

from fastsafetensors import _cpp
from fastsafetensors._src.jax.placement import BoxKey, Target
from fastsafetensors._src.dtypes import BITS, NEEDS_X64
from fastsafetensors._src.files import SafeTensorsFile
from fastsafetensors.frameworks import get_framework
from fastsafetensors._src.plan import LoadPlan, align_up


def box_shape(box: BoxKey) -> Tuple[int, ...]:
    return tuple(b - a for a, b in box)


def box_bytes(box: BoxKey, dtype: str) -> int:
    return int(np.prod(box_shape(box), dtype=np.int64)) * BITS[dtype] // 8


@dataclass
class Slot:
    """One distinct shard of one tensor in host memory, and the devices it goes to."""

    target: Target
    box: BoxKey
    devices: List["jax.Device"]
    buffer: int
    offset: int


@dataclass
class ShardPlan:
    plan: LoadPlan  # reads into one buffer per file; no whole-tensor locations
    slots: List[Slot]


def plan_shards(files: List[SafeTensorsFile], targets: List[Target],
                boxes_of: Dict[str, Dict[BoxKey, List["jax.Device"]]]) -> ShardPlan:
    """``boxes_of``: each target's ``placement.shard_boxes``."""
    ranges = _cpp.RangeList()
    sizes: List[int] = [0] * len(files)  # buffer i holds the shards of file i
    slots: List[Slot] = []
    for t in targets:
        mine = []
        for box, devices in boxes_of[t.name].items():
            mine.append(Slot(t, box, devices, t.file, sizes[t.file]))
            sizes[t.file] = align_up(mine[-1].offset + box_bytes(box, t.info.dtype))
        boxes = [([a for a, _ in s.box], [b for _, b in s.box], s.buffer, s.offset) for s in mine]
        _cpp.plan_boxes(files[t.file].header, t.index, t.file, boxes, ranges)
        slots.extend(mine)
    return ShardPlan(LoadPlan(files, ranges, sizes, {}), slots)


def host_view(buffers, buffer: int, offset: int, t: Target, shape: Tuple[int, ...]) -> np.ndarray:
    view = get_framework("numpy").from_buffer(buffers[buffer], offset, t.info.dtype, shape)
    if t.info.dtype in NEEDS_X64 and not jax.config.jax_enable_x64:
        view = view.astype(t.dtype)  # 64-bit data JAX cannot hold: narrowed on the host, as asked
    return view
