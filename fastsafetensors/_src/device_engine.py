"""Read plan to GPU memory: destinations from the framework's own allocator, filled by the
engine's DeviceReader (pinned staging lanes + page-cache DMA lanes, or cuFile).

Outputs are allocated by the framework (torch's caching allocator, CuPy's pool, one JAX array
per load that every file's output views) or, without one, by the engine (DLPack capsules of
``_cpp.DeviceBuffer``), so every tensor is zero-copy and keeps its memory alive. The reader
synchronizes before returning.
"""

from __future__ import annotations

import atexit
import glob
import logging
import os
import sys
import threading
import warnings
from typing import Any, Dict, List, Optional

from .. import _cpp, settings
from .engine import ReaderCache, check_threads, default_threads
from ..errors import GdsError, InvalidArgumentError
from ..frameworks import Framework
from ..metrics import LoadMetrics
from .plan import LoadPlan
from ..st_types import Device

__all__ = ["cuda_device", "get_device_reader", "gds_mode", "numa_enabled", "read_into_device",
           "release_device_readers"]

logger = logging.getLogger("fastsafetensors")

SYSFS_ROOT = "/sys"  # where the GPU's NUMA node is looked up (tests pass sysfs_root= a fake tree)

_lock = threading.Lock()
_devices: Dict[int, "_cpp.Device"] = {}
_readers = ReaderCache(2)  # by (device, threads, staging, lanes, numa, sysfs root)
_search_dirs_added = False


def _reset_lock() -> None:
    global _lock
    _lock = threading.Lock()


# A child forked while another thread held the lock would inherit it held forever.
os.register_at_fork(after_in_child=_reset_lock)


def _add_nvidia_lib_dirs() -> None:
    """Lets the engine find libcudart/libcufile in the `nvidia` pip packages (torch, JAX and
    CuPy wheels depend on them) when no framework has loaded them yet."""
    global _search_dirs_added
    if _search_dirs_added:
        return
    dirs: List[str] = []
    for entry in sys.path:
        for pattern in ("nvidia/*/lib", "nvidia/cu*/lib"):
            for d in sorted(glob.glob(os.path.join(entry or ".", pattern))):
                if os.path.isdir(d) and d not in dirs:
                    dirs.append(d)
    _cpp.add_cuda_search_dirs(dirs)
    _search_dirs_added = True


def cuda_device(index: int = 0) -> "_cpp.Device":
    """The engine's handle on CUDA device ``index``; raises CudaError saying what is missing."""
    with _lock:
        dev = _devices.get(index)
        if dev is None:
            _add_nvidia_lib_dirs()
            dev = _devices[index] = _cpp.cuda_device(index)
            logger.debug("GPU path: %s", dev.name)
        return dev


def numa_enabled(asked: bool = True) -> bool:
    """Whether the reader's lanes go to the GPU's NUMA node: asked for (the 0.3 API's
    ``set_numa``) and not turned off with FASTSAFETENSORS_NUMA=0."""
    return asked and settings.get("FASTSAFETENSORS_NUMA")


def _log_placement(reader: "_cpp.DeviceReader") -> None:
    where = reader.placement
    if where["cpus"]:
        logger.debug("GPU reader for %s (PCI %s): lanes run on NUMA node %d, CPUs %s", reader.device.name,
                     where["bus_id"], where["node"], where["cpus"])
    else:
        logger.debug("GPU reader for %s: lanes left on the CPUs they had (%s)", reader.device.name, where["reason"])


def get_device_reader(device: "_cpp.Device", threads: Optional[int] = None,
                      staging_bytes: Optional[int] = None, map_lanes: Optional[int] = None,
                      numa: bool = True, *, sysfs_root: str = SYSFS_ROOT) -> "_cpp.DeviceReader":
    """The process-wide reader for these settings: its pinned slots are allocated once and reused.

    ``numa``: run its lanes on the CPUs of the GPU's NUMA node (see :func:`numa_enabled`), which
    ``sysfs_root`` tells."""
    threads = check_threads(threads) or default_threads()
    staging = staging_bytes or settings.get("FASTSAFETENSORS_STAGING_MB") << 20
    lanes = settings.get("FASTSAFETENSORS_MAP_LANES") if map_lanes is None else map_lanes
    key = (device, threads, staging, lanes, numa_enabled(numa), sysfs_root)

    def make() -> "_cpp.DeviceReader":
        reader = _cpp.DeviceReader(device, threads, staging, lanes, numa=key[4], sysfs_root=key[5])
        _log_placement(reader)
        return reader

    return _readers.get(key, make)


def release_device_readers() -> None:
    """Frees the pinned staging memory of every cached reader (the next load pins it again)."""
    _readers.clear()


# Free the staging memory while the CUDA runtime is still alive (its own teardown runs later).
atexit.register(release_device_readers)


def gds_mode(nogds: bool) -> str:
    """"off", "auto" (cuFile for files outside the page cache) or "direct" (cuFile for all).

    FASTSAFETENSORS_GDS=auto|direct|buffered|off forces a mode. Without libcufile, GDS falls back to
    the staging path with a warning; a cuFile that loads but fails to start raises GdsError.
    """
    forced = settings.get("FASTSAFETENSORS_GDS")
    if forced in ("buffered", "off") or (nogds and forced is None):
        return "off"
    mode = forced if forced in ("auto", "direct") else "auto"
    with _lock:
        _add_nvidia_lib_dirs()
    status = _cpp.gds_status()
    if status["available"]:
        if status["compat_mode"]:
            logger.info("gds: cuFile runs in compatibility mode (no nvidia-fs driver): reads go through host memory")
        return mode
    if status["loaded"]:
        raise GdsError(f"{status['error']}")
    warnings.warn(f"fastsafetensors: GPU Direct Storage unavailable ({status['error']}); reading without it",
                  RuntimeWarning, stacklevel=3)
    return "off"


def _destinations(plan: LoadPlan, framework: Optional[Framework], device: Device, dev: "_cpp.Device") -> List[Any]:
    if framework is None:
        return [_cpp.DeviceBuffer.allocate(dev, n) for n in plan.buffer_sizes]
    outs = framework.device_outputs(plan.buffer_sizes, device, dev)
    framework.device_ready(outs)
    return outs


def read_into_device(plan: LoadPlan, framework: Optional[Framework], device: Device, *,
                     threads: Optional[int] = None, staging_bytes: Optional[int] = None, gds: str = "off",
                     use_mapping: Optional[bool] = None, metrics: Optional[LoadMetrics] = None,
                     engine_device: Optional["_cpp.Device"] = None, numa: bool = True,
                     sysfs_root: str = SYSFS_ROOT) -> List[Any]:
    """Allocates the outputs on ``device``, one per planned buffer, and reads every planned byte into
    them. Returns the outputs, which ``framework.from_buffer`` turns into tensors at the plan's
    offsets; ``framework=None`` gives engine buffers.
    ``engine_device`` replaces the CUDA device (tests pass the engine's ``HostDevice`` test double); ``numa=False``
    leaves the reader's threads on the CPUs they have (the 0.3 API's ``set_numa=False``); ``sysfs_root``
    is where the GPU's NUMA node is looked up.
    """
    if framework is not None and not framework.gpu_capable:
        raise InvalidArgumentError(f"{framework.name} arrays live on the host: load to {device} with torch, jax or cupy")
    metrics = metrics if metrics is not None else LoadMetrics()
    dev = engine_device if engine_device is not None else cuda_device(device.index or 0)
    reader = get_device_reader(dev, threads, staging_bytes, numa=numa, sysfs_root=sysfs_root)
    with metrics.phase("allocate"):
        outs = _destinations(plan, framework, device, dev)
        ptrs = [framework.device_ptr(o) if framework is not None else o.data_ptr for o in outs]
    live = [p for p, n in zip(ptrs, plan.buffer_sizes) if n]
    if len(set(live)) != len(live):  # two outputs sharing memory would get each other's bytes
        raise RuntimeError(f"{framework.name if framework else 'engine'} allocated overlapping outputs")
    # FASTSAFETENSORS_MAPPING: 0 (default) staging only, 1 staging and page-cache DMA together,
    # "only" page-cache DMA only. On an H200 (docs/benchmarks.md) staging alone moved 8.2 GB at
    # 43-50 GB/s, both together 22-24 GB/s and DMA alone 13: registering pages costs more than it saves.
    mapping = settings.get("FASTSAFETENSORS_MAPPING")
    if use_mapping is None:
        use_mapping = mapping != "0"
    with metrics.phase("read"):
        stats = reader.read(plan.sources(), plan.ranges, ptrs, list(plan.buffer_sizes), use_mapping=use_mapping,
                            stage_cached=mapping != "only", gds=gds)
    metrics.count_files([f.path for f in plan.files], _cpp.bytes_per_file(plan.ranges, len(plan.files)))
    for path in ("staged", "mapped", "gds"):
        metrics.bytes_per_path[path] = metrics.bytes_per_path.get(path, 0) + stats[f"{path}_bytes"]
    logger.debug("GPU read: %s", stats)
    return outs
