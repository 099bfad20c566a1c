"""Shards for GPUs read straight into GPU memory that JAX allocated.

Each GPU gets one plan of its shards, read by the device engine (pinned staging lanes overlapped
with the copies, or cuFile) into one JAX allocation for all of them; every shard is a zero-copy
DLPack view of it, and the global array is assembled from the views. Taken by shards whose runs
in the file are evenly spaced: one run (whole tensors, slices along the leading axes, replicas),
or a run per row (column shards, 2-D boxes, last-axis shards of 3-D tensors), which the engine
copies from its staging slots as one 2D copy per slot. Other boxes (cut along two inner axes of a
3-D tensor, where the spacing changes between rows) go through host memory (``per_device``).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import jax

from fastsafetensors import _cpp
from fastsafetensors._src.jax.placement import BoxKey, Target
from fastsafetensors._src.jax.shard_plan import box_bytes, box_shape
from fastsafetensors._src.device_engine import gds_mode, read_into_device
from fastsafetensors._src.dtypes import NEEDS_X64
from fastsafetensors.frameworks import get_framework
from fastsafetensors._src.plan import LoadPlan, align_up
from fastsafetensors.st_types import Device, DeviceType

# Platforms whose devices the engine writes to directly (tests add "cpu" with a HostDevice).
PLATFORMS = frozenset({"gpu"})


def engine_for(device: "jax.Device") -> Tuple[Device, Optional["_cpp.Device"]]:
    """The engine's device for a JAX device: its CUDA ordinal (None: the CUDA engine device)."""
    return Device(DeviceType.CUDA, device.local_hardware_id), None


def _contiguous(box: BoxKey, shape: Tuple[int, ...]) -> bool:
    """One run in the file: no dimension cut short inside a dimension that spans more than one."""
    cut_inside = False
    for (a, b), n in reversed(list(zip(box, shape))):
        if cut_inside and b - a > 1:
            return False
        cut_inside = cut_inside or (a, b) != (0, n)
    return True


def _regular(box: BoxKey, shape: Tuple[int, ...]) -> bool:
    """Evenly spaced runs in the file: the dimensions before the innermost one the box cuts short
    (which ends each run) hold the box's rows as one contiguous block of their index space."""
    cut = [i for i, ((a, b), n) in enumerate(zip(box, shape)) if (a, b) != (0, n)]
    return not cut or _contiguous(box[:cut[-1]], shape[:cut[-1]])


def takes(t: Target, boxes: Dict[BoxKey, List["jax.Device"]]) -> bool:
    """Whether `t` is read straight into its GPUs' memory."""
    devices = [d for ds in boxes.values() for d in ds]
    if not devices or any(d.platform not in PLATFORMS for d in devices):
        return False
    if t.info.dtype in NEEDS_X64 and not jax.config.jax_enable_x64:
        return False  # narrowed on the host instead (placement checked a 32-bit target was asked)
    return all(_regular(box, t.shape) for box in boxes)


def _plans(files, targets: List[Target], boxes_of) -> Dict["jax.Device", Tuple[LoadPlan, list]]:
    """Per device: a plan reading all its shards into one buffer, and (target, box, offset) each."""
    ranges: Dict["jax.Device", "_cpp.RangeList"] = {}
    slots: Dict["jax.Device", list] = {}
    sizes: Dict["jax.Device", int] = {}
    for t in targets:
        for box, devices in boxes_of[t.name].items():
            start, stop = [a for a, _ in box], [b for _, b in box]
            for d in devices:
                at = sizes.get(d, 0)
                _cpp.plan_boxes(files[t.file].header, t.index, t.file, [(start, stop, 0, at)],
                               ranges.setdefault(d, _cpp.RangeList()))
                slots.setdefault(d, []).append((t, box, at))
                sizes[d] = align_up(at + box_bytes(box, t.info.dtype))
    return {d: (LoadPlan(files, ranges[d], [sizes[d]], {}), slots[d]) for d in slots}


def load_on_gpus(files, targets: List[Target], boxes_of, metrics, threads: Optional[int]) -> Dict[str, jax.Array]:
    fw = get_framework("jax")
    with metrics.phase("plan"):
        plans = _plans(files, targets, boxes_of)
    gds = gds_mode(nogds=True)
    shards: Dict[str, List[jax.Array]] = {}
    for d, (plan, slots) in plans.items():
        device, engine_device = engine_for(d)
        (out,) = read_into_device(plan, fw, device, threads=threads, gds=gds, metrics=metrics,
                                  engine_device=engine_device)
        with metrics.phase("transfer"):
            for t, box, at in slots:
                view = fw.from_buffer(out, at, t.info.dtype, box_shape(box))
                shards.setdefault(t.name, []).append(jax.device_put(view, d))  # already there: no copy
                metrics.count_device(d, box_bytes(box, t.info.dtype))
    with metrics.phase("assemble"):
        return {t.name: jax.make_array_from_single_device_arrays(t.shape, t.sharding, shards[t.name])
                for t in targets}
