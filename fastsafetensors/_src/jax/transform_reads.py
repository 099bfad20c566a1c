"""Loading through layout transforms: reads follow the target.

For every target leaf, each distinct shard box of this host's devices is mapped back through its
transform (:mod:`.transforms`) to :class:`~.transforms.Piece` s: boxes of source tensors and where
their elements land in the shard. Every check and every box mapping happens before any I/O.

The shards get one aligned slot each in one host buffer. A piece whose innermost source axis
lands contiguous in its shard (no transpose: heads split or merged, concat, stack, slice) is read
by the engine straight into its slot (``_cpp.plan_strided``). A transposed piece is cut into boxes
of at most ``BOX_BYTES``, each read by one of the engine's threads into a buffer of its own and
copied (tiled) into its slot while still in cache, reads and copies of different boxes overlapping
(``_cpp.read_strided``): one pass through the page cache. The others (a dtype conversion, or any
staged piece where the load reads with O_DIRECT or from URLs, which that pass does not do) are cut
into chunks of at most ``STAGING_BYTES``, read in groups into one staging buffer of that size by
the reader as it reads everything else, and copied from it into their slots: by the engine's
threads without the GIL (``_cpp.copy_strided``, tiled), or by NumPy where a dtype conversion is
asked. Host memory is the shards plus the staging buffer, or a box per reader thread. The shards
go to their devices with ``jax.device_put`` (zero-copy on the CPU: the slots are aligned).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple

import jax
import numpy as np
from jax.sharding import Sharding

from fastsafetensors import _cpp
from fastsafetensors._src.jax import placement
from fastsafetensors._src.jax.placement import BoxKey, Placer
from fastsafetensors._src.jax.transforms import AsType, Box, Context, Expr, Piece, Transforms, bind, c_strides, leaves, \
    pieces
from fastsafetensors._src.dtypes import FLOAT_DTYPES
from fastsafetensors._src.engine import get_reader, progress_bar, read_into_host
from fastsafetensors.errors import TransformError, UnsupportedDtype
from fastsafetensors.frameworks import get_framework
from fastsafetensors._src.frameworks.numpy import NUMPY_DTYPES
from fastsafetensors._src.plan import LoadPlan, align_up, locate_tensors

STAGING_BYTES = 4 << 20  # the staging buffer, read through in groups: small enough to stay in the caches
# A box read and copied by one thread: with its 64x64 tiles it stays in a core's L2 (1 MiB on the
# project's VMs) between the read and the copy.
BOX_BYTES = 512 << 10
# Boxes per read_strided call: between calls Ctrl-C is seen.
_BATCH_BYTES = 256 << 20
_FLOATS = frozenset(np.dtype(NUMPY_DTYPES[d]) for d in FLOAT_DTYPES if d in NUMPY_DTYPES)


@dataclass
class Leaf:
    """One target leaf: its bound transform, placement, final dtype, and per box its pieces."""

    name: str
    expr: Expr
    sharding: Sharding
    dtype: np.dtype
    boxes: Dict[BoxKey, List["jax.Device"]]
    pieces: Dict[BoxKey, List[Piece]]

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
        out.append(Leaf(name, expr, sharding, dtype, boxes, {box: pieces(expr, box) for box in boxes}))
    return out


@dataclass
class _Staged:
    """A chunk of a piece to read into the staging buffer and copy into its shard from there."""

    tensor: Tuple[int, int]  # (file, index in its header)
    dtype: str  # the source's safetensors dtype
    piece: Piece
    box: Box  # the chunk: a part of piece.box
    dst: int  # byte offset of its first element in the shard buffer
    out: np.dtype  # the shard's dtype
    one_pass: bool  # read and copied by read_strided (cut to BOX_BYTES), else staged (STAGING_BYTES)

    @property
    def nbytes(self) -> int:
        return int(np.prod([b - a for a, b in self.box], dtype=np.int64)) * np.dtype(NUMPY_DTYPES[self.dtype]).itemsize


def load(files, leaves_: List[Leaf], metrics, read_options: Dict[str, Any]) -> Dict[str, jax.Array]:
    with metrics.phase("allocate"):
        buffer, slots = _shard_memory(leaves_)
    with metrics.phase("plan"):
        direct, staged = _plan(files, leaves_, slots, read_options)
    # One bar over the bytes the load's three kinds of reads take from the files.
    straight = LoadPlan(files, direct, [buffer.size], {})
    bar = progress_bar(lambda: straight.total_bytes + sum(s.nbytes for s in staged), read_options["progress"])
    try:
        if len(direct):
            read_into_host(straight, metrics=metrics, buffers=[buffer], bar=bar, **read_options)
        boxes = [s for s in staged if s.one_pass]
        if boxes:
            _read_boxes(files, buffer, boxes, metrics, read_options["threads"], bar)
        if len(boxes) < len(staged):
            _read_staged(files, buffer, [s for s in staged if not s.one_pass], metrics, read_options, bar)
    finally:
        if bar is not None:
            bar.close()
    out: Dict[str, jax.Array] = {}
    for leaf in leaves_:
        with metrics.phase("transfer"):
            views, devices = [], []
            for box, ds in leaf.boxes.items():
                for d in ds:
                    views.append(slots[leaf.name, box][1])
                    devices.append(d)
                    nbytes = slots[leaf.name, box][1].nbytes
                    metrics.count_device(d, nbytes)
            placed = jax.device_put(views, devices)  # zero-copy on the CPU: the shards are aligned
        with metrics.phase("assemble"):
            out[leaf.name] = jax.make_array_from_single_device_arrays(leaf.shape, leaf.sharding, placed)
    return jax.block_until_ready(out)


def _shard_memory(leaves_: List[Leaf]) -> Tuple["_cpp.HostBuffer", Dict[Tuple[str, BoxKey], Tuple[int, np.ndarray]]]:
    """One aligned slot (byte offset, array) per distinct shard in one host buffer (JAX copies
    unaligned host memory on ``device_put`` instead of importing it); every array keeps the buffer
    alive."""
    at, slots = 0, []
    for leaf in leaves_:
        for box in leaf.pieces:
            shape = tuple(b - a for a, b in box)
            slots.append(((leaf.name, box), at, shape, leaf.dtype))
            at = align_up(at + int(np.prod(shape, dtype=np.int64)) * leaf.dtype.itemsize)
    buffer = _cpp.HostBuffer.allocate(max(at, 1))
    raw = get_framework("numpy").from_buffer(buffer, 0, "U8", (max(at, 1),))
    return buffer, {key: (o, raw[o:o + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize].view(dtype).reshape(shape))
                    for key, o, shape, dtype in slots}


def _plan(files, leaves_: List[Leaf], slots, read_options) -> Tuple["_cpp.RangeList", List[_Staged]]:
    """The ranges that read pieces straight into their shards, and the chunks of the others."""
    located = locate_tensors(files, list({p.name for leaf in leaves_ for ps in leaf.pieces.values() for p in ps}))
    direct, staged = _cpp.RangeList(), []
    boxes = not read_options["direct_io"] and all(f.remote is None for f in files)  # read_strided's reads
    for leaf in leaves_:
        size = leaf.dtype.itemsize
        for box, ps in leaf.pieces.items():
            base = slots[leaf.name, box][0]
            for p in ps:
                fi, k = located[p.name]
                st = files[fi].infos[k].dtype
                converts = any(d != np.dtype(NUMPY_DTYPES[st]) for d in p.dtypes)
                if not converts and (not p.box or p.strides[-1] == 1 or p.box[-1][1] - p.box[-1][0] == 1):
                    _cpp.plan_strided(files[fi].header, k, list(p.shape), [a for a, _ in p.box], [b for _, b in p.box],
                                     fi, 0, base // size + p.offset, list(p.strides), direct)
                    continue
                one_pass = boxes and not converts
                cut = BOX_BYTES if one_pass else STAGING_BYTES
                for chunk, delta in _chunks(p.box, p.strides, max(1, cut // np.dtype(NUMPY_DTYPES[st]).itemsize)):
                    staged.append(_Staged((fi, k), st, p, chunk, base + (p.offset + delta) * size, leaf.dtype,
                                          one_pass))
    return direct, staged


def _chunks(box: Box, strides: Tuple[int, ...], limit: int) -> Iterator[Tuple[Box, int]]:
    """``box`` in parts of at most ``limit`` elements, each with the offset of its first element
    relative to the box's: cut along the first axis whose inner part fits, every index of the axes
    before it apart."""
    ext = [b - a for a, b in box]
    for d in range(len(box)):
        inner = int(np.prod(ext[d + 1:], dtype=np.int64))
        if inner <= limit:
            break
    else:
        yield box, 0
        return
    step = max(1, limit // inner)
    for idx in itertools.product(*(range(n) for n in ext[:d])):
        head = tuple((box[i][0] + j, box[i][0] + j + 1) for i, j in enumerate(idx))
        at = sum(j * s for j, s in zip(idx, strides))
        for lo in range(0, ext[d], step):
            hi = min(ext[d], lo + step)
            yield head + ((box[d][0] + lo, box[d][0] + hi),) + box[d + 1:], at + lo * strides[d]


def _staging_groups(staged: List[_Staged]) -> Iterator[List[_Staged]]:
    group: List[_Staged] = []
    size = 0
    for s in staged:
        if group and size + s.nbytes > STAGING_BYTES:
            yield group
            group, size = [], 0
        group.append(s)
        size = align_up(size + s.nbytes)
    if group:
        yield group


def _read_boxes(files, buffer, boxes: List[_Staged], metrics, threads, bar) -> None:
    """Every box read and copied into its shard by the engine's threads, in one pass
    (``_cpp.read_strided``), in calls of about ``_BATCH_BYTES``."""
    reader = get_reader(threads)
    sources = LoadPlan(files, _cpp.RangeList(), [], {}).sources()
    copies = [(0, [b - a for a, b in s.box], s.dst, list(s.piece.strides), s.out.itemsize) for s in boxes]
    with metrics.phase("transform"):  # once for the load: each box of a transpose spans most of its shard
        _cpp.populate_strided(reader, copies, BOX_BYTES, buffer)
    step = _BATCH_BYTES // BOX_BYTES
    for at in range(0, len(boxes), step):
        with metrics.phase("plan"):
            ranges = _cpp.RangeList()
            for k, s in enumerate(boxes[at:at + step]):
                _cpp.plan_strided(files[s.tensor[0]].header, s.tensor[1], list(s.piece.shape), [a for a, _ in s.box],
                                  [b for _, b in s.box], s.tensor[0], k, 0, c_strides(copies[at + k][1]), ranges)
        with metrics.phase("transform"):
            stats = _cpp.read_strided(reader, sources, ranges, copies[at:at + step], BOX_BYTES, buffer)
        metrics.count_host_reads(stats)
        metrics.count_files([f.path for f in files], stats["bytes_per_file"])
        if bar is not None:
            bar.update(stats["bytes"])


def _read_staged(files, buffer, staged: List[_Staged], metrics, read_options, bar) -> None:
    """Each group of chunks read into the staging buffer, then copied into the shards: by the
    engine (tiled, on the reader's threads) where the dtype stays, by NumPy where it changes."""
    staging = _cpp.HostBuffer.allocate(min(STAGING_BYTES, sum(align_up(s.nbytes) for s in staged)))
    reader = get_reader(read_options["threads"])
    for group in _staging_groups(staged):
        with metrics.phase("plan"):
            ranges, at, copies, converts = _cpp.RangeList(), 0, [], []
            for s in group:
                ext = [b - a for a, b in s.box]
                itemsize = np.dtype(NUMPY_DTYPES[s.dtype]).itemsize
                _cpp.plan_strided(files[s.tensor[0]].header, s.tensor[1], list(s.piece.shape), [a for a, _ in s.box],
                                 [b for _, b in s.box], s.tensor[0], 0, at // itemsize, c_strides(ext), ranges)
                if s.piece.dtypes and any(d != np.dtype(NUMPY_DTYPES[s.dtype]) for d in s.piece.dtypes):
                    converts.append((s, at, ext))
                else:
                    copies.append((at, ext, s.dst, list(s.piece.strides), itemsize))
                at = align_up(at + s.nbytes)
        read_into_host(LoadPlan(files, ranges, [staging.size], {}), metrics=metrics, buffers=[staging], bar=bar,
                       **read_options)
        with metrics.phase("transform"):
            _cpp.copy_strided(reader, staging, buffer, copies)
            for s, at, ext in converts:
                _convert(s, get_framework("numpy").from_buffer(staging, at, s.dtype, tuple(ext)), buffer)


def _convert(s: _Staged, src: np.ndarray, buffer) -> None:
    """A staged chunk into its shard through its conversions, each as NumPy's astype does it."""
    raw = get_framework("numpy").from_buffer(buffer, 0, "U8", (buffer.size,))
    dst = np.lib.stride_tricks.as_strided(raw[s.dst:].view(s.out), shape=src.shape,
                                          strides=[st * s.out.itemsize for st in s.piece.strides])
    for d in s.piece.dtypes[:-1]:  # a conversion below a different one: both happen
        src = src.astype(d) if src.dtype != d else src
    np.copyto(dst, src, casting="unsafe")
