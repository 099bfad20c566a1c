"""Types of the fastsafetensors 0.3 API that callers import from ``fastsafetensors.common``."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from . import _cpp
from ._src import device_engine
from .errors import CudaError
from ._src.files import PathLike, SafeTensorsFile, read_file_header
from .st_types import DType

__all__ = ["SingleGroup", "TensorFrame", "SafeTensorsMetadata", "get_device_numa_node"]

logger = logging.getLogger("fastsafetensors")


class SingleGroup:
    """The process group of a single process: rank 0 of 1."""

    def size(self) -> int:
        return 1

    def rank(self) -> int:
        return 0


@dataclass(frozen=True)
class TensorFrame:
    """A tensor's header entry: dtype, shape and byte range within the data section."""

    dtype: DType
    shape: Tuple[int, ...]
    data_offsets: Tuple[int, int]

    @property
    def nbytes(self) -> int:
        return self.data_offsets[1] - self.data_offsets[0]


@dataclass
class SafeTensorsMetadata:
    """A file's validated header, as the 0.3 API exposed it."""

    src: str
    header_length: int  # bytes before the data section: 8 + the JSON length, as in 0.3
    size_bytes: int
    tensors: Dict[str, TensorFrame]
    metadata: Optional[Dict[str, str]]

    @classmethod
    def from_file(cls, filename: PathLike, framework: object = None) -> "SafeTensorsMetadata":
        return cls.from_header(read_file_header(filename))

    @classmethod
    def from_header(cls, f: SafeTensorsFile) -> "SafeTensorsMetadata":
        tensors = {t.name: TensorFrame(DType(t.dtype), tuple(t.shape), (t.begin, t.end)) for t in f.infos}
        # 0.3 callers read header_length as the data section's start (8-byte prefix + JSON).
        return cls(f.path, f.header.data_start, f.size, tensors, f.metadata)


def get_device_numa_node(device: Optional[int], *, sysfs_root: str = device_engine.SYSFS_ROOT) -> Optional[int]:
    """The NUMA node of CUDA device ``device`` (an index), as the upstream package's helper of this
    name gives it; None for ``device=None``, without CUDA, or where sysfs (at ``sysfs_root``) does not say."""
    if device is None:
        return None
    try:
        bus = device_engine.cuda_device(device).pci_bus_id
    except CudaError as exc:
        logger.debug("get_device_numa_node(%s): no CUDA device: %s", device, exc)
        return None
    node = _cpp.pci_numa_node(bus, sysfs_root) if bus else -1
    return node if node >= 0 else None
