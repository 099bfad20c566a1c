"""The caller's placement -> one :class:`Target` per tensor, every check done before any I/O.

A placement is one ``Sharding`` or ``jax.Device`` for all tensors, a mapping name -> ``Sharding``,
``(regex, PartitionSpec)`` rules over a ``Mesh``, or an abstract pytree of ``jax.ShapeDtypeStruct``,
``Sharding`` or device leaves whose dotted paths are tensor names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec, Sharding, SingleDeviceSharding

from fastsafetensors import _cpp
from fastsafetensors._src.dtypes import NEEDS_X64, float_cast
from fastsafetensors.errors import ShardingMismatch, UnsupportedDtype
from fastsafetensors._src.files import SafeTensorsFile
from fastsafetensors._src.frameworks.numpy import NUMPY_DTYPES
from fastsafetensors._src.plan import locate_tensors, name_list
from fastsafetensors.st_types import is_auto
from ...errors import InvalidArgumentError, ArgumentTypeError


Placement = Union[Sharding, "jax.Device", Mapping[str, Any], Any]
Rules = Sequence[Tuple[str, Any]]
BoxKey = Tuple[Tuple[int, int], ...]  # (start, stop) per dimension


@dataclass
class Target:
    """One tensor to load: where it is, where it goes, what it becomes."""

    name: str
    file: int
    index: int  # in its file's header
    info: "_cpp.TensorInfo"
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
    raise ArgumentTypeError(f"expected a jax.sharding.Sharding or a jax.Device, got {type(value).__name__}")


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
            raise ArgumentTypeError(f"{_path_name(path)}: a placement tree holds jax.ShapeDtypeStruct, Sharding or "
                            f"Device leaves, not {type(leaf).__name__}")
        out[_path_name(path)] = leaf
    return out


def rule_sharding(mesh: "jax.sharding.Mesh", rules: Rules) -> Callable[[str], Sharding]:
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


class Placer:
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
                raise InvalidArgumentError("pass either sharding= or rules= (with mesh=), not both")
            if mesh is None:
                raise InvalidArgumentError("rules= needs mesh=")
            self._rule = rule_sharding(mesh, rules)
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
            raise InvalidArgumentError(f"tensor `{name}` was asked for but the sharding mapping gives it no placement") from None

    def declared_dtype(self, name: str) -> Optional[np.dtype]:
        return self._dtypes.get(name)

    def declared_shape(self, name: str) -> Optional[Tuple[int, ...]]:
        return self._shapes.get(name)


# ---------------------------------------------------------------- checks before any I/O


def np_dtype(dtype: Any) -> np.dtype:
    """A safetensors dtype name ("BF16") or anything numpy/JAX accept as a dtype."""
    if isinstance(dtype, str) and dtype.upper() in NUMPY_DTYPES:
        return np.dtype(NUMPY_DTYPES[dtype.upper()])
    return np.dtype(dtype)


def _check_dtype(t: Target, f: SafeTensorsFile) -> None:
    st = t.info.dtype
    if st not in NUMPY_DTYPES:
        raise UnsupportedDtype(f"{f.path}: tensor `{t.name}` has dtype {st}, which JAX has no type for",
                               filename=f.path, tensor=t.name)
    # JAX without x64 would narrow 64-bit values silently: refuse unless a conversion was asked for.
    if st in NEEDS_X64 and not jax.config.jax_enable_x64 and (t.dtype is None or t.dtype.itemsize == 8):
        raise UnsupportedDtype(
            f"{f.path}: tensor `{t.name}` is {st} but jax_enable_x64 is off, so JAX would narrow it; "
            "enable x64 (jax.config.update('jax_enable_x64', True)) or ask for a 32-bit dtype",
            filename=f.path, tensor=t.name)


def _mesh_axes(entry: Any) -> Tuple[str, ...]:
    if entry is None:
        return ()
    return tuple(entry) if isinstance(entry, (tuple, list)) else (entry,)


def _sharding_error(name: str, shape: Tuple[int, ...], s: Sharding, where: Optional[str],
                    exc: Optional[Exception]) -> ShardingMismatch:
    """Names the tensor, the dimension and the mesh axes of a sharding that does not fit it."""
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
    what = f"{where}: tensor" if where else "target leaf"
    return ShardingMismatch(f"{what} `{name}` of shape {shape} {msg}", filename=where, tensor=name)


def index_boxes(name: str, shape: Tuple[int, ...], sharding: Sharding,
                where: Optional[str]) -> Dict[BoxKey, List["jax.Device"]]:
    """Distinct index boxes of this host's devices for an array of ``shape``, each with the devices
    that hold it; a sharding that does not fit raises ShardingMismatch naming the file ``where``
    (None: a target leaf of transforms) and ``name``."""
    if isinstance(sharding, NamedSharding) and len(sharding.spec) > len(shape):
        raise _sharding_error(name, shape, sharding, where, None)  # JAX would fail with an IndexError deep inside
    try:
        index_map = sharding.addressable_devices_indices_map(shape)
    except ValueError as exc:  # JAX refuses this shape for this sharding: so do we, by name
        raise _sharding_error(name, shape, sharding, where, exc) from exc
    boxes: Dict[BoxKey, List[jax.Device]] = {}
    for device, index in index_map.items():
        key = tuple(sl.indices(n)[:2] for sl, n in zip(index, shape))
        boxes.setdefault(key, []).append(device)
    return boxes


def shard_boxes(t: Target, f: SafeTensorsFile) -> Dict[BoxKey, List["jax.Device"]]:
    """Distinct index boxes of this host's devices, each with the devices that hold it."""
    return index_boxes(t.name, t.shape, t.sharding, f.path)


def targets(files: List[SafeTensorsFile], placer: Placer, names: Union[str, Iterable[str], None],
            dtype: Any) -> List[Target]:
    wanted = name_list(names) if names is not None else placer.declared
    cast = None if is_auto(dtype) else np_dtype(dtype)
    out = []
    for name, (fi, k) in locate_tensors(files, wanted).items():
        info = files[fi].infos[k]
        declared = placer.declared_dtype(name)
        target = declared if declared is not None else float_cast(info.dtype, cast)
        t = Target(name, fi, k, info, placer.sharding(name), target)
        _check_dtype(t, files[fi])
        want_shape = placer.declared_shape(name)
        if want_shape is not None and want_shape != t.shape:
            raise ShardingMismatch(f"{files[fi].path}: tensor `{name}` has shape {t.shape}, the abstract tree "
                                   f"declares {want_shape}", filename=files[fi].path, tensor=name)
        out.append(t)
    return out
