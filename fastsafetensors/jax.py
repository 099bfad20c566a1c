"""JAX first: load a checkpoint straight into sharded ``jax.Array`` s.

``load`` places every tensor by a sharding (one for all, regex rules over a mesh, or a pytree of
shardings or ``jax.ShapeDtypeStruct`` whose dotted paths are tensor names) and reads, on each host, only the bytes of the
shards its addressable devices hold. See docs/jax.md.

Two strategies:

* ``per_device``: each distinct shard index is planned with ``cpp.plan_box`` and read once per
  host into its own aligned slot of a host buffer; devices with the same index (replicas) share
  that slot. Each slot is handed to its devices with ``jax.device_put`` (zero-copy on the CPU)
  and the global array is assembled with ``jax.make_array_from_single_device_arrays``.
* ``scatter``: each tensor is read whole once, put on the default device, and a jitted identity
  with ``out_shardings`` distributes it (one program per sharding and shape, cached by jit).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec, Sharding, SingleDeviceSharding

from fastsafetensors import cpp
from fastsafetensors.api import _direct_io_default
from fastsafetensors.dtypes import BITS, FLOAT_DTYPES
from fastsafetensors.engine import read_into_host
from fastsafetensors.errors import ShardingMismatch, UnsupportedDtype
from fastsafetensors.files import PathLike, SafeTensorsFile, open_checkpoint
from fastsafetensors.frameworks import get_framework
from fastsafetensors.frameworks.numpy import NUMPY_DTYPES
from fastsafetensors.metrics import LoadMetrics
from fastsafetensors.plan import LoadPlan, locate_tensors, plan_load

__all__ = ["load", "JaxLoadMetrics", "STRATEGIES", "SMALL_RUN_BYTES", "MIN_REGION_COVER"]

logger = logging.getLogger("fastsafetensors")

STRATEGIES = ("auto", "per_device", "scatter")
# Region rule: a tensor whose local shards read as runs shorter than this on average ...
SMALL_RUN_BYTES = 256 << 10
# ... and cover at least this fraction of the box around them is read as that one box, and the
# shards are cut out of memory (cpp.copy_boxes) instead of read run by run.
MIN_REGION_COVER = 0.5
_ALIGN = cpp.TENSOR_ALIGNMENT
_WIDE = frozenset({"I64", "U64", "F64"})

Placement = Union[Sharding, "jax.Device", Mapping[str, Any], Any]
Rules = Sequence[Tuple[str, Any]]
BoxKey = Tuple[Tuple[int, int], ...]  # (start, stop) per dimension


@dataclass
class JaxLoadMetrics(LoadMetrics):
    """:class:`LoadMetrics` of a JAX load.

    ``strategy`` is the one asked for, ``tensors_per_strategy`` how many tensors each took.
    ``bytes_read`` and ``bytes_per_file`` count what this process read from disk;
    ``bytes_per_device`` the shard bytes delivered to each addressable device (a replicated
    shard counts for each device that holds it, although it was read once).
    ``seconds`` has the phases headers, plan, allocate, read, cut, transfer, assemble, convert.
    """

    strategy: str = ""
    tensors_per_strategy: Dict[str, int] = field(default_factory=dict)
    process_index: int = 0
    bytes_per_device: Dict[str, int] = field(default_factory=dict)

    @property
    def bytes_per_process(self) -> Dict[int, int]:
        return {self.process_index: self.bytes_read}


@dataclass
class _Target:
    """One tensor to load: where it is, where it goes, what it becomes."""

    name: str
    file: int
    index: int  # in its file's header
    info: "cpp.TensorInfo"
    sharding: Sharding
    dtype: Optional[np.dtype]  # the dtype to convert to on the device; None keeps the file's

    @property
    def shape(self) -> Tuple[int, ...]:
        return tuple(self.info.shape)


# ---------------------------------------------------------------- placement


def _as_sharding(value: Any) -> Sharding:
    if isinstance(value, Sharding):
        return value
    if isinstance(value, jax.Device):
        return SingleDeviceSharding(value)
    raise TypeError(f"expected a jax.sharding.Sharding or a jax.Device, got {type(value).__name__}")


def _is_placement(value: Any) -> bool:
    return isinstance(value, (Sharding, jax.Device))


def _path_name(path: Sequence[Any]) -> str:
    parts = []
    for k in path:
        for attr in ("key", "idx", "name"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return ".".join(parts)


def _tree_leaves(tree: Any) -> Dict[str, Any]:
    """Dotted name -> leaf of a pytree whose leaves are ShapeDtypeStructs, Shardings or devices
    (``{"a": {"b": [x]}}`` -> ``a.b.0``; a flat ``{"a.b": x}`` names ``a.b`` as well)."""
    is_leaf = lambda x: isinstance(x, jax.ShapeDtypeStruct) or _is_placement(x)  # noqa: E731
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]:
        if not is_leaf(leaf):
            raise TypeError(f"{_path_name(path)}: a placement tree holds jax.ShapeDtypeStruct, Sharding or "
                            f"Device leaves, not {type(leaf).__name__}")
        out[_path_name(path)] = leaf
    return out


def _rule_sharding(mesh: "jax.sharding.Mesh", rules: Rules) -> Callable[[str], Sharding]:
    compiled = [(re.compile(pattern), spec) for pattern, spec in rules]

    def place(name: str) -> Sharding:
        for pattern, spec in compiled:
            if pattern.search(name):
                if spec is None:
                    spec = PartitionSpec()
                elif not isinstance(spec, PartitionSpec):
                    spec = PartitionSpec(*spec)
                return NamedSharding(mesh, spec)
        return NamedSharding(mesh, PartitionSpec())  # unmatched: replicated

    return place


class _Placer:
    """Turns the ``sharding``/``mesh``/``rules`` arguments into a sharding (and declared dtype and
    shape) per name. ``declared`` lists the names a mapping or abstract pytree asks for."""

    def __init__(self, sharding: Placement, mesh: Optional["jax.sharding.Mesh"], rules: Optional[Rules]):
        self.declared: Optional[List[str]] = None
        self._by_name: Dict[str, Sharding] = {}
        self._dtypes: Dict[str, np.dtype] = {}
        self._shapes: Dict[str, Tuple[int, ...]] = {}
        self._rule: Optional[Callable[[str], Sharding]] = None
        self._default: Optional[Sharding] = None
        fallback = (NamedSharding(mesh, PartitionSpec()) if mesh is not None
                    else SingleDeviceSharding(jax.local_devices()[0]))
        if rules is not None:
            if sharding is not None:
                raise ValueError("pass either sharding= or rules= (with mesh=), not both")
            if mesh is None:
                raise ValueError("rules= needs mesh=")
            self._rule = _rule_sharding(mesh, rules)
        elif sharding is None:
            self._default = fallback
        elif _is_placement(sharding):
            self._default = _as_sharding(sharding)
        else:
            self._from_tree(_tree_leaves(sharding), fallback)

    def _from_tree(self, leaves: Dict[str, Any], fallback: Sharding) -> None:
        for name, leaf in leaves.items():
            if isinstance(leaf, jax.ShapeDtypeStruct):
                self._by_name[name] = leaf.sharding if leaf.sharding is not None else fallback
                self._dtypes[name] = np.dtype(leaf.dtype)
                self._shapes[name] = tuple(leaf.shape)
            else:
                self._by_name[name] = _as_sharding(leaf)
        self.declared = list(leaves)

    def sharding(self, name: str) -> Sharding:
        if self._rule is not None:
            return self._rule(name)
        if self._default is not None:
            return self._default
        try:
            return self._by_name[name]
        except KeyError:
            raise ValueError(f"tensor `{name}` was asked for but the sharding mapping gives it no placement") from None

    def declared_dtype(self, name: str) -> Optional[np.dtype]:
        return self._dtypes.get(name)

    def declared_shape(self, name: str) -> Optional[Tuple[int, ...]]:
        return self._shapes.get(name)


# ---------------------------------------------------------------- checks before any I/O


def _np_dtype(dtype: Any) -> np.dtype:
    """A safetensors dtype name ("BF16") or anything numpy/JAX accept as a dtype."""
    if isinstance(dtype, str) and dtype.upper() in NUMPY_DTYPES:
        return np.dtype(NUMPY_DTYPES[dtype.upper()])
    return np.dtype(dtype)


def _check_dtype(t: _Target, f: SafeTensorsFile) -> None:
    st = t.info.dtype
    if st not in NUMPY_DTYPES:
        raise UnsupportedDtype(f"{f.path}: tensor `{t.name}` has dtype {st}, which JAX has no type for",
                               filename=f.path, tensor=t.name)
    # JAX without x64 would narrow 64-bit values silently: refuse unless a conversion was asked for.
    if st in _WIDE and not jax.config.jax_enable_x64 and (t.dtype is None or t.dtype.itemsize == 8):
        raise UnsupportedDtype(
            f"{f.path}: tensor `{t.name}` is {st} but jax_enable_x64 is off, so JAX would narrow it; "
            "enable x64 (jax.config.update('jax_enable_x64', True)) or ask for a 32-bit dtype",
            filename=f.path, tensor=t.name)


def _mesh_axes(entry: Any) -> Tuple[str, ...]:
    if entry is None:
        return ()
    return tuple(entry) if isinstance(entry, (tuple, list)) else (entry,)


def _sharding_error(t: _Target, f: SafeTensorsFile, exc: Optional[Exception]) -> ShardingMismatch:
    """Names the tensor, the dimension and the mesh axes of a sharding that does not fit it."""
    s, shape = t.sharding, t.shape
    msg = f"does not fit sharding {s}: {exc}"
    if isinstance(s, NamedSharding):
        spec = tuple(s.spec)
        if len(spec) > len(shape):
            msg = f"has rank {len(shape)} but its PartitionSpec {s.spec} names {len(spec)} dimensions"
        for axis, entry in enumerate(spec[:len(shape)]):
            names = _mesh_axes(entry)
            ways = int(np.prod([s.mesh.shape[n] for n in names])) if names else 1
            if shape[axis] % ways:
                msg = (f"axis {axis} (size {shape[axis]}) does not divide over mesh axis {'x'.join(names)} "
                       f"({ways} ways)")
                break
    return ShardingMismatch(f"{f.path}: tensor `{t.name}` of shape {shape} {msg}", filename=f.path, tensor=t.name)


def _shard_boxes(t: _Target, f: SafeTensorsFile) -> Dict[BoxKey, List["jax.Device"]]:
    """Distinct index boxes of this host's devices, each with the devices that hold it."""
    if isinstance(t.sharding, NamedSharding) and len(t.sharding.spec) > len(t.shape):
        raise _sharding_error(t, f, None)  # JAX would fail with an IndexError deep inside
    try:
        index_map = t.sharding.addressable_devices_indices_map(t.shape)
    except ValueError as exc:  # JAX refuses this shape for this sharding: so do we, by name
        raise _sharding_error(t, f, exc) from exc
    boxes: Dict[BoxKey, List[jax.Device]] = {}
    for device, index in index_map.items():
        key = tuple(sl.indices(n)[:2] for sl, n in zip(index, t.shape))
        boxes.setdefault(key, []).append(device)
    return boxes


def _targets(files: List[SafeTensorsFile], placer: _Placer, names: Optional[Iterable[str]],
             dtype: Any) -> List[_Target]:
    wanted = list(names) if names is not None else placer.declared
    cast = None if dtype in (None, "auto", "AUTO") else _np_dtype(dtype)
    out = []
    for name, (fi, k) in locate_tensors(files, wanted).items():
        info = files[fi].infos[k]
        declared = placer.declared_dtype(name)
        target = declared if declared is not None else (cast if info.dtype in FLOAT_DTYPES else None)
        t = _Target(name, fi, k, info, placer.sharding(name), target)
        _check_dtype(t, files[fi])
        want_shape = placer.declared_shape(name)
        if want_shape is not None and want_shape != t.shape:
            raise ShardingMismatch(f"{files[fi].path}: tensor `{name}` has shape {t.shape}, the abstract tree "
                                   f"declares {want_shape}", filename=files[fi].path, tensor=name)
        out.append(t)
    return out


# ---------------------------------------------------------------- per-device strategy


def _box_shape(box: BoxKey) -> Tuple[int, ...]:
    return tuple(b - a for a, b in box)


def _box_bytes(box: BoxKey, dtype: str) -> int:
    return int(np.prod(_box_shape(box), dtype=np.int64)) * BITS[dtype] // 8


def _align(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


@dataclass
class _Slot:
    """One distinct shard of one tensor in host memory, and the devices it goes to."""

    target: _Target
    box: BoxKey
    devices: List["jax.Device"]
    buffer: int
    offset: int


@dataclass
class _Region:
    """A box read once into the staging buffer, then cut into the shards (slots) inside it."""

    target: _Target
    box: BoxKey
    slots: List[_Slot]
    ranges: "cpp.RangeList"  # into the staging buffer, which follows the per-file buffers


@dataclass
class _ShardPlan:
    plan: LoadPlan  # direct reads into one buffer per file; no whole-tensor locations
    slots: List[_Slot]
    regions: List[_Region]

    @property
    def staging_bytes(self) -> int:
        return max((_box_bytes(r.box, r.target.info.dtype) for r in self.regions), default=0)


def _bounding_box(boxes: Iterable[BoxKey]) -> BoxKey:
    boxes = list(boxes)
    return tuple((min(b[d][0] for b in boxes), max(b[d][1] for b in boxes)) for d in range(len(boxes[0])))


def _wants_region(t: _Target, boxes: Dict[BoxKey, Any], per_box: Dict[BoxKey, Any]) -> bool:
    """The region rule: many small runs, and the shards fill most of the box around them."""
    runs = sum(len(r) for r in per_box.values())
    if runs <= len(per_box):
        return False  # one run per shard already
    shard_bytes = sum(_box_bytes(b, t.info.dtype) for b in boxes)
    if shard_bytes / runs >= SMALL_RUN_BYTES:
        return False
    region = _box_bytes(_bounding_box(boxes), t.info.dtype)
    return shard_bytes >= MIN_REGION_COVER * region


def _plan_box(f: SafeTensorsFile, t: _Target, box: BoxKey, dst: int, offset: int) -> "cpp.RangeList":
    start, stop = zip(*box) if box else ((), ())
    return cpp.plan_box(f.header, t.index, list(start), list(stop), t.file, dst, offset)


def _plan_shards(files: List[SafeTensorsFile], targets: List[_Target]) -> _ShardPlan:
    ranges = cpp.RangeList()
    sizes: List[int] = [0] * len(files)  # buffer i holds the shards of file i
    staging = len(files)
    slots: List[_Slot] = []
    regions: List[_Region] = []
    for t in targets:
        f = files[t.file]
        boxes = _shard_boxes(t, f)
        my_slots, per_box = [], {}
        for box, devices in boxes.items():
            slot = _Slot(t, box, devices, t.file, sizes[t.file])
            sizes[t.file] = _align(slot.offset + _box_bytes(box, t.info.dtype))
            my_slots.append(slot)
            per_box[box] = _plan_box(f, t, box, t.file, slot.offset)
        slots.extend(my_slots)
        if _wants_region(t, boxes, per_box):
            region = _bounding_box(boxes)
            regions.append(_Region(t, region, my_slots, _plan_box(f, t, region, staging, 0)))
        else:
            for r in per_box.values():
                ranges.extend(r)
    return _ShardPlan(LoadPlan(files, ranges, sizes, {}), slots, regions)


def _cut_region(region: _Region, buffers: List["cpp.HostBuffer"], staging: "cpp.HostBuffer") -> None:
    origin = [a for a, _ in region.box]
    targets = [([a - o for (a, _), o in zip(s.box, origin)], [b - o for (_, b), o in zip(s.box, origin)],
                buffers[s.buffer], s.offset) for s in region.slots]
    cpp.copy_boxes(staging, 0, list(_box_shape(region.box)), BITS[region.target.info.dtype] // 8, targets)


def _read_shards(sp: _ShardPlan, metrics: JaxLoadMetrics, read_options) -> List["cpp.HostBuffer"]:
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


def _host_view(buffers, buffer: int, offset: int, t: _Target, shape: Tuple[int, ...]) -> np.ndarray:
    view = get_framework("numpy").from_buffer(buffers[buffer], offset, t.info.dtype, shape)
    if t.info.dtype in _WIDE and not jax.config.jax_enable_x64:
        view = view.astype(t.dtype)  # 64-bit data JAX cannot hold: narrowed on the host, as asked
    return view


def _load_per_device(files, targets, metrics, read_options) -> Dict[str, jax.Array]:
    with metrics.phase("plan"):
        sp = _plan_shards(files, targets)
    buffers = _read_shards(sp, metrics, read_options)
    with metrics.phase("transfer"):
        views, devices, owners = [], [], []
        for s in sp.slots:
            view = _host_view(buffers, s.buffer, s.offset, s.target, _box_shape(s.box))
            nbytes = _box_bytes(s.box, s.target.info.dtype)
            for d in s.devices:
                views.append(view)
                devices.append(d)
                owners.append(s.target.name)
                metrics.bytes_per_device[str(d)] = metrics.bytes_per_device.get(str(d), 0) + nbytes
        placed = jax.device_put(views, devices)
    by_name: Dict[str, List[jax.Array]] = {}
    for name, arr in zip(owners, placed):
        by_name.setdefault(name, []).append(arr)
    with metrics.phase("assemble"):
        return {t.name: jax.make_array_from_single_device_arrays(t.shape, t.sharding, by_name.get(t.name, []))
                for t in targets}


# ---------------------------------------------------------------- scatter strategy


@lru_cache(maxsize=None)
def _identity_to(sharding: Sharding) -> Callable[[jax.Array], jax.Array]:
    return jax.jit(lambda x: x, out_shardings=sharding)


def _load_scatter(files, targets, metrics, read_options) -> Dict[str, jax.Array]:
    for t in targets:
        if not t.sharding.is_fully_addressable:
            raise ValueError(f"tensor `{t.name}`: strategy='scatter' needs devices of this process only; "
                             "use 'per_device' for shardings that span processes")
    with metrics.phase("plan"):
        plan = plan_load(files, [t.name for t in targets])
    buffers = read_into_host(plan, metrics=metrics, **read_options)
    out = {}
    with metrics.phase("transfer"):
        for t in targets:
            loc = plan.tensors[t.name]
            host = jax.device_put(_host_view(buffers, loc.buffer, loc.offset, t, t.shape))  # uncommitted
            out[t.name] = _identity_to(t.sharding)(host)
            for d in t.sharding.addressable_devices:
                size = _box_bytes(tuple((0, n) for n in t.sharding.shard_shape(t.shape)), t.info.dtype)
                metrics.bytes_per_device[str(d)] = metrics.bytes_per_device.get(str(d), 0) + size
        jax.block_until_ready(out)
    return out


# ---------------------------------------------------------------- the entry point


def _split(strategy: str, targets: List[_Target]) -> Tuple[List[_Target], List[_Target]]:
    """(per_device targets, scatter targets). "auto" is per_device: it reads only this host's
    shards, holds host memory once (zero-copy on the CPU) and works across processes; scatter won
    no layout consistently in our measurements (docs/jax.md)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    return ([], targets) if strategy == "scatter" else (targets, [])


@lru_cache(maxsize=None)
def _cast_to(dtype: np.dtype, sharding: Sharding) -> Callable[[jax.Array], jax.Array]:
    return jax.jit(lambda x: x.astype(dtype), out_shardings=sharding)


def _convert(out: Dict[str, jax.Array], targets: List[_Target]) -> Dict[str, jax.Array]:
    for t in targets:
        if t.dtype is not None and out[t.name].dtype != t.dtype:
            out[t.name] = _cast_to(t.dtype, t.sharding)(out[t.name])  # on the devices, same sharding
    return jax.block_until_ready(out)


def nest(flat: Mapping[str, Any]) -> Dict[str, Any]:
    """``{"a.b.0.c": x}`` -> ``{"a": {"b": {"0": {"c": x}}}}``."""
    root: Dict[str, Any] = {}
    for name, value in flat.items():
        node = root
        *parents, leaf = name.split(".")
        for i, part in enumerate(parents):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"tensor `{name}`: `{'.'.join(parents[:i + 1])}` is also a tensor, cannot nest")
        if leaf in node:
            raise ValueError(f"tensor `{name}` collides with tensors below it, cannot nest")
        node[leaf] = value
    return root


def load(paths: Union[PathLike, Iterable[PathLike]], sharding: Placement = None, *,
         mesh: Optional["jax.sharding.Mesh"] = None, rules: Optional[Rules] = None, nested: bool = False,
         names: Optional[Iterable[str]] = None, dtype: Any = None, strategy: str = "auto",
         metrics: Optional[JaxLoadMetrics] = None, threads: Optional[int] = None,
         direct_io: Optional[bool] = None, progress: Optional[bool] = None) -> Dict[str, Any]:
    """Loads a checkpoint into ``{name: jax.Array}``, each placed by its sharding.

    Args:
        paths: a ``.safetensors`` file, a list of them, a directory, or an ``*.index.json``.
        sharding: where tensors go: None (the first local device, or replicated over ``mesh``),
            one ``Sharding`` or ``jax.Device`` for all, a mapping name -> ``Sharding``, or an abstract
            pytree of ``jax.ShapeDtypeStruct(shape, dtype, sharding=...)`` whose dotted paths are the
            tensor names (it also sets each leaf's dtype and checks its shape). A mapping or pytree
            loads the tensors it names.
        mesh, rules: an ordered list of ``(regex, PartitionSpec)``; the first pattern found in a name
            (``re.search``) places it on ``mesh``; unmatched tensors are replicated.
        nested: return a nested dict split on "." instead of a flat one.
        names: load only these tensors (only their bytes are read).
        dtype: convert floating tensors to this dtype ("BF16", ``jnp.bfloat16``...) on the devices.
        strategy: "per_device" (read each host's shards only), "scatter" (read whole tensors once,
            distribute with a jitted identity), or "auto" (per_device; see docs/jax.md).
        metrics: a :class:`JaxLoadMetrics` to fill in.
        threads, direct_io, progress: as for :func:`fastsafetensors.load`.

    Every check (names, dtypes, shapes against shardings) happens before any byte is read.
    """
    metrics = metrics if metrics is not None else JaxLoadMetrics()
    metrics.process_index = jax.process_index()
    with metrics.phase("headers"):
        files = open_checkpoint(paths)
    placer = _Placer(sharding, mesh, rules)
    targets = _targets(files, placer, names, dtype)
    for t in targets:  # every shape checked against its sharding before any byte is read
        _shard_boxes(t, files[t.file])
    per_device, scatter = _split(strategy, targets)
    metrics.strategy = strategy
    metrics.tensors_per_strategy = {"per_device": len(per_device), "scatter": len(scatter)}
    read_options = {"threads": threads, "progress": progress,
                    "direct_io": _direct_io_default() if direct_io is None else direct_io}
    out: Dict[str, jax.Array] = {}
    if per_device:
        out.update(_load_per_device(files, per_device, metrics, read_options))
    if scatter:
        out.update(_load_scatter(files, scatter, metrics, read_options))
    metrics.files = len(metrics.bytes_per_file)  # each read call counted its files again
    out = {t.name: out[t.name] for t in targets}
    with metrics.phase("convert"):
        out = _convert(out, targets)
    metrics.tensors += len(out)
    logger.debug("jax load (%s, process %d): %s; bytes per device %s", metrics.strategy, metrics.process_index,
                 metrics.summary(), metrics.bytes_per_device)
    return nest(out) if nested else out
