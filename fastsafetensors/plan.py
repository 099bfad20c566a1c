"""Headers to a read plan: where every selected tensor's bytes land in which host buffer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence

from . import cpp
from .errors import DuplicateTensorName, TensorNotFound
from .files import SafeTensorsFile

__all__ = ["TensorLocation", "LoadPlan", "plan_load", "per_tensor_plan"]


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
            tensors[info.name] = TensorLocation(info.name, i, buffer, offset, info)
    return LoadPlan(list(files), ranges, sizes, tensors)


def per_tensor_plan(plan: LoadPlan) -> LoadPlan:
    """The same tensors with one destination each, at offset 0 (for outputs a framework allocates
    one array at a time, as JAX does). Buffer k is the k-th tensor of ``plan.tensors``."""
    ranges = cpp.RangeList()
    sizes: List[int] = []
    tensors: Dict[str, TensorLocation] = {}
    for name, loc in plan.tensors.items():
        k = len(sizes)
        info = loc.info
        if info.nbytes:
            start = plan.files[loc.file].header.data_start + info.begin
            ranges.append(cpp.ReadRange(loc.file, k, start, info.nbytes, 0))
        sizes.append(info.nbytes)
        tensors[name] = TensorLocation(name, loc.file, k, 0, info)
    return LoadPlan(plan.files, ranges, sizes, tensors)
