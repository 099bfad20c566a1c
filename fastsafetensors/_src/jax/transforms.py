"""Layout transforms: checkpoint tensors -> target leaves, and which source boxes make up a target box.

A transform is an expression over checkpoint tensors (:func:`src`) built from :func:`transpose`,
:func:`reshape`, :func:`concat`, :func:`stack`, :func:`slice_`, :func:`astype`; :func:`rename`
rules turn every checkpoint name a regex matches into a target leaf. ``bind`` resolves an
expression against the checkpoint (names, shapes, dtypes) and checks it, before any I/O.

A bound node answers ``place(box, offset, strides)``: the :class:`Piece` s that make up ``box``
of its output (the inverse of the transform applied to the box), each a box of one source tensor
and where its elements land in the shard (an offset and a stride per axis, in elements). A
transpose permutes the strides, a concat or stack moves the offset per part, a slice moves the
box; a reshape that splits or merges axes cuts the box into runs that are contiguous in both
layouts, so any shard box maps back (heads cut by a shard included), into one piece per run
where the box does not cover whole heads. The engine reads each piece straight into its shard
or copies it there from a staging buffer (:mod:`.transform_reads`).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from fastsafetensors._src.jax.placement import np_dtype
from fastsafetensors.errors import TransformError
from fastsafetensors._src.frameworks.numpy import NUMPY_DTYPES
from ...errors import ArgumentTypeError

Box = Tuple[Tuple[int, int], ...]  # (start, stop) per dimension


@dataclass(frozen=True)
class Piece:
    """A box of source tensor ``name`` viewed as ``shape`` (a C-order reshape of it, where a reshape
    cut its axes) and where it lands: element i of the box at element ``offset + sum(i * strides)``
    of its shard, converted through ``dtypes`` (innermost astype first; empty: as stored)."""

    name: str
    shape: Tuple[int, ...]
    box: Box
    offset: int
    strides: Tuple[int, ...]
    dtypes: Tuple[np.dtype, ...] = ()


def c_strides(shape: Sequence[int]) -> Tuple[int, ...]:
    """Element strides of a C-contiguous array of ``shape``."""
    out = [1] * len(shape)
    for d in range(len(shape) - 1, 0, -1):
        out[d - 1] = out[d] * shape[d]
    return tuple(out)


def pieces(expr: "Expr", box: Box) -> List[Piece]:
    """The pieces of a bound expression that make up a C-contiguous shard of ``box``."""
    if any(a == b for a, b in box):
        return []
    return expr.place(box, 0, c_strides([b - a for a, b in box]))


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

    def place(self, box: Box, offset: int, strides: Tuple[int, ...]) -> List[Piece]:
        raise NotImplementedError


def _check_axis(ctx: Context, node: Expr, axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise ctx.error(node, f"axis {axis} is out of range for rank {rank}")
    return axis % rank


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

    def place(self, box: Box, offset: int, strides: Tuple[int, ...]) -> List[Piece]:
        return [Piece(self.name, self.shape, box, offset, strides)]


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

    def place(self, box: Box, offset: int, strides: Tuple[int, ...]) -> List[Piece]:
        inner: List[Any] = [None] * len(box)
        inner_strides = [0] * len(box)
        for out_axis, in_axis in enumerate(self.perm):
            inner[in_axis], inner_strides[in_axis] = box[out_axis], strides[out_axis]
        return self.x.place(tuple(inner), offset, tuple(inner_strides))


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

    def place(self, box: Box, offset: int, strides: Tuple[int, ...]) -> List[Piece]:
        a, b = box[self.axis]
        return self.x.place(box[:self.axis] + ((a + self.start, b + self.start),) + box[self.axis + 1:], offset,
                            strides)


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

    def place(self, box: Box, offset: int, strides: Tuple[int, ...]) -> List[Piece]:
        return [replace(p, dtypes=p.dtypes + (self.dtype,)) for p in self.x.place(box, offset, strides)]


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

    def place(self, box: Box, offset: int, strides: Tuple[int, ...]) -> List[Piece]:
        a, b = box[self.axis]
        out: List[Piece] = []
        at = 0
        for x in self.xs:
            n = x.shape[self.axis]
            lo, hi = max(a, at), min(b, at + n)
            if lo < hi:  # this part overlaps the box
                out += x.place(box[:self.axis] + ((lo - at, hi - at),) + box[self.axis + 1:],
                               offset + (lo - a) * strides[self.axis], strides)
            at += n
        return out


class Stack(Expr):
    """``xs`` along a new axis; or, unbound, every checkpoint name that ``pattern`` matches in full,
    ordered by its first group (numbers as numbers), each item ``fn(group)`` or the tensor itself."""

    def __init__(self, xs: Optional[Sequence[Expr]] = None, pattern: Optional[str] = None,
                 fn: Optional[Callable[[str], Expr]] = None, axis: int = 0):
        self.xs, self.pattern, self.fn, self.axis = list(xs or []), pattern, fn, axis

    def sources(self) -> List[str]:
        return [s for x in self.xs for s in x.sources()] or ([f"/{self.pattern}/"] if self.pattern else [])

    def _expand(self, ctx: Context, pattern: str) -> List[Expr]:
        rx = re.compile(pattern)
        found: Dict[str, str] = {}
        for name in ctx.tensors:
            m = rx.fullmatch(name)
            if m:
                key = m.group(1) if rx.groups else name
                if key in found:
                    raise ctx.error(self, f"stack pattern matches `{found[key]}` and `{name}` for the same item {key}")
                found[key] = name
        if not found:
            raise ctx.error(self, f"stack pattern /{pattern}/ matches no tensor of the checkpoint")
        keys = sorted(found, key=lambda k: (0, int(k), "") if k.isdigit() else (1, 0, k))
        if all(k.isdigit() for k in keys) and [int(k) for k in keys] != list(range(len(keys))):
            missing = sorted(set(range(int(keys[-1]) + 1)) - {int(k) for k in keys})
            raise ctx.error(self, f"stack pattern /{pattern}/ has no tensor for item(s) {missing}")
        return [self.fn(k) if self.fn else Source(found[k]) for k in keys]

    def bind(self, ctx: Context) -> Expr:
        if self.pattern is not None:
            self.xs = self._expand(ctx, self.pattern)
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

    def place(self, box: Box, offset: int, strides: Tuple[int, ...]) -> List[Piece]:
        a, b = box[self.axis]
        inner, inner_strides = box[:self.axis] + box[self.axis + 1:], strides[:self.axis] + strides[self.axis + 1:]
        out: List[Piece] = []
        for k, x in enumerate(self.xs[a:b]):
            out += x.place(inner, offset + k * strides[self.axis], inner_strides)
        return out


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


def _range_boxes(a: int, b: int, dims: Tuple[int, ...]) -> List[Tuple[Box, int]]:
    """The elements [a, b) of a C-order array of ``dims`` as boxes, each with the flat index of its
    first element: whole rows in one box, a partial row at either end in boxes of its own."""
    if a >= b:
        return []
    if not dims:
        return [((), a)]
    inner = int(np.prod(dims[1:], dtype=np.int64))
    first, last = a // inner, (b - 1) // inner
    if first == last:  # inside one row: a box of the axes below it
        return [(((first, first + 1),) + box, at + first * inner)
                for box, at in _range_boxes(a - first * inner, b - first * inner, dims[1:])]
    lo, hi = -(-a // inner), b // inner  # the whole rows
    whole = [(((lo, hi),) + tuple((0, n) for n in dims[1:]), lo * inner)] if lo < hi else []
    return _range_boxes(a, lo * inner, dims) + whole + _range_boxes(hi * inner, b, dims)


def _runs(box: Box, strides: Tuple[int, ...], dims: Tuple[int, ...]) -> List[Tuple[int, int, int, int]]:
    """A box over ``dims`` as runs contiguous in its flat (C-order) index that land at one stride:
    (flat start, length, offset of the first element, stride). A run spans the trailing axes the
    box covers whole and whose strides nest; every index of the axes before it starts one."""
    if not dims:
        return [(0, 1, 0, 1)]
    n = len(dims)
    last = max([k for k in range(n) if box[k] != (0, dims[k])], default=0)
    r = n - 1
    while r > last and strides[r - 1] == strides[r] * dims[r]:
        r -= 1
    flat = c_strides(dims)
    length = (box[r][1] - box[r][0]) * flat[r]
    out = []
    for idx in itertools.product(*(range(a, b) for a, b in box[:r])):
        start = sum(i * f for i, f in zip(idx, flat)) + box[r][0] * flat[r]
        at = sum((i - a) * s for i, (a, _), s in zip(idx, box, strides))
        out.append((start, length, at, strides[-1]))
    return out


def _group_parts(box: Box, strides: Tuple[int, ...], dims: Tuple[int, ...],
                 src: Tuple[int, ...]) -> List[Tuple[Box, int, Tuple[int, ...]]]:
    """One reshape group: a box over its output axes ``dims`` as boxes over its input axes
    ``src``, each with its offset and strides in the destination."""
    out = []
    flat = c_strides(src)
    for start, length, at, step in _runs(box, strides, dims):
        for sub, first in _range_boxes(start, start + length, src):
            out.append((sub, at + (first - start) * step, tuple(f * step for f in flat)))
    return out


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
        return self

    def place(self, box: Box, offset: int, strides: Tuple[int, ...]) -> List[Piece]:
        parts = [_group_parts(box[j0:j1], strides[j0:j1], self.shape[j0:j1], self.x.shape[i0:i1])
                 for (i0, i1), (j0, j1) in self.groups]
        out: List[Piece] = []
        for combo in itertools.product(*parts):
            inner = tuple(d for sub, _, _ in combo for d in sub)
            inner_strides = tuple(s for _, _, ss in combo for s in ss)
            out += self.x.place(inner, offset + sum(at for _, at, _ in combo), inner_strides)
        return out


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
        raise ArgumentTypeError("stack: fn= goes with a pattern")
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
            raise ArgumentTypeError(f"target `{leaf}`: expected a transform expression, got {type(expr).__name__}")
        out[leaf] = expr

    for item in items:
        if isinstance(item, Rename):
            rx = re.compile(item.pattern)
            matched = [(n, m) for n in names if (m := rx.fullmatch(n))]
            if not matched:
                raise TransformError(f"rename /{item.pattern}/ matches no tensor of the checkpoint")
            for n, m in matched:
                add(m.expand(item.repl), item.fn(Source(n)) if item.fn else Source(n),
                    f"rename /{item.pattern}/ of `{n}`")
        elif isinstance(item, Mapping):
            for leaf, expr in item.items():
                add(leaf, _expr(expr), "mapping")
        else:
            raise ArgumentTypeError(f"transforms: expected rename(...) rules or mappings, got {type(item).__name__}")
    return out


def bind(leaf: str, expr: Expr, tensors: Mapping[str, Tuple[Tuple[int, ...], str]]) -> Expr:
    return expr.bind(Context(tensors, leaf))
