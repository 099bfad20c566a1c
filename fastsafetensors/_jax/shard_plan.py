"""Which bytes this host reads for its shards, and reading them into host buffers.

Each distinct shard index of a tensor is planned with ``cpp.plan_box`` and read once per host
into its own aligned slot of the buffer of its file; devices with the same index share the slot.
The region rule reads some tensors as one box instead and cuts the shards out in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Tuple

import jax
import numpy as np

from fastsafetensors import cpp
from fastsafetensors._jax.placement import WIDE, BoxKey, Target, shard_boxes
from fastsafetensors.dtypes import BITS
from fastsafetensors.engine import read_into_host
from fastsafetensors.files import SafeTensorsFile
from fastsafetensors.frameworks import get_framework
from fastsafetensors.plan import LoadPlan

if TYPE_CHECKING:
    from fastsafetensors.jax import JaxLoadMetrics

# Region rule: a tensor whose local shards read as runs shorter than this on average ...
SMALL_RUN_BYTES = 256 << 10
# ... and cover at least this fraction of the box around them is read as that one box, and the
# shards are cut out of memory (cpp.copy_boxes) instead of read run by run.
MIN_REGION_COVER = 0.5
_ALIGN = cpp.TENSOR_ALIGNMENT


def box_shape(box: BoxKey) -> Tuple[int, ...]:
    return tuple(b - a for a, b in box)


def box_bytes(box: BoxKey, dtype: str) -> int:
    return int(np.prod(box_shape(box), dtype=np.int64)) * BITS[dtype] // 8


def _align(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


@dataclass
class Slot:
    """One distinct shard of one tensor in host memory, and the devices it goes to."""

    target: Target
    box: BoxKey
    devices: List["jax.Device"]
    buffer: int
    offset: int


@dataclass
class Region:
    """A box read once into the staging buffer, then cut into the shards (slots) inside it."""

    target: Target
    box: BoxKey
    slots: List[Slot]
    ranges: "cpp.RangeList"  # into the staging buffer, which follows the per-file buffers


@dataclass
class ShardPlan:
    plan: LoadPlan  # direct reads into one buffer per file; no whole-tensor locations
    slots: List[Slot]
    regions: List[Region]

    @property
    def staging_bytes(self) -> int:
        return max((box_bytes(r.box, r.target.info.dtype) for r in self.regions), default=0)


def _bounding_box(boxes: Iterable[BoxKey]) -> BoxKey:
    boxes = list(boxes)
    return tuple((min(b[d][0] for b in boxes), max(b[d][1] for b in boxes)) for d in range(len(boxes[0])))


def _wants_region(t: Target, boxes: Dict[BoxKey, Any], per_box: Dict[BoxKey, Any]) -> bool:
    """The region rule: many small runs, and the shards fill most of the box around them."""
    runs = sum(len(r) for r in per_box.values())
    if runs <= len(per_box):
        return False  # one run per shard already
    shard_bytes = sum(box_bytes(b, t.info.dtype) for b in boxes)
    if shard_bytes / runs >= SMALL_RUN_BYTES:
        return False
    region = box_bytes(_bounding_box(boxes), t.info.dtype)
    return shard_bytes >= MIN_REGION_COVER * region


def _plan_box(f: SafeTensorsFile, t: Target, box: BoxKey, dst: int, offset: int) -> "cpp.RangeList":
    start, stop = zip(*box) if box else ((), ())
    return cpp.plan_box(f.header, t.index, list(start), list(stop), t.file, dst, offset)


def plan_shards(files: List[SafeTensorsFile], targets: List[Target]) -> ShardPlan:
    ranges = cpp.RangeList()
    sizes: List[int] = [0] * len(files)  # buffer i holds the shards of file i
    staging = len(files)
    slots: List[Slot] = []
    regions: List[Region] = []
    for t in targets:
        f = files[t.file]
        boxes = shard_boxes(t, f)
        my_slots, per_box = [], {}
        for box, devices in boxes.items():
            slot = Slot(t, box, devices, t.file, sizes[t.file])
            sizes[t.file] = _align(slot.offset + box_bytes(box, t.info.dtype))
            my_slots.append(slot)
            per_box[box] = _plan_box(f, t, box, t.file, slot.offset)
        slots.extend(my_slots)
        if _wants_region(t, boxes, per_box):
            region = _bounding_box(boxes)
            regions.append(Region(t, region, my_slots, _plan_box(f, t, region, staging, 0)))
        else:
            for r in per_box.values():
                ranges.extend(r)
    return ShardPlan(LoadPlan(files, ranges, sizes, {}), slots, regions)


def _cut_region(region: Region, buffers: List["cpp.HostBuffer"], staging: "cpp.HostBuffer") -> None:
    origin = [a for a, _ in region.box]
    targets = [([a - o for (a, _), o in zip(s.box, origin)], [b - o for (_, b), o in zip(s.box, origin)],
                buffers[s.buffer], s.offset) for s in region.slots]
    cpp.copy_boxes(staging, 0, list(box_shape(region.box)), BITS[region.target.info.dtype] // 8, targets)


def read_shards(sp: ShardPlan, metrics: JaxLoadMetrics, read_options) -> List["cpp.HostBuffer"]:
    """Reads the direct ranges, then each region into one reused staging buffer and cuts it:
    host memory peaks at the shards plus the largest region, not twice the shards."""
    buffers = read_into_host(sp.plan, metrics=metrics, **read_options)
    if sp.regions:
        with metrics.phase("allocate"):
            staging = cpp.HostBuffer.allocate(sp.staging_bytes)
        for region in sp.regions:
            read_into_host(LoadPlan(sp.plan.files, region.ranges, [], {}), metrics=metrics,
                           buffers=[*buffers, staging], **read_options)
            with metrics.phase("cut"):
                _cut_region(region, buffers, staging)
    return buffers


def host_view(buffers, buffer: int, offset: int, t: Target, shape: Tuple[int, ...]) -> np.ndarray:
    view = get_framework("numpy").from_buffer(buffers[buffer], offset, t.info.dtype, shape)
    if t.info.dtype in WIDE and not jax.config.jax_enable_x64:
        view = view.astype(t.dtype)  # 64-bit data JAX cannot hold: narrowed on the host, as asked
    return view
