"""JAX first: load a checkpoint straight into sharded ``jax.Array`` s.

``load`` places every tensor by a sharding (one for all, regex rules over a mesh, or a pytree of
shardings or ``jax.ShapeDtypeStruct`` whose dotted paths are tensor names) and reads, on each host, only the bytes of the
shards its addressable devices hold. See docs/jax.md.

Two strategies:

* ``per_device``: each distinct shard index is planned with ``_cpp.plan_boxes`` and read once per
  host into its own aligned slot of a host buffer; devices with the same index (replicas) share
  that slot. Each slot is handed to its devices with ``jax.device_put`` (zero-copy on the CPU)
  and the global array is assembled with ``jax.make_array_from_single_device_arrays``.
* ``scatter``: each tensor is read whole once, put on the default device, and a jitted identity
  with ``out_shardings`` distributes it (one program per sharding and shape, cached by jit).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Mapping, Optional, Union

import jax

from fastsafetensors._src.jax import placement, strategies, transform_reads
from fastsafetensors._src.jax.placement import Placement, Rules
from fastsafetensors._src.jax.strategies import STRATEGIES
from fastsafetensors._src.jax.transforms import (Transforms, astype, concat, rename, reshape, slice_, src, stack,
                                             transpose)
from fastsafetensors._src.api import _direct_io_default
from fastsafetensors._src.engine import check_flag, check_threads
from fastsafetensors._src.files import PathLike, open_checkpoint
from fastsafetensors.metrics import LoadMetrics
from fastsafetensors.st_types import is_auto
from .errors import InvalidArgumentError

__all__ = ["load", "nest", "JaxLoadMetrics", "STRATEGIES", "src", "rename", "transpose", "reshape", "concat",
           "stack", "slice_", "astype"]

logger = logging.getLogger("fastsafetensors")


@dataclass
class JaxLoadMetrics(LoadMetrics):
    """:class:`LoadMetrics` of a JAX load.

    ``strategy`` is the one asked for, ``tensors_per_strategy`` how many tensors each took.
    ``bytes_read`` and ``bytes_per_file`` count what this process read from disk;
    ``bytes_per_device`` the shard bytes delivered to each addressable device (a replicated
    shard counts for each device that holds it, although it was read once).
    ``seconds`` has the phases headers, plan, allocate, read, transfer, assemble, convert.
    """

    strategy: str = ""
    tensors_per_strategy: Dict[str, int] = field(default_factory=dict)
    process_index: int = 0
    bytes_per_device: Dict[str, int] = field(default_factory=dict)

    # Bytes read from disk per process: a load sets this process's entry (its bytes_read); a caller
    # that gathers other processes' metrics adds theirs, and the sum is the checkpoint's reads.
    bytes_per_process: Dict[int, int] = field(default_factory=dict)

    def count_load(self) -> None:
        """After a load's reads: this process's bytes."""
        self.bytes_per_process[self.process_index] = self.bytes_read

    def count_device(self, device: "jax.Device", nbytes: int) -> None:
        """Adds ``nbytes`` of shards delivered to ``device``."""
        self.bytes_per_device[str(device)] = self.bytes_per_device.get(str(device), 0) + nbytes


def nest(flat: Mapping[str, Any]) -> Dict[str, Any]:
    """``{"a.b.0.c": x}`` -> ``{"a": {"b": {"0": {"c": x}}}}``."""
    root: Dict[str, Any] = {}
    for name, value in flat.items():
        node = root
        *parents, leaf = name.split(".")
        for i, part in enumerate(parents):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise InvalidArgumentError(f"tensor `{name}`: `{'.'.join(parents[:i + 1])}` is also a tensor, cannot nest")
        if leaf in node:
            raise InvalidArgumentError(f"tensor `{name}` collides with tensors below it, cannot nest")
        node[leaf] = value
    return root


def load(paths: Union[PathLike, Iterable[PathLike]], sharding: Placement = None, *,
         mesh: Optional["jax.sharding.Mesh"] = None, rules: Optional[Rules] = None, nested: bool = False,
         names: Union[str, Iterable[str], None] = None, dtype: Any = None, strategy: str = "auto",
         metrics: Optional[JaxLoadMetrics] = None, threads: Optional[int] = None,
         direct_io: Optional[bool] = None, progress: Optional[bool] = None,
         transforms: Optional[Transforms] = None,
         storage_options: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Loads a checkpoint into ``{name: jax.Array}``, each placed by its sharding.

    Args:
        paths: a ``.safetensors`` file, a list of them, a directory, or an ``*.index.json``; or the
            same as URLs (docs/remote.md): each process GETs only the byte ranges of its shards.
        sharding: where tensors go: None (the first local device, or replicated over ``mesh``),
            one ``Sharding`` or ``jax.Device`` for all, a mapping name -> ``Sharding``, or an abstract
            pytree of ``jax.ShapeDtypeStruct(shape, dtype, sharding=...)`` whose dotted paths are the
            tensor names (it also sets each leaf's dtype and checks its shape). A mapping or pytree
            loads the tensors it names.
        mesh, rules: an ordered list of ``(regex, PartitionSpec)``; the first pattern found in a name
            (``re.search``) places it on ``mesh``; unmatched tensors are replicated.
        nested: return a nested dict split on "." instead of a flat one.
        names: load only these tensors (only their bytes are read); a string is one name.
        dtype: convert floating tensors to this dtype ("BF16", ``jnp.bfloat16``...) on the devices.
        strategy: "per_device" (read each host's shards only), "scatter" (read whole tensors once,
            distribute with a jitted identity), or "auto" (per_device; see docs/jax.md).
        metrics: a :class:`JaxLoadMetrics` to fill in.
        threads, direct_io, progress, storage_options: as for :func:`fastsafetensors.load`.
        transforms: target leaves built from checkpoint tensors (``rename`` rules and/or a mapping
            leaf -> expression of ``src``, ``transpose``, ``reshape``, ``concat``, ``stack``,
            ``slice_``, ``astype``); the result's names are the leaves. Each host reads only the
            source bytes of its own shards and builds them with NumPy (docs/jax.md, Transforms).

    Every check (names, dtypes, shapes against shardings) happens before any byte is read.
    """
    metrics = JaxLoadMetrics.given(metrics)
    check_threads(threads)  # before any file is opened
    check_flag(nested, "nested")
    check_flag(direct_io, "direct_io", optional=True)
    check_flag(progress, "progress", optional=True)
    metrics.process_index = jax.process_index()
    with metrics.phase("headers"):
        files = open_checkpoint(paths, storage_options=storage_options, metrics=metrics)
    placer = placement.Placer(sharding, mesh, rules)
    read_options = {"threads": threads, "progress": progress,
                    "direct_io": _direct_io_default() if direct_io is None else direct_io}
    if transforms is not None:
        out = _load_transformed(files, transforms, placer, names, dtype, strategy, metrics, read_options)
        return nest(out) if nested else out
    targets = placement.targets(files, placer, names, dtype)
    # Every shape checked against its sharding before any byte is read; the boxes are the plan's.
    boxes_of = {t.name: placement.shard_boxes(t, files[t.file]) for t in targets}
    per_device, scatter = strategies.split(strategy, targets)
    metrics.strategy = strategy
    metrics.tensors_per_strategy = {"per_device": len(per_device), "scatter": len(scatter)}
    out = {}
    if per_device:
        out.update(strategies.load_per_device(files, per_device, boxes_of, metrics, read_options))
    if scatter:
        out.update(strategies.load_scatter(files, scatter, metrics, read_options))
    metrics.count_load()
    out = {t.name: out[t.name] for t in targets}
    with metrics.phase("convert"):
        out = strategies.convert(out, targets)
    metrics.tensors += len(out)
    logger.debug("jax load (%s, process %d): %s; bytes per device %s", metrics.strategy, metrics.process_index,
                 metrics.summary(), metrics.bytes_per_device)
    return nest(out) if nested else out


def _load_transformed(files, transforms, placer, names, dtype, strategy, metrics, read_options) -> Dict[str, Any]:
    """The load of :func:`load` with ``transforms``: every leaf planned and checked, then one read."""
    if names is not None:
        raise InvalidArgumentError("names= selects checkpoint tensors; with transforms=, the transforms (or the target "
                         "tree) say which leaves to load")
    if strategy not in ("auto", "per_device"):
        raise InvalidArgumentError(f"transforms= reads per device; strategy={strategy!r} does not apply")
    cast = None if is_auto(dtype) else placement.np_dtype(dtype)
    with metrics.phase("plan"):
        leaves = transform_reads.plan_leaves(files, transforms, placer, cast)
    metrics.strategy = "per_device"
    metrics.tensors_per_strategy = {"per_device": len(leaves), "scatter": 0}
    out = transform_reads.load(files, leaves, metrics, read_options)
    metrics.count_load()
    metrics.tensors += len(out)
    logger.debug("jax load with transforms (process %d): %s; bytes per device %s", metrics.process_index,
                 metrics.summary(), metrics.bytes_per_device)
    return out
