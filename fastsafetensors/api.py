"""One call to load a checkpoint: ``fastsafetensors.load``."""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, Iterable, List, Mapping, Optional, Union

from . import cpp, integrity
from .dtypes import FLOAT_DTYPES
from .device_engine import gds_mode, read_into_device
from .engine import check_threads, read_into_host
from .errors import UnsupportedDtype
from .files import PathLike, SafeTensorsFile, open_checkpoint
from .frameworks import Framework, get_framework
from .metrics import LoadMetrics
from .plan import LoadPlan, plan_load
from .st_types import Device, DType

__all__ = ["load", "load_files", "instantiate"]

logger = logging.getLogger("fastsafetensors")


def _direct_io_default() -> bool:
    return os.environ.get("FASTSAFETENSORS_ODIRECT", "0") not in ("", "0", "false", "False")


def instantiate(plan: LoadPlan, buffers: List[Any], framework: Framework, *,
                dtype: Union[DType, str, None] = None, raw: bool = False,
                device: Union[str, Device] = "cpu") -> Dict[str, Any]:
    """Framework arrays for every planned tensor, viewing the buffers without copying.

    ``dtype`` (other than AUTO) converts floating tensors (on the device where they are);
    ``device`` moves host-loaded tensors off the host (GPU-loaded ones are there already).
    """
    target = Device.from_str(device)
    cast = None if dtype in (None, DType.AUTO, "auto") else DType(dtype).value
    out: Dict[str, Any] = {}
    for name, loc in plan.tensors.items():
        try:
            t = framework.from_buffer(buffers[loc.buffer], loc.offset, loc.dtype, tuple(loc.shape), raw)
            if cast is not None and not raw and loc.dtype in FLOAT_DTYPES and loc.dtype != cast:
                t = framework.convert(t, cast)
        except UnsupportedDtype as exc:  # backends know no file names: say which tensor failed
            path = plan.files[loc.file].path
            raise UnsupportedDtype(f"{path}: tensor `{name}`: {exc}", filename=path, tensor=name) from None
        out[name] = framework.to_device(t, target)
    return out


def load_files(files: List[SafeTensorsFile], framework: Union[str, Framework] = "numpy", *,
               names: Optional[Iterable[str]] = None, device: Union[str, Device] = "cpu",
               dtype: Union[DType, str, None] = None, raw: bool = False, threads: Optional[int] = None,
               direct_io: Optional[bool] = None, progress: Optional[bool] = None,
               metrics: Optional[LoadMetrics] = None, verify: bool = False,
               sha256: Optional[Mapping[PathLike, str]] = None) -> Dict[str, Any]:
    """Loads tensors of files whose headers were already read (see :func:`load`)."""
    metrics = metrics if metrics is not None else LoadMetrics()
    check_threads(threads)
    fw = get_framework(framework)
    with metrics.phase("plan"):
        plan = plan_load(files, names)
    target = Device.from_str(device)
    if target.is_cpu:
        expected = integrity.expected_digests([f.path for f in files], sha256) if verify or sha256 else None
        buffers = read_into_host(plan, threads=threads, progress=progress, metrics=metrics,
                                 direct_io=_direct_io_default() if direct_io is None else direct_io)
        if expected is not None:
            try:
                with metrics.phase("verify"):
                    integrity.check_loaded(plan, buffers, expected)
            except BaseException:
                buffers.clear()  # the traceback must not keep a failed file's bytes alive
                raise
    else:
        if verify or sha256:
            raise ValueError("verify=/sha256= check files while loading them to the CPU; load to the CPU, or "
                             "run `fastsafetensors verify --sha256` first")
        plan, buffers = read_into_device(plan, fw, target, raw=raw, threads=threads, metrics=metrics,
                                         gds=gds_mode(nogds=True))
    with metrics.phase("instantiate"):
        out = instantiate(plan, buffers, fw, dtype=dtype, raw=raw, device=device)
    metrics.tensors += len(out)
    logger.debug("load: %s", metrics.summary())
    return out


def load(path_or_paths: Union[PathLike, Iterable[PathLike]], framework: Union[str, Framework] = "numpy",
         device: Union[str, Device] = "cpu", *, names: Optional[Iterable[str]] = None,
         dtype: Union[DType, str, None] = None, raw: bool = False, threads: Optional[int] = None,
         direct_io: Optional[bool] = None, progress: Optional[bool] = None,
         metrics: Optional[LoadMetrics] = None, verify: bool = False,
         sha256: Optional[Mapping[PathLike, str]] = None) -> Dict[str, Any]:
    """Loads a checkpoint into a ``{name: array}`` dict.

    Args:
        path_or_paths: a ``.safetensors`` file, a list of them, a directory, or a
            ``model.safetensors.index.json`` (each file is checked to hold the tensors the index
            names).
        framework: "numpy"/"np", "torch"/"pt"/"pytorch", "jax" or "cupy".
        device: "cpu", "cuda" or "cuda:N" (read straight into GPU memory the framework
            allocates; FASTSAFETENSORS_GDS=auto|direct reads files outside the page cache with cuFile).
        names: load only these tensors (only their bytes are read).
        dtype: convert floating tensors to this safetensors dtype (e.g. "BF16").
        raw: return every tensor's bytes as uint8 (for dtypes a framework lacks).
        threads: reader threads (default: FASTSAFETENSORS_THREADS or 2 per core, 4 to 16).
        direct_io: read with O_DIRECT (default: FASTSAFETENSORS_ODIRECT, off).
        progress: show a progress bar (default: for loads of 1 GiB or more on a terminal).
        metrics: a :class:`LoadMetrics` to fill in with bytes and seconds per phase.
        verify: check each file's SHA-256 while loading it (see :mod:`fastsafetensors.integrity`);
            a mismatch raises :class:`~fastsafetensors.errors.IntegrityError` and returns nothing.
        sha256: expected digests, ``{path: hexdigest}`` (implies ``verify``); without it the digest
            comes from the Hugging Face cache layout, and a file with none known is an error.

    Tensors own their memory: they stay valid however long they are kept.

    Example::

        import fastsafetensors
        weights = fastsafetensors.load("model/", framework="torch")
    """
    metrics = metrics if metrics is not None else LoadMetrics()
    check_threads(threads)  # before any file is opened
    with metrics.phase("headers"):
        files = open_checkpoint(path_or_paths)
    return load_files(files, framework, names=names, device=device, dtype=dtype, raw=raw, threads=threads,
                      direct_io=direct_io, progress=progress, metrics=metrics, verify=verify, sha256=sha256)
