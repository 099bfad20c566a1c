"""Headers to a read plan: where every selected tensor's bytes land in which host buffer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence

from . import cpp
from .dtypes import BITS
from .errors import DuplicateTensorName, TensorInvalidInfo, TensorNotFound
from .files import SafeTensorsFile

__all__ = ["TensorLocation", "LoadPlan", "plan_load"]


@dataclass(frozen=True)
class TensorLocation:
    """Where one tensor lives after the plan runs: buffer ``buffer`` at byte ``offset``."""

    name: str
    file: int
    buffer: int
    offset: int
    info: "cpp.TensorInfo"

    @property
    def dtype(self) -> str:
        return self.info.dtype

    @property
    def shape(self):
        return self.info.shape


# DLPack carries dimensions as int64, NumPy arrays have at most 64 of them, and frameworks size
# arrays by the product of their non-zero dimensions: a valid header may describe an empty tensor
# (one zero dimension) whose other dimensions no framework can hold.
MAX_LOADABLE_RANK = 64
_MAX_EXTENT = 2 ** 63 - 1


def _check_loadable(f: SafeTensorsFile, info: "cpp.TensorInfo") -> None:
    shape = info.shape
    extent = max(1, BITS[info.dtype] // 8)
    for d in shape:
        extent *= d or 1
    if len(shape) > MAX_LOADABLE_RANK or extent > _MAX_EXTENT:
        raise TensorInvalidInfo(f"{f.path}: tensor `{info.name}` has shape {shape}, which no framework can hold "
                                f"(at most {MAX_LOADABLE_RANK} dimensions whose non-zero product fits in "
                                "2**63-1 bytes)", filename=f.path, tensor=info.name)


@dataclass
class LoadPlan:
    files: List[SafeTensorsFile]
    ranges: "cpp.RangeList"
    buffer_sizes: List[int]
    tensors: Dict[str, TensorLocation]

    @property
    def total_bytes(self) -> int:
        return sum(r.length for r in self.ranges)

    def sources(self) -> List["cpp.ReadSource"]:
        return [cpp.ReadSource(f.path, f.size) for f in self.files]


def plan_load(files: Sequence[SafeTensorsFile], names: Optional[Iterable[str]] = None) -> LoadPlan:
    """Plans reading ``names`` (every tensor when None) from ``files``, one buffer per file.

    A name found in two files is an error: silently keeping one would hide a broken checkpoint.
    """
    owner: Dict[str, int] = {}
    for i, f in enumerate(files):
        for name in f.tensors:
            if name in owner:
                raise DuplicateTensorName(
                    f"tensor `{name}` is in both {files[owner[name]].path} and {f.path}", filename=f.path, tensor=name)
            owner[name] = i
    wanted: Optional[set] = None
    if names is not None:
        wanted = set(names)
        for name in wanted:
            if name not in owner:
                raise TensorNotFound(f"tensor `{name}` is in none of the {len(files)} file(s): "
                                     + ", ".join(f.path for f in files), tensor=name)
    ranges = cpp.RangeList()
    sizes: List[int] = []
    tensors: Dict[str, TensorLocation] = {}
    for i, f in enumerate(files):
        index = [k for k, t in enumerate(f.infos) if wanted is None or t.name in wanted]
        if not index:
            continue
        buffer = len(sizes)
        fp = cpp.plan_file(f.header, i, buffer, index)
        ranges.extend(fp.ranges)
        sizes.append(fp.dst_size)
        for k, offset in zip(index, fp.tensor_offsets):
            info = f.infos[k]
            _check_loadable(f, info)
            tensors[info.name] = TensorLocation(info.name, i, buffer, offset, info)
    return LoadPlan(list(files), ranges, sizes, tensors)
