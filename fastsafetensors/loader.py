"""The fastsafetensors 0.3 API: SafeTensorsFileLoader, FilesBufferOnDevice and fastsafe_open.

Same calls and meanings as the original package, with its memory model made safe: tensors own
their memory, and ``close()`` only drops the loader's references (optional, idempotent).
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

from . import cpp
from .api import instantiate
from .device_engine import gds_mode, read_into_device
from .engine import read_into_host
from .errors import LoaderClosedError, TensorNotFound
from .files import PathLike, SafeTensorsFile, read_headers
from .frameworks import Framework, get_framework
from .metrics import LoadMetrics
from .plan import LoadPlan, plan_load
from .st_types import Device, DType

__all__ = ["SafeTensorsFileLoader", "FilesBufferOnDevice", "fastsafe_open"]

logger = logging.getLogger("fastsafetensors")


def _group_of(pg: Any):
    if pg is None:
        from .common import SingleGroup

        return SingleGroup()
    return pg


class FilesBufferOnDevice:
    """Tensors of the files a loader copied, instantiated on first use."""

    def __init__(self, plan: LoadPlan, buffers: List[Any], framework: Framework, device: Device,
                 pg: Any, dtype: Union[DType, str] = DType.AUTO, rank_of_file: Optional[Dict[str, int]] = None):
        self._plan: Optional[LoadPlan] = plan
        self._buffers: Optional[List["cpp.HostBuffer"]] = buffers
        self._framework = framework
        self._device = device
        self._dtype = dtype
        self.pg = pg
        self._cache: Dict[str, Any] = {}
        rank_of_file = rank_of_file or {}
        # name -> (rank that read it, index of its file in that rank's list), as in the 0.3 API.
        self.key_to_rank_lidx: Dict[str, Tuple[int, int]] = {
            name: (rank_of_file.get(plan.files[loc.file].path, 0), loc.file) for name, loc in plan.tensors.items()}

    def _live_plan(self) -> LoadPlan:
        if self._plan is None:
            raise LoaderClosedError("this FilesBufferOnDevice was closed; tensors taken before close() stay valid")
        return self._plan

    def _location(self, name: str):
        plan = self._live_plan()
        loc = plan.tensors.get(name)
        if loc is None:
            raise TensorNotFound(f"tensor `{name}` is not among the {len(plan.tensors)} loaded tensors", tensor=name)
        return loc

    def get_tensor(self, tensor_name: str, device: Any = None, dtype: Union[DType, str] = DType.AUTO) -> Any:
        """The whole tensor (zero-copy on the CPU)."""
        loc = self._location(tensor_name)
        key = tensor_name
        t = self._cache.get(key)
        if t is None:
            cast = self._dtype if dtype in (None, DType.AUTO, "auto") else dtype
            sub = LoadPlan(self._plan.files, self._plan.ranges, self._plan.buffer_sizes, {tensor_name: loc})
            t = instantiate(sub, self._buffers, self._framework, dtype=cast, device=self._device)[tensor_name]
            if dtype in (None, DType.AUTO, "auto"):
                self._cache[key] = t
        if device is not None:
            t = self._framework.to_device(t, Device.from_str(device))
        return t

    def get_sharded(self, tensor_name: str, dim: int, device: Any = None,
                    dtype: Union[DType, str] = DType.AUTO) -> Any:
        """Block ``rank`` of the tensor split along ``dim`` over the group (``dim=-1``: whole)."""
        t = self.get_tensor(tensor_name, device, dtype)
        world, rank = self.pg.size(), self.pg.rank()
        if dim == -1 or world == 1:
            return t
        size = t.shape[dim]
        block = -(-size // world)
        start = min(rank * block, size)
        index = [slice(None)] * len(t.shape)
        index[dim] = slice(start, min(start + block, size))
        return t[tuple(index)]

    def get_filename(self, tensor_name: str) -> str:
        loc = self._location(tensor_name)
        return self._plan.files[loc.file].path

    def get_shape(self, tensor_name: str) -> Tuple[int, ...]:
        return tuple(self._location(tensor_name).shape)

    def get_keys(self) -> List[str]:
        return list(self._live_plan().tensors)

    def close(self) -> None:
        """Drops this object's references; tensors already handed out stay valid."""
        self._plan = None
        self._buffers = None
        self._cache = {}

    def __enter__(self) -> "FilesBufferOnDevice":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SafeTensorsFileLoader:
    """Loads the files each rank is given into tensors (the 0.3 entry point).

    ``bbuf_size_kb`` and ``nogds`` matter for GPU loads; ``max_threads`` sets the reader threads.
    """

    def __init__(self, pg: Any = None, device: Union[str, Device] = "cpu", bbuf_size_kb: int = 16 * 1024,
                 max_threads: int = 16, nogds: bool = False, set_numa: bool = True, disable_cache: bool = True,
                 debug_log: bool = False, framework: Union[str, Framework] = "pytorch", **kwargs: Any):
        self.pg = _group_of(pg)
        self.device = Device.from_str(device)
        self.framework = get_framework(framework)
        self.bbuf_size_kb = bbuf_size_kb
        self.max_threads = max_threads
        self.nogds = nogds
        self.debug_log = debug_log
        self.metrics = LoadMetrics()
        self._files: Dict[int, List[SafeTensorsFile]] = {}
        self._closed = False
        if debug_log:
            logger.setLevel(logging.DEBUG)

    def _check_open(self) -> None:
        if self._closed:
            raise LoaderClosedError("this SafeTensorsFileLoader was closed")

    def add_filenames(self, filenames: Mapping[int, Iterable[PathLike]]) -> None:
        """Registers ``{rank: [files]}``; every header is read and validated here, on every rank."""
        self._check_open()
        for rank, paths in filenames.items():
            self._files.setdefault(int(rank), []).extend(read_headers(list(paths)))

    def _all_files(self) -> List[SafeTensorsFile]:
        return [f for rank in sorted(self._files) for f in self._files[rank]]

    def _find(self, name: str) -> "cpp.TensorInfo":
        for f in self._all_files():
            if name in f.tensors:
                return f.tensors[name]
        raise TensorNotFound(f"tensor `{name}` is in none of the added files", tensor=name)

    def get_keys(self) -> List[str]:
        self._check_open()
        return [name for f in self._all_files() for name in f.tensors]

    def get_shape(self, tensor_name: str) -> Tuple[int, ...]:
        self._check_open()
        return tuple(self._find(tensor_name).shape)

    def copy_files_to_device(self, dtype: Union[DType, str] = DType.AUTO, use_buf_register: bool = True,
                             max_copy_block_size: int = 16 * 1024 ** 3) -> FilesBufferOnDevice:
        """Reads this rank's files and returns their tensors."""
        self._check_open()
        files = self._files.get(self.pg.rank(), [])
        plan = plan_load(files)
        if self.device.is_cpu:
            buffers = read_into_host(plan, threads=self.max_threads, metrics=self.metrics,
                                     chunk_bytes=max(1 << 20, min(max_copy_block_size, 8 << 20)))
        else:
            # bbuf_size_kb bounds the pinned staging memory, as it did in the 0.3 package.
            plan, buffers = read_into_device(plan, self.framework, self.device, threads=self.max_threads,
                                             staging_bytes=self.bbuf_size_kb * 1024, metrics=self.metrics,
                                             gds=gds_mode(self.nogds))
        rank_of_file = {f.path: rank for rank, fs in self._files.items() for f in fs}
        return FilesBufferOnDevice(plan, buffers, self.framework, self.device, self.pg, dtype, rank_of_file)

    def reset(self) -> None:
        """Forgets the added files; the loader can be used again."""
        self._files = {}

    def close(self) -> None:
        """Releases the loader; optional and safe to call twice."""
        self._files = {}
        self._closed = True

    def __enter__(self) -> "SafeTensorsFileLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class fastsafe_open:  # noqa: N801 - the 0.3 API's name
    """Context manager over a list of files: ``keys()``/``get_keys()``, ``metadata()``, ``get_tensor()``."""

    def __init__(self, filenames: Union[PathLike, Iterable[PathLike]], framework: str = "pt", pg: Any = None,
                 device: str = "cpu", nogds: bool = False, debug_log: bool = False,
                 max_copy_block_size: int = 16 * 1024 ** 3):
        paths = [filenames] if isinstance(filenames, (str, bytes)) or hasattr(filenames, "__fspath__") else list(filenames)
        self._loader = SafeTensorsFileLoader(pg, device, nogds=nogds, debug_log=debug_log, framework=framework)
        self._loader.add_filenames({self._loader.pg.rank(): paths})
        self._max_copy_block_size = max_copy_block_size
        self._buffer: Optional[FilesBufferOnDevice] = None

    def _fb(self) -> FilesBufferOnDevice:
        if self._buffer is None:
            self._buffer = self._loader.copy_files_to_device(max_copy_block_size=self._max_copy_block_size)
        return self._buffer

    def keys(self) -> List[str]:
        return self._loader.get_keys()

    get_keys = keys

    def metadata(self) -> Dict[str, str]:
        merged: Dict[str, str] = {}
        for f in self._loader._all_files():
            merged.update(f.metadata or {})
        return merged

    def get_tensor(self, name: str) -> Any:
        return self._fb().get_tensor(name)

    def close(self) -> None:
        if self._buffer is not None:
            self._buffer.close()
        self._loader.close()

    def __enter__(self) -> "fastsafe_open":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
