"""Getting the host bytes onto the devices, and converting dtypes there.

* ``per_device``: shards bound for GPUs that are one run in the file are read straight into GPU
  memory (:mod:`.gpu_reads`); the others, the shards of :mod:`.shard_plan`, are read into host
  memory and handed to their devices with ``jax.device_put`` (zero-copy on the CPU). Each global
  array is assembled with ``jax.make_array_from_single_device_arrays``.
* ``scatter``: each tensor is read whole once, put on the default device, and a jitted identity
  with ``out_shardings`` distributes it (one program per sharding and shape, cached by jit).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable, Dict, List, Tuple

import jax
import numpy as np
from jax.sharding import Sharding

from fastsafetensors._src.jax import gpu_reads
from fastsafetensors._src.jax.placement import Target
from fastsafetensors._src.jax.shard_plan import box_bytes, box_shape, host_view, plan_shards
from fastsafetensors._src.engine import read_into_host
from fastsafetensors._src.plan import plan_load
from ...errors import InvalidArgumentError

STRATEGIES = ("auto", "per_device", "scatter")


def split(strategy: str, targets: List[Target]) -> Tuple[List[Target], List[Target]]:
    """(per_device targets, scatter targets). "auto" is per_device: it reads only this host's
    shards, holds host memory once (zero-copy on the CPU) and works across processes; scatter won
    no layout consistently in our measurements (docs/jax.md)."""
    if strategy not in STRATEGIES:
        raise InvalidArgumentError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    return ([], targets) if strategy == "scatter" else (targets, [])


# ---------------------------------------------------------------- per-device strategy


def load_per_device(files, targets, boxes_of, metrics, read_options) -> Dict[str, jax.Array]:
    """Shards that are one run each, bound for GPUs, go straight to GPU memory (gpu_reads); the
    rest are read into host memory and handed to their devices. ``boxes_of`` maps each name to
    its ``placement.shard_boxes``."""
    remote = any(f.remote is not None for f in files)  # URLs reach GPUs through host memory
    on_gpus = [] if remote else [t for t in targets if gpu_reads.takes(t, boxes_of[t.name])]
    out = gpu_reads.load_on_gpus(files, on_gpus, boxes_of, metrics, read_options["threads"]) if on_gpus else {}
    rest = [t for t in targets if t.name not in out]
    if rest:
        out.update(_load_through_host(files, rest, boxes_of, metrics, read_options))
    return out


def _load_through_host(files, targets, boxes_of, metrics, read_options) -> Dict[str, jax.Array]:
    with metrics.phase("plan"):
        sp = plan_shards(files, targets, boxes_of)
    buffers = read_into_host(sp.plan, metrics=metrics, **read_options)
    with metrics.phase("transfer"):
        views, devices, owners = [], [], []
        for s in sp.slots:
            view = host_view(buffers, s.buffer, s.offset, s.target, box_shape(s.box))
            nbytes = box_bytes(s.box, s.target.info.dtype)
            for d in s.devices:
                views.append(view)
                devices.append(d)
                owners.append(s.target.name)
                metrics.count_device(d, nbytes)
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


def load_scatter(files, targets, metrics, read_options) -> Dict[str, jax.Array]:
    for t in targets:
        if not t.sharding.is_fully_addressable:
            raise InvalidArgumentError(f"tensor `{t.name}`: strategy='scatter' needs devices of this process only; "
                             "use 'per_device' for shardings that span processes")
    with metrics.phase("plan"):
        plan = plan_load(files, [t.name for t in targets])
    buffers = read_into_host(plan, metrics=metrics, **read_options)
    out = {}
    with metrics.phase("transfer"):
        for t in targets:
            loc = plan.tensors[t.name]
            host = jax.device_put(host_view(buffers, loc.buffer, loc.offset, t, t.shape))  # uncommitted
            out[t.name] = _identity_to(t.sharding)(host)
            for d in t.sharding.addressable_devices:
                size = box_bytes(tuple((0, n) for n in t.sharding.shard_shape(t.shape)), t.info.dtype)
                metrics.count_device(d, size)
        jax.block_until_ready(out)
    return out


# ---------------------------------------------------------------- dtype conversion


@lru_cache(maxsize=None)
def _cast_to(dtype: np.dtype, sharding: Sharding) -> Callable[[jax.Array], jax.Array]:
    return jax.jit(lambda x: x.astype(dtype), out_shardings=sharding)


def convert(out: Dict[str, jax.Array], targets: List[Target]) -> Dict[str, jax.Array]:
    for t in targets:
        if t.dtype is not None and out[t.name].dtype != t.dtype:
            out[t.name] = _cast_to(t.dtype, t.sharding)(out[t.name])  # on the devices, same sharding
    return jax.block_until_ready(out)
