"""Layout transforms: checkpoint tensors -> target leaves, and which source boxes make up a target box.

A transform is an expression over checkpoint tensors (:func:`src`) built from :func:`transpose`,
:func:`reshape`, :func:`concat`, :func:`stack`, :func:`slice_`, :func:`astype`; :func:`rename`
rules turn every checkpoint name a regex matches into a target leaf. ``bind`` resolves an
expression against the checkpoint (names, shapes, dtypes) and checks it, before any I/O.

A bound node answers ``plan(box)``: the source boxes that make up ``box`` of its output (the
inverse of the transform applied to the box) and a function that fills an array of the box's
shape from them with NumPy. Fills write through views of the destination (a transpose fills the
transposed view, a concat or stack each part's slice, a reshape the reshaped view), so each
byte is copied once, from the read buffer to the shard, converted on the way where asked. A reshape that splits or merges axes maps a box back to a box only when the box is
aligned with the merged axes (whole heads); ``plan`` refuses the others (:class:`TransformError`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from fastsafetensors._src.jax.placement import np_dtype
from fastsafetensors.errors import TransformError
from fastsafetensors._src.frameworks.numpy import NUMPY_DTYPES

Box = Tuple[Tuple[int, int], ...]  # (start, stop) per dimension
Read = Tuple[str, Box]  # a source tensor and the box of it to read
Fill = Callable[[Mapping[Read, np.ndarray], np.ndarray], None]  # (source boxes read, destination)


@dataclass
class Context:
    """What binding needs: the checkpoint's tensors (name -> (shape, dtype)) and the leaf, for errors."""

    tensors: Mapping[str, Tuple[Tuple[int, ...], str]]
    leaf: str

    def error(self, node: "Expr", problem: str) -> TransformError:
        sources = ", ".join(f"`{s}`" for s in node.sources()) or "none"
        return TransformError(f"target `{self.leaf}` (from {sources}): {problem}", tensor=self.leaf)


class Expr:
    """One node of a transform. After ``bind``: ``shape`` and ``dtype`` (a NumPy dtype)."""

    shape: Tuple[int, ...]
    dtype: np.dtype

    def sources(self) -> List[str]:
        raise NotImplementedError

    def bind(self, ctx: Context) -> "Expr":
        raise NotImplementedError

    def plan(self, box: Box) -> Tuple[List[Read], Fill]:
        raise NotImplementedError


def _check_axis(ctx: Context, node: Expr, axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise ctx.error(node, f"axis {axis} is out of range for rank {rank}")
    return axis % rank


_TILE = 128  # a 128x128 tile of each side stays in L2 while it is transposed


def _inner_axis(a: np.ndarray) -> int:
    """The axis whose neighbouring elements are closest in memory."""
    return min((abs(st), ax) for ax, (st, n) in enumerate(zip(a.strides, a.shape)) if n > 1)[1]


def copy(out: np.ndarray, src: np.ndarray) -> None:
    """``out[...] = src``, converting the dtype where an astype asked for it. When out is laid out
    transposed to src (another inner axis), in tiles over both inner axes: an element-by-element
    transposing copy misses the cache on every read, and measured 1.7-2x slower."""
    if src.ndim < 2 or src.size < 4 * _TILE * _TILE or min(src.shape) == 1 or _inner_axis(out) == _inner_axis(src):
        np.copyto(out, src, casting="unsafe")
        return
    a, b = _inner_axis(src), _inner_axis(out)
    where = [slice(None)] * src.ndim
    for i in range(0, src.shape[a], _TILE):
        where[a] = slice(i, i + _TILE)
        for j in range(0, src.shape[b], _TILE):
            where[b] = slice(j, j + _TILE)
            np.copyto(out[tuple(where)], src[tuple(where)], casting="unsafe")


class Source(Expr):
    def __init__(self, name: str):
        self.name = name

    def sources(self) -> List[str]:
        return [self.name]

    def bind(self, ctx: Context) -> Expr:
        if self.name not in ctx.tensors:
            raise ctx.error(self, f"source tensor `{self.name}` is not in the checkpoint")
        shape, st = ctx.tensors[self.name]
        if st not in NUMPY_DTYPES:
            raise ctx.error(self, f"source `{self.name}` has dtype {st}, which NumPy has no type for")
        self.shape, self.dtype = tuple(shape), np.dtype(NUMPY_DTYPES[st])
        return self

    def plan(self, box: Box) -> Tuple[List[Read], Fill]:
        key = (self.name, box)
        return [key], lambda got, out: copy(out, got[key])


class Transpose(Expr):
    def __init__(self, x: Expr, perm: Sequence[int]):
        self.x, self.perm = x, tuple(perm)

    def sources(self) -> List[str]:
        return self.x.sources()

    def bind(self, ctx: Context) -> Expr:
        self.x = self.x.bind(ctx)
        if sorted(self.perm) != list(range(len(self.x.shape))):
            raise ctx.error(self, f"transpose {self.perm} is not a permutation of the {len(self.x.shape)} axes "
                                  f"of shape {self.x.shape}")
        self.shape, self.dtype = tuple(self.x.shape[p] for p in self.perm), self.x.dtype
        return self

    def plan(self, box: Box) -> Tuple[List[Read], Fill]:
        inner = [None] * len(box)
        for out_axis, in_axis in enumerate(self.perm):
            inner[in_axis] = box[out_axis]
        reads, fill = self.x.plan(tuple(inner))
        inverse = tuple(np.argsort(self.perm))
        return reads, lambda got, out: fill(got, out.transpose(inverse))


class Slice(Expr):
    def __init__(self, x: Expr, axis: int, start: int, stop: int):
        self.x, self.axis, self.start, self.stop = x, axis, start, stop

    def sources(self) -> List[str]:
        return self.x.sources()

    def bind(self, ctx: Context) -> Expr:
        self.x = self.x.bind(ctx)
        self.axis = _check_axis(ctx, self, self.axis, len(self.x.shape))
        n = self.x.shape[self.axis]
        if not 0 <= self.start < self.stop <= n:
            raise ctx.error(self, f"slice [{self.start}:{self.stop}] of axis {self.axis} (size {n}) is empty "
                                  "or out of range")
        self.shape = self.x.shape[:self.axis] + (self.stop - self.start,) + self.x.shape[self.axis + 1:]
        self.dtype = self.x.dtype
        return self

    def plan(self, box: Box) -> Tuple[List[Read], Fill]:
        a, b = box[self.axis]
        return self.x.plan(box[:self.axis] + ((a + self.start, b + self.start),) + box[self.axis + 1:])


class AsType(Expr):
    def __init__(self, x: Expr, dtype: Any):
        self.x, self.want = x, dtype

    def sources(self) -> List[str]:
        return self.x.sources()

    def bind(self, ctx: Context) -> Expr:
        self.x = self.x.bind(ctx)
        self.dtype = np_dtype(self.want)
        self.shape = self.x.shape
        return self

    def plan(self, box: Box) -> Tuple[List[Read], Fill]:
        reads, fill = self.x.plan(box)

        def cast(got, out):
            if out.dtype == self.dtype:  # the sources convert as they are copied into out
                return fill(got, out)
            tmp = np.empty(out.shape, self.dtype)  # a conversion below a different one: both happen
            fill(got, tmp)
            np.copyto(out, tmp, casting="unsafe")

        return reads, cast


class Concat(Expr):
    def __init__(self, xs: Sequence[Expr], axis: int):
        self.xs, self.axis = list(xs), axis

    def sources(self) -> List[str]:
        return [s for x in self.xs for s in x.sources()]

    def bind(self, ctx: Context) -> Expr:
        if not self.xs:
            raise ctx.error(self, "concat of nothing")
        self.xs = [x.bind(ctx) for x in self.xs]
        first = self.xs[0]
        self.axis = _check_axis(ctx, self, self.axis, len(first.shape))
        for x in self.xs[1:]:
            if x.dtype != first.dtype:
                raise ctx.error(self, f"concat of {first.dtype} and {x.dtype}: convert with astype first")
            if len(x.shape) != len(first.shape):
                raise ctx.error(self, f"concat of rank {len(first.shape)} and rank {len(x.shape)}")
            off = [i for i, (a, b) in enumerate(zip(first.shape, x.shape)) if a != b and i != self.axis]
            if off:
                raise ctx.error(self, f"concat along axis {self.axis} of shapes {first.shape} and {x.shape}: "
                                      f"they differ on axis {off[0]}")
        n = sum(x.shape[self.axis] for x in self.xs)
        self.shape = first.shape[:self.axis] + (n,) + first.shape[self.axis + 1:]
        self.dtype = first.dtype
        return self

    def plan(self, box: Box) -> Tuple[List[Read], Fill]:
        a, b = box[self.axis]
        reads: List[Read] = []
        parts: List[Tuple[Tuple[slice, ...], Fill]] = []
        at = 0
        for x in self.xs:
            n = x.shape[self.axis]
            lo, hi = max(a, at), min(b, at + n)
            if lo < hi:  # this part overlaps the box
                r, f = x.plan(box[:self.axis] + ((lo - at, hi - at),) + box[self.axis + 1:])
                reads += r
                parts.append(((slice(None),) * self.axis + (slice(lo - a, hi - a),), f))
            at += n

        def fill(got, out):
            for where, f in parts:
                f(got, out[where])

        return reads, fill


class Stack(Expr):
    """``xs`` along a new axis; or, unbound, every checkpoint name that ``pattern`` matches in full,
    ordered by its first group (numbers as numbers), each item ``fn(group)`` or the tensor itself."""

    def __init__(self, xs: Optional[Sequence[Expr]] = None, pattern: Optional[str] = None,
                 fn: Optional[Callable[[str], Expr]] = None, axis: int = 0):
        self.xs, self.pattern, self.fn, self.axis = list(xs or []), pattern, fn, axis

    def sources(self) -> List[str]:
        return [s for x in self.xs for s in x.sources()] or ([f"/{self.pattern}/"] if self.pattern else [])

    def _expand(self, ctx: Context) -> List[Expr]:
        rx = re.compile(self.pattern)
        found: Dict[str, str] = {}
        for name in ctx.tensors:
            m = rx.fullmatch(name)
            if m:
                key = m.group(1) if rx.groups else name
                if key in found:
                    raise ctx.error(self, f"stack pattern matches `{found[key]}` and `{name}` for the same item {key}")
                found[key] = name
        if not found:
            raise ctx.error(self, f"stack pattern /{self.pattern}/ matches no tensor of the checkpoint")
        keys = sorted(found, key=lambda k: (0, int(k), "") if k.isdigit() else (1, 0, k))
        if all(k.isdigit() for k in keys) and [int(k) for k in keys] != list(range(len(keys))):
            missing = sorted(set(range(int(keys[-1]) + 1)) - {int(k) for k in keys})
            raise ctx.error(self, f"stack pattern /{self.pattern}/ has no tensor for item(s) {missing}")
        return [self.fn(k) if self.fn else Source(found[k]) for k in keys]

    def bind(self, ctx: Context) -> Expr:
        if self.pattern is not None:
            self.xs = self._expand(ctx)
        if not self.xs:
            raise ctx.error(self, "stack of nothing")
        self.xs = [x.bind(ctx) for x in self.xs]
        first = self.xs[0]
        for x in self.xs[1:]:
            if x.shape != first.shape or x.dtype != first.dtype:
                raise ctx.error(self, f"stack of {first.shape} {first.dtype} and {x.shape} {x.dtype}: items differ")
        self.axis = _check_axis(ctx, self, self.axis, len(first.shape) + 1)
        self.shape = first.shape[:self.axis] + (len(self.xs),) + first.shape[self.axis:]
        self.dtype = first.dtype
        return self

    def plan(self, box: Box) -> Tuple[List[Read], Fill]:
        a, b = box[self.axis]
        inner = box[:self.axis] + box[self.axis + 1:]
        reads: List[Read] = []
        items: List[Tuple[Tuple[Any, ...], Fill]] = []
        for k, x in enumerate(self.xs[a:b]):
            r, f = x.plan(inner)
            reads += r
            items.append(((slice(None),) * self.axis + (k,), f))

        def fill(got, out):
            for where, f in items:
                f(got, out[where])

        return reads, fill


def _groups(src: Tuple[int, ...], dst: Tuple[int, ...]) -> List[Tuple[Tuple[int, int], Tuple[int, int]]]:
    """Splits a reshape into independent groups of axes with equal sizes: [((src axes), (dst axes))]
    as (start, stop) pairs; size-1 axes join the group before them."""
    out, i, j = [], 0, 0
    while i < len(src) or j < len(dst):
        i0, j0 = i, j
        p, q = 1, 1
        while True:
            if p <= q and i < len(src):
                p *= src[i]
                i += 1
            elif j < len(dst):
                q *= dst[j]
                j += 1
            else:
                break
            if p == q and (i == len(src) or src[i] != 1) and (j == len(dst) or dst[j] != 1) and i > i0 and j > j0:
                break
        out.append(((i0, i), (j0, j)))
    return out


def _flat_range(box: Box, dims: Tuple[int, ...]) -> Optional[Tuple[int, int]]:
    """The row-major range [a, b) a box over ``dims`` covers, or None when it is not one range."""
    partial = [k for k, ((a, b), n) in enumerate(zip(box, dims)) if (a, b) != (0, n)]
    last = partial[-1] if partial else 0
    if any(b - a != 1 for a, b in box[:last]):
        return None
    start = 0
    for (a, _), n in zip(box, dims):
        start = start * n + a
    if not dims:
        return 0, 1
    inner = int(np.prod(dims[last + 1:], dtype=np.int64))
    return start, start + (box[last][1] - box[last][0]) * inner


def _range_box(a: int, b: int, dims: Tuple[int, ...]) -> Optional[Box]:
    """The box over ``dims`` whose row-major range is [a, b), or None when there is none."""
    for k in range(len(dims)):
        inner = int(np.prod(dims[k + 1:], dtype=np.int64))
        if a % inner or (b - a) % inner:
            continue
        outer, start = divmod(a // inner, dims[k])
        if start + (b - a) // inner > dims[k]:
            continue
        head = []
        for n in reversed(dims[:k]):
            outer, i = divmod(outer, n)
            head.append((i, i + 1))
        return tuple(reversed(head)) + ((start, start + (b - a) // inner),) + tuple((0, n) for n in dims[k + 1:])
    return () if not dims else None


class Reshape(Expr):
    def __init__(self, x: Expr, shape: Sequence[int]):
        self.x, self.want = x, tuple(shape)

    def sources(self) -> List[str]:
        return self.x.sources()

    def bind(self, ctx: Context) -> Expr:
        self.x = self.x.bind(ctx)
        src = self.x.shape
        want = list(self.want)
        if want.count(-1) == 1:
            rest = int(np.prod([d for d in want if d != -1], dtype=np.int64))
            want[want.index(-1)] = int(np.prod(src, dtype=np.int64)) // rest if rest else 0
        if any(d <= 0 for d in want) or int(np.prod(want, dtype=np.int64)) != int(np.prod(src, dtype=np.int64)):
            raise ctx.error(self, f"cannot reshape {src} into {tuple(self.want)}: sizes differ")
        self.shape, self.dtype = tuple(want), self.x.dtype
        self.groups = _groups(src, self.shape)
        self.ctx = ctx  # plan's errors name the leaf
        return self

    def plan(self, box: Box) -> Tuple[List[Read], Fill]:
        inner: List[Tuple[int, int]] = []
        for (i0, i1), (j0, j1) in self.groups:
            span = _flat_range(box[j0:j1], self.shape[j0:j1])
            sub = _range_box(*span, self.x.shape[i0:i1]) if span is not None else None
            if sub is None:
                raise self.ctx.error(self, f"reshape {self.x.shape} -> {self.shape}: the shard box {box[j0:j1]} "
                                           f"of axes {tuple(range(j0, j1))} is not one block of axes "
                                           f"{tuple(range(i0, i1))} before it (shard whole heads, or another axis)")
            inner += sub
        reads, fill = self.x.plan(tuple(inner))
        in_shape = tuple(b - a for a, b in inner)

        def reshaped(got, out):
            view = out.view()
            try:
                view.shape = in_shape  # a view when out's strides allow it (always for a whole shard)
            except AttributeError:
                tmp = np.empty(in_shape, out.dtype)
                fill(got, tmp)
                out[...] = tmp.reshape(out.shape)
                return
            fill(got, view)

        return reads, reshaped


# ---------------------------------------------------------------- the public constructors


def src(name: str) -> Expr:
    """The checkpoint tensor ``name``."""
    return Source(name)


def _expr(x: Union[str, Expr]) -> Expr:
    return Source(x) if isinstance(x, str) else x


def transpose(x: Union[str, Expr], perm: Sequence[int] = (1, 0)) -> Expr:
    """Axes permuted as ``np.transpose(x, perm)`` (default: a matrix transposed)."""
    return Transpose(_expr(x), perm)


def reshape(x: Union[str, Expr], shape: Sequence[int]) -> Expr:
    """Axes split or merged (one -1 allowed), as ``np.reshape`` in C order."""
    return Reshape(_expr(x), shape)


def concat(xs: Sequence[Union[str, Expr]], axis: int = 0) -> Expr:
    """``np.concatenate(xs, axis)``: fuses q/k/v or gate/up."""
    return Concat([_expr(x) for x in xs], axis)


def stack(xs: Union[str, Sequence[Union[str, Expr]]], fn: Optional[Callable[[str], Expr]] = None,
          axis: int = 0) -> Expr:
    """``np.stack(xs, axis)``. ``xs`` may be a regex: every checkpoint name it matches in full, ordered
    by its first group (layer numbers, which must run 0..n-1); ``fn(group)`` builds each item."""
    if isinstance(xs, str):
        return Stack(pattern=xs, fn=fn, axis=axis)
    if fn is not None:
        raise TypeError("stack: fn= goes with a pattern")
    return Stack([_expr(x) for x in xs], axis=axis)


def slice_(x: Union[str, Expr], axis: int, start: int, stop: int) -> Expr:
    """``x[..., start:stop, ...]`` on ``axis``."""
    return Slice(_expr(x), axis, start, stop)


def astype(x: Union[str, Expr], dtype: Any) -> Expr:
    """Converted to ``dtype`` (a NumPy/JAX dtype or a safetensors name such as "BF16") on the host."""
    return AsType(_expr(x), dtype)


@dataclass
class Rename:
    """Every checkpoint name ``pattern`` matches in full becomes the leaf ``match.expand(repl)``,
    with ``fn(src(name))`` applied when given."""

    pattern: str
    repl: str
    fn: Optional[Callable[[Expr], Expr]] = None


def rename(pattern: str, repl: str, fn: Optional[Callable[[Expr], Expr]] = None) -> Rename:
    return Rename(pattern, repl, fn)


Transforms = Union[Mapping[str, Expr], Sequence[Union[Rename, Mapping[str, Expr]]]]


def leaves(transforms: Transforms, names: Sequence[str]) -> Dict[str, Expr]:
    """Target leaf -> its (unbound) expression; a leaf made twice is an overlapping write."""
    items = [transforms] if isinstance(transforms, Mapping) else list(transforms)
    out: Dict[str, Expr] = {}

    def add(leaf: str, expr: Any, origin: str) -> None:
        if leaf in out:
            raise TransformError(f"target `{leaf}` is written twice ({origin}): overlapping writes", tensor=leaf)
        if not isinstance(expr, Expr):
            raise TypeError(f"target `{leaf}`: expected a transform expression, got {type(expr).__name__}")
        out[leaf] = expr

    for item in items:
        if isinstance(item, Rename):
            rx = re.compile(item.pattern)
            matched = [n for n in names if rx.fullmatch(n)]
            if not matched:
                raise TransformError(f"rename /{item.pattern}/ matches no tensor of the checkpoint")
            for n in matched:
                add(rx.fullmatch(n).expand(item.repl), item.fn(Source(n)) if item.fn else Source(n),
                    f"rename /{item.pattern}/ of `{n}`")
        elif isinstance(item, Mapping):
            for leaf, expr in item.items():
                add(leaf, _expr(expr), "mapping")
        else:
            raise TypeError(f"transforms: expected rename(...) rules or mappings, got {type(item).__name__}")
    return out


def bind(leaf: str, expr: Expr, tensors: Mapping[str, Tuple[Tuple[int, ...], str]]) -> Expr:
    return expr.bind(Context(tensors, leaf))
