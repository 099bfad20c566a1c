"""Headers to a read plan: where every selected tensor's bytes land in which host buffer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from . import cpp
from .errors import DuplicateTensorName, TensorNotFound
from .files import SafeTensorsFile

__all__ = ["TensorLocation", "LoadPlan", "plan_load", "locate_tensors"]


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


@dataclass
class LoadPlan:
    files: List[SafeTensorsFile]
    ranges: "cpp.RangeList"
    buffer_sizes: List[int]
    tensors: Dict[str, TensorLocation]

    @property
    def total_bytes(self) -> int:
        return sum(cpp.bytes_per_file(self.ranges).values())

    def sources(self) -> List["cpp.ReadSource"]:
        return [cpp.ReadSource(f.path, f.size) for f in self.files]


def locate_tensors(files: Sequence[SafeTensorsFile], names: Optional[Iterable[str]] = None) -> Dict[str, Tuple[int, int]]:
    """Where each of ``names`` (every tensor when None) is: (file index, index in its header).

    A name found in two files is an error: silently keeping one would hide a broken checkpoint.
    """
    where: Dict[str, Tuple[int, int]] = {}
    for i, f in enumerate(files):
        for k, info in enumerate(f.infos):
            if info.name in where:
                first = files[where[info.name][0]].path
                raise DuplicateTensorName(f"tensor `{info.name}` is in both {first} and {f.path}",
                                          filename=f.path, tensor=info.name)
            where[info.name] = (i, k)
    if names is None:
        return where
    out: Dict[str, Tuple[int, int]] = {}
    for name in names:
        if name not in where:
            raise TensorNotFound(f"tensor `{name}` is in none of the {len(files)} file(s): "
                                 + ", ".join(f.path for f in files), tensor=name)
        out[name] = where[name]
    return out


def plan_load(files: Sequence[SafeTensorsFile], names: Optional[Iterable[str]] = None) -> LoadPlan:
    """Plans reading ``names`` (every tensor when None) from ``files``, one buffer per file."""
    where = locate_tensors(files, names)
    wanted = None if names is None else set(where)
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
            tensors[info.name] = TensorLocation(info.name, i, buffer, offset, info)
    return LoadPlan(list(files), ranges, sizes, tensors)
