"""One call to load a checkpoint: ``fastsafetensors.load``."""

from __future__ import annotations

import logging
from typing import Any, Dict, Iterable, List, Mapping, Optional, Union

from .. import integrity, settings
from . import mapping
from .dtypes import float_cast
from .device_engine import gds_mode, read_into_device
from .engine import check_flag, check_threads, read_into_host
from ..errors import InvalidArgumentError, UnsupportedDtype
from .files import PathLike, SafeTensorsFile, open_checkpoint
from ..frameworks import Framework, get_framework
from ..metrics import LoadMetrics
from .plan import LoadPlan, plan_load, plan_mapped
from ..st_types import Device, DType, to_dtype

__all__ = ["load", "load_files", "instantiate"]

logger = logging.getLogger("fastsafetensors")


def _direct_io_default() -> bool:
    return settings.get("FASTSAFETENSORS_ODIRECT")


def check_dtypes(plan: LoadPlan, framework: Framework, dtype: Any, raw: bool) -> None:
    """Refuses, before anything is read, a tensor (or a conversion) the framework has no type for."""
    if raw:
        return
    cast = _cast_of(dtype)
    if cast is not None:
        framework.check_dtype(cast, ())
    for name, loc in plan.tensors.items():
        try:
            framework.check_dtype(loc.dtype, loc.shape)
        except UnsupportedDtype as exc:
            raise _named(exc, plan, name) from None


def _named(exc: UnsupportedDtype, plan: LoadPlan, name: str) -> UnsupportedDtype:
    """Backends know no file names: the error says which tensor of which file it is about."""
    path = plan.files[plan.tensors[name].file].path
    return UnsupportedDtype(f"{path}: tensor `{name}`: {exc}", filename=path, tensor=name)


def _cast_of(dtype: Any) -> Optional[str]:
    cast = to_dtype(dtype)
    return None if cast is DType.AUTO else cast.value


def instantiate(plan: LoadPlan, buffers: List[Any], framework: Framework, *,
                dtype: Any = None, raw: bool = False,
                device: Union[str, Device] = "cpu") -> Dict[str, Any]:
    """Framework arrays for every planned tensor, viewing the buffers without copying.

    ``dtype`` (other than AUTO) converts floating tensors (on the device where they are);
    ``device`` moves host-loaded tensors off the host (GPU-loaded ones are there already).
    """
    target = Device.from_str(device)
    cast = _cast_of(dtype)
    out: Dict[str, Any] = {}
    prepared: List[Any] = [b if b is None else framework.prepare_buffer(b) for b in buffers]
    for name, loc in plan.tensors.items():
        t = framework.from_buffer(prepared[loc.buffer], loc.offset, loc.dtype, loc.shape, raw)
        to = None if raw else float_cast(loc.dtype, cast)
        if to is not None and to != loc.dtype:
            try:
                t = framework.convert(t, to)
            except UnsupportedDtype as exc:
                raise _named(exc, plan, name) from None
        out[name] = framework.to_device(t, target)
    return out


def check_options(threads: Any, raw: Any, direct_io: Any, progress: Any, verify: Any, mmap: Any) -> None:
    """Refuses, before any file is opened, an option of the wrong type (see check_flag)."""
    check_threads(threads)
    for name, value in (("raw", raw), ("verify", verify), ("mmap", mmap)):
        check_flag(value, name)
    for name, value in (("direct_io", direct_io), ("progress", progress)):
        check_flag(value, name, optional=True)


def load_files(files: List[SafeTensorsFile], framework: Union[str, Framework] = "numpy", *,
               names: Union[str, Iterable[str], None] = None, device: Union[str, Device] = "cpu",
               dtype: Any = None, raw: bool = False, threads: Optional[int] = None,
               direct_io: Optional[bool] = None, progress: Optional[bool] = None,
               metrics: Optional[LoadMetrics] = None, verify: bool = False,
               sha256: Optional[Mapping[PathLike, str]] = None, mmap: bool = False) -> Dict[str, Any]:
    """Loads tensors of files whose headers were already read (see :func:`load`)."""
    metrics = LoadMetrics.given(metrics)
    check_options(threads, raw, direct_io, progress, verify, mmap)
    fw = get_framework(framework)
    target = Device.from_str(device)
    remote = any(f.remote is not None for f in files)
    if remote and (mmap or verify or sha256 is not None):
        raise InvalidArgumentError(f"{files[0].path}: mmap=/verify=/sha256= work on local files; a URL is read with "
                         "ranged GETs: load it without them")
    if mmap:
        return _load_mapped(files, fw, target, names=names, dtype=dtype, raw=raw, threads=threads,
                            direct_io=direct_io, verify=verify or sha256 is not None, metrics=metrics)
    with metrics.phase("plan"):
        plan = plan_load(files, names)
        check_dtypes(plan, fw, dtype, raw)
    if target.is_cpu or remote:  # URLs reach a GPU through host memory (instantiate moves them)
        checking = verify or sha256 is not None
        expected = integrity.expected_digests([f.path for f in files], sha256) if checking else None
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
        if verify or sha256 is not None:
            raise InvalidArgumentError("verify=/sha256= check files while loading them to the CPU; load to the CPU, or "
                             "run `fastsafetensors verify --sha256` first")
        buffers = read_into_device(plan, fw, target, threads=threads, metrics=metrics, gds=gds_mode(nogds=True))
    with metrics.phase("instantiate"):
        out = instantiate(plan, buffers, fw, dtype=dtype, raw=raw, device=device)
    metrics.tensors += len(out)
    if logger.isEnabledFor(logging.DEBUG):  # a summary costs more than a mapped load's instantiate
        logger.debug("load: %s", metrics.summary())
    return out


def _load_mapped(files: List[SafeTensorsFile], fw: Framework, target: Device, *, names: Optional[Iterable[str]],
                 dtype: Any, raw: bool, threads: Optional[int], direct_io: Optional[bool],
                 verify: bool, metrics: LoadMetrics) -> Dict[str, Any]:
    """mmap=True: mapped views for aligned tensors, the rest read into host memory."""
    if not target.is_cpu or not fw.maps_files:
        raise InvalidArgumentError(f"mmap=True maps files for numpy and torch on the CPU, not {fw.name} on {target}: "
                         "load without mmap")
    if verify:
        raise InvalidArgumentError("verify=/sha256= check the bytes a load reads; mmap=True reads none: load without "
                         "mmap, or run `fastsafetensors verify --sha256` first")
    if direct_io:
        raise InvalidArgumentError("direct_io=True bypasses the page cache; mmap=True maps its pages: ask for one of them")
    with metrics.phase("plan"):
        planned = plan_mapped(files, names)
        check_dtypes(planned, fw, dtype, raw)
    with metrics.phase("map"):
        plan, mappings, misaligned = mapping.map_files(planned, metrics)
    out = {}
    if misaligned:
        out = load_files(files, fw, names=misaligned, dtype=dtype, raw=raw, threads=threads,
                         direct_io=direct_io, progress=False, metrics=metrics)
    with metrics.phase("instantiate"):
        mapped = instantiate(plan, mappings, fw, dtype=dtype, raw=raw, device=target)
    metrics.tensors += len(mapped)
    out.update(mapped)
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("load (mmap): %s", metrics.summary())
    return out


def load(path_or_paths: Union[PathLike, Iterable[PathLike]], framework: Union[str, Framework] = "numpy",
         device: Union[str, Device] = "cpu", *, names: Union[str, Iterable[str], None] = None,
         dtype: Any = None, raw: bool = False, threads: Optional[int] = None,
         direct_io: Optional[bool] = None, progress: Optional[bool] = None,
         metrics: Optional[LoadMetrics] = None, verify: bool = False,
         sha256: Optional[Mapping[PathLike, str]] = None, mmap: bool = False,
         storage_options: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Loads a checkpoint into a ``{name: array}`` dict.

    Args:
        path_or_paths: a ``.safetensors`` file, a list of them, a directory, or a
            ``model.safetensors.index.json`` (each file is checked to hold the tensors the index
            names). Or the same as URLs (``s3://``, ``gs://``, ``az://``, ``https://``; a prefix
            is a directory), read with concurrent ranged GETs (docs/remote.md).
        framework: "numpy"/"np", "torch"/"pt"/"pytorch", "jax" or "cupy".
        device: "cpu", "cuda" or "cuda:N" (read straight into GPU memory the framework
            allocates; FASTSAFETENSORS_GDS=auto|direct reads files outside the page cache with cuFile).
        names: load only these tensors (only their bytes are read); a string is one name.
        dtype: convert floating tensors to this safetensors dtype ("BF16", or a torch / NumPy dtype
            such as ``torch.bfloat16``; see ``st_types.to_dtype``).
        raw: return every tensor's bytes as uint8 (for dtypes a framework lacks).
        threads: reader threads (default: FASTSAFETENSORS_THREADS or 2 per core, 4 to 16).
        direct_io: read with O_DIRECT (default: FASTSAFETENSORS_ODIRECT, off).
        progress: show a progress bar (default: for loads of 1 GiB or more on a terminal).
        metrics: a :class:`LoadMetrics` to fill in with bytes and seconds per phase.
        verify: check each file's SHA-256 while loading it (see :mod:`fastsafetensors.integrity`);
            a mismatch raises :class:`~fastsafetensors.errors.IntegrityError` and returns nothing.
        sha256: expected digests, ``{path: hexdigest}`` (implies ``verify``); without it the digest
            comes from the Hugging Face cache layout, and a file with none known is an error.
        mmap: NumPy and torch on the CPU: tensors are copy-on-write views of the files mapped
            into memory (the page cache's pages, shared until written; writes never reach the
            files). Loads from the page cache cost almost nothing, but a file truncated or
            rewritten while its tensors live changes them or makes touching them fault (SIGBUS).
            Misaligned tensors are read as usual. Nothing is read up front, so no progress bar
            shows, and ``direct_io=True`` (no page cache) is refused. See :mod:`fastsafetensors._src.mapping`.
        storage_options: URLs only: the object store's configuration (endpoint, region, credentials,
            ``allow_http``, ...) on top of its standard environment variables; never logged.
            For URLs, ``threads`` is the number of ranged GETs in flight.

    Tensors own their memory: they stay valid however long they are kept.

    Example::

        import fastsafetensors
        weights = fastsafetensors.load("model/", framework="torch")
    """
    metrics = LoadMetrics.given(metrics)
    check_options(threads, raw, direct_io, progress, verify, mmap)  # before any file is opened
    with metrics.phase("headers"):
        files = open_checkpoint(path_or_paths, storage_options=storage_options, metrics=metrics)
    return load_files(files, framework, names=names, device=device, dtype=dtype, raw=raw, threads=threads,
                      direct_io=direct_io, progress=progress, metrics=metrics, verify=verify, sha256=sha256,
                      mmap=mmap)
