"""Headers to a read plan: where every selected tensor's bytes land in which host buffer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union, overload

from .. import _cpp
from .dtypes import BITS
from ..errors import ArgumentTypeError, DuplicateTensorName, TensorInvalidInfo, TensorNotFound
from .files import SafeTensorsFile

__all__ = ["TensorLocation", "LoadPlan", "plan_load", "locate_tensors", "align_up"]


def align_up(n: int, to: int = _cpp.TENSOR_ALIGNMENT) -> int:
    """``n`` rounded up to a multiple of ``to`` (by default where the read plan starts each tensor in a buffer)."""
    return -(-n // to) * to


@dataclass(frozen=True)
class TensorLocation:
    """Where one tensor lives after the plan runs: buffer ``buffer`` at byte ``offset``."""

    # Slots: a plan holds one of these per tensor, and headers may list millions of tensors.
    __slots__ = ("name", "file", "buffer", "offset", "info")

    name: str
    file: int
    buffer: int
    offset: int
    info: "_cpp.TensorInfo"

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


def _check_loadable(f: SafeTensorsFile, info: "_cpp.TensorInfo") -> None:
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
    ranges: "_cpp.RangeList"
    buffer_sizes: List[int]
    tensors: Dict[str, TensorLocation]

    @property
    def total_bytes(self) -> int:
        return sum(_cpp.bytes_per_file(self.ranges, len(self.files)))

    def sources(self) -> List["_cpp.ReadSource"]:
        return [_cpp.ReadSource(f.path, f.header) for f in self.files]


def _check_unique(files: Sequence[SafeTensorsFile]) -> None:
    """A name found in two files is an error: silently keeping one would hide a broken checkpoint.
    (Within one file the parser already refuses duplicates.)"""
    if len(files) < 2:
        return
    owner: Dict[str, int] = {}
    for i, f in enumerate(files):
        for name in f.tensors:
            first = owner.setdefault(name, i)
            if first != i:
                raise DuplicateTensorName(f"tensor `{name}` is in both {files[first].path} and {f.path}",
                                          filename=f.path, tensor=name)


def _file_of(files: Sequence[SafeTensorsFile], name: str) -> int:
    for i, f in enumerate(files):
        if name in f.tensors:
            return i
    raise TensorNotFound(f"tensor `{name}` is in none of the {len(files)} file(s): "
                         + ", ".join(f.path for f in files), tensor=name)


@overload
def name_list(names: None) -> None: ...


@overload
def name_list(names: Union[str, Iterable[str]]) -> List[str]: ...


def name_list(names: Union[str, Iterable[str], None]) -> Optional[List[str]]:
    """``names`` as a list (None stays None); a string is one name, not a sequence of one-letter names."""
    if names is None:
        return None
    if isinstance(names, str):
        return [names]
    if isinstance(names, (bytes, bytearray)) or not isinstance(names, Iterable):
        raise ArgumentTypeError(f"names must be tensor names (a str or an iterable of str), not {type(names).__name__} "
                        f"({names!r:.40})")
    out = list(names)
    wrong = next((n for n in out if not isinstance(n, str)), None)
    if wrong is not None:  # b"ab" would be the names 97 and 98, a Path never equals a name
        raise ArgumentTypeError(f"names must be tensor names (str), not {type(wrong).__name__} ({wrong!r:.40})")
    return out


def locate_tensors(files: Sequence[SafeTensorsFile],
                   names: Union[str, Iterable[str], None] = None) -> Dict[str, Tuple[int, int]]:
    """Where each of ``names`` (every tensor when None) is: (file index, index in its header)."""
    _check_unique(files)
    if names is None:
        return {t.name: (i, k) for i, f in enumerate(files) for k, t in enumerate(f.infos)}
    wanted: Dict[int, set] = {}
    for name in name_list(names):
        wanted.setdefault(_file_of(files, name), set()).add(name)
    return {t.name: (i, k) for i, group in wanted.items() for k, t in enumerate(files[i].infos) if t.name in group}


def plan_load(files: Sequence[SafeTensorsFile], names: Union[str, Iterable[str], None] = None) -> LoadPlan:
    """Plans reading ``names`` (every tensor when None; a string is one name) from ``files``, one buffer per file."""
    _check_unique(files)
    wanted = None if names is None else set(name_list(names))
    for name in wanted or ():
        _file_of(files, name)
    ranges = _cpp.RangeList()
    sizes: List[int] = []
    tensors: Dict[str, TensorLocation] = {}
    for i, f in enumerate(files):
        index = [k for k, t in enumerate(f.infos) if wanted is None or t.name in wanted]
        if not index:
            continue
        buffer = len(sizes)
        fp = _cpp.plan_file(f.header, i, buffer, index)
        ranges.extend(fp.ranges)
        sizes.append(fp.dst_size)
        for k, offset in zip(index, fp.tensor_offsets):
            info = f.infos[k]
            _check_loadable(f, info)
            tensors[info.name] = TensorLocation(info.name, i, buffer, offset, info)
    return LoadPlan(list(files), ranges, sizes, tensors)

