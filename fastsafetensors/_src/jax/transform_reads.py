"""Loading through layout transforms: reads follow the target.

For every target leaf, each distinct shard box of this host's devices is mapped back through its
transform (:mod:`.transforms`) to the source boxes that make it up, so a host reads only the
source bytes of its own shards. Every check and every box mapping happens before any I/O.

The shards get one aligned slot each in one host buffer. Their jobs are taken in groups of at
most ``BATCH_ELEMENTS`` source elements: a group's source boxes, deduplicated, are planned with
``_cpp.plan_boxes`` into aligned host slots (:func:`.shard_plan.plan_shards`), read, and copied
into their shards with NumPy (on up to one thread per core); then the group's read buffers are
dropped. The shards go to their devices with ``jax.device_put`` (zero-copy on the CPU).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import jax
import numpy as np
from jax.sharding import Sharding

from fastsafetensors import _cpp
from fastsafetensors._src.jax import placement
from fastsafetensors._src.jax.placement import BoxKey, Placer, Target
from fastsafetensors._src.jax.shard_plan import host_view, plan_shards
from fastsafetensors._src.jax.transforms import AsType, Context, Expr, Fill, Read, Transforms, bind, leaves
from fastsafetensors._src.dtypes import FLOAT_DTYPES
from fastsafetensors._src.engine import read_into_host
from fastsafetensors.errors import TransformError, UnsupportedDtype
from fastsafetensors.frameworks import get_framework
from fastsafetensors._src.frameworks.numpy import NUMPY_DTYPES
from fastsafetensors._src.plan import align_up, locate_tensors

BATCH_ELEMENTS = 32 << 20  # source elements read per group (64 MiB of bf16)
_FLOATS = frozenset(np.dtype(NUMPY_DTYPES[d]) for d in FLOAT_DTYPES if d in NUMPY_DTYPES)


@dataclass
class Leaf:
    """One target leaf: its bound transform, placement, final dtype, and per box what to read."""

    name: str
    expr: Expr
    sharding: Sharding
    dtype: np.dtype
    boxes: Dict[BoxKey, List["jax.Device"]]
    plans: Dict[BoxKey, Tuple[List[Read], Fill]]

    @property
    def shape(self) -> Tuple[int, ...]:
        return self.expr.shape


def _final_dtype(name: str, expr: Expr, placer: Placer, cast: Optional[np.dtype]) -> np.dtype:
    declared = placer.declared_dtype(name)
    dtype = declared if declared is not None else (cast if cast is not None and expr.dtype in _FLOATS else expr.dtype)
    if dtype.itemsize == 8 and dtype.kind in "iuf" and not jax.config.jax_enable_x64:
        raise UnsupportedDtype(f"target `{name}` would be {dtype} but jax_enable_x64 is off, so JAX would narrow "
                               "it; enable x64 or convert it (astype, or the leaf's dtype)", tensor=name)
    return dtype


def plan_leaves(files, transforms: Transforms, placer: Placer, cast: Optional[np.dtype]) -> List[Leaf]:
    """Every target leaf bound, checked against its declared shape and sharding, and its shard
    boxes mapped to source boxes: everything that can fail before I/O fails here."""
    located = locate_tensors(files)
    tensors = {n: (tuple(files[fi].infos[k].shape), files[fi].infos[k].dtype) for n, (fi, k) in located.items()}
    exprs = leaves(transforms, list(tensors))
    if placer.declared is not None:
        missing = [n for n in placer.declared if n not in exprs]
        extra = [n for n in exprs if n not in placer.declared]
        if missing or extra:
            raise TransformError(f"the target tree and the transforms differ: leaves without a transform "
                                 f"{missing[:5]}, transforms without a leaf {extra[:5]}")
    out = []
    for name, expr in exprs.items():
        expr = bind(name, expr, tensors)
        want = placer.declared_shape(name)
        if want is not None and want != expr.shape:
            axes = [i for i, (a, b) in enumerate(zip(want, expr.shape)) if a != b] if len(want) == len(expr.shape) \
                else "rank"
            raise TransformError(f"target `{name}` (from {', '.join(f'`{s}`' for s in expr.sources())}): the transform "
                                 f"makes shape {expr.shape}, the target declares {want} (differ: axis {axes})",
                                 tensor=name)
        sharding = placer.sharding(name)
        boxes = placement.index_boxes(name, expr.shape, sharding, None)
        dtype = _final_dtype(name, expr, placer, cast)
        if dtype != expr.dtype:  # converted as the bytes are copied into the shard
            expr = AsType(expr, dtype).bind(Context(tensors, name))
        plans = {box: expr.plan(box) for box in boxes}
        out.append(Leaf(name, expr, sharding, dtype, boxes, plans))
    return out


def _source_targets(files, reads: List[Read]) -> Tuple[List[Target], Dict[str, Dict[BoxKey, list]]]:
    """The source tensors to read as :class:`Target` s, and each one's boxes (for plan_shards)."""
    boxes_of: Dict[str, Dict[BoxKey, list]] = {}
    for name, box in reads:
        boxes_of.setdefault(name, {})[box] = []
    out = []
    for name, (fi, k) in locate_tensors(files, list(boxes_of)).items():
        info = files[fi].infos[k]
        keep = np.dtype(NUMPY_DTYPES[info.dtype])  # host_view narrows NEEDS_X64 dtypes to Target.dtype: keep them
        out.append(Target(name, fi, k, info, None, keep))
    return out, boxes_of


def load(files, leaves_: List[Leaf], metrics, read_options: Dict[str, Any]) -> Dict[str, jax.Array]:
    with metrics.phase("allocate"):
        shards = _shard_memory(leaves_)
    jobs = [(rs, fill, shards[leaf.name, box]) for leaf in leaves_ for box, (rs, fill) in leaf.plans.items()]
    for batch in _batches(jobs):
        _read_and_build(files, batch, metrics, read_options)
    out: Dict[str, jax.Array] = {}
    for leaf in leaves_:
        with metrics.phase("transfer"):
            views, devices = [], []
            for box, ds in leaf.boxes.items():
                for d in ds:
                    views.append(shards[leaf.name, box])
                    devices.append(d)
                    nbytes = shards[leaf.name, box].nbytes
                    metrics.count_device(d, nbytes)
            placed = jax.device_put(views, devices)  # zero-copy on the CPU: the shards are aligned
        with metrics.phase("assemble"):
            out[leaf.name] = jax.make_array_from_single_device_arrays(leaf.shape, leaf.sharding, placed)
    return jax.block_until_ready(out)


def _shard_memory(leaves_: List[Leaf]) -> Dict[Tuple[str, BoxKey], np.ndarray]:
    """One aligned slot per distinct shard in one host buffer (JAX copies unaligned host memory on
    ``device_put`` instead of importing it); every array keeps the buffer alive."""
    at, slots = 0, []
    for leaf in leaves_:
        for box in leaf.plans:
            shape = tuple(b - a for a, b in box)
            slots.append(((leaf.name, box), at, shape, leaf.dtype))
            at = align_up(at + int(np.prod(shape, dtype=np.int64)) * leaf.dtype.itemsize)
    buffer = _cpp.HostBuffer.allocate(max(at, 1))
    raw = get_framework("numpy").from_buffer(buffer, 0, "U8", (max(at, 1),))
    return {key: raw[o:o + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize].view(dtype).reshape(shape)
            for key, o, shape, dtype in slots}


def _batches(jobs):
    """Jobs grouped so that a group's source boxes take at most BATCH_BYTES (a job alone may take
    more): the sources of one group are read, built into their shards and freed before the next,
    so peak host memory is the shards plus one group's sources, not the shards plus all sources."""
    batch, size = [], 0
    for job in jobs:
        n = sum(int(np.prod([b - a for a, b in box], dtype=np.int64)) for _, box in job[0])  # elements, not bytes
        if batch and size + n > BATCH_ELEMENTS:
            yield batch
            batch, size = [], 0
        batch.append(job)
        size += n
    if batch:
        yield batch


def _read_and_build(files, jobs, metrics, read_options) -> None:
    reads = list(dict.fromkeys(r for rs, _, _ in jobs for r in rs))
    with metrics.phase("plan"):
        sources, boxes_of = _source_targets(files, reads)
        sp = plan_shards(files, sources, boxes_of)
    buffers = read_into_host(sp.plan, metrics=metrics, **read_options)
    got = {(s.target.name, s.box): host_view(buffers, s.buffer, s.offset, s.target, tuple(b - a for a, b in s.box))
           for s in sp.slots}
    with metrics.phase("transform"):
        _build(got, [(fill, dest) for _, fill, dest in jobs], read_options["threads"])


def _build(got, jobs, threads: Optional[int]) -> None:
    """Fills every shard from the source boxes on up to one thread per core (NumPy copies release
    the GIL; ``threads`` caps them as it caps the readers)."""
    workers = min(threads or os.cpu_count() or 1, os.cpu_count() or 1, len(jobs))
    if workers <= 1:
        for fill, dest in jobs:
            fill(got, dest)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="fastsafetensors-transform") as pool:
        for done in [pool.submit(fill, got, dest) for fill, dest in jobs]:
            done.result()  # the first failure raises here
