"""Headers to a read plan: where every selected tensor's bytes land in which host buffer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union, overload

from .. import _cpp
from .dtypes import ELEMENT_BYTES
from ..errors import ArgumentTypeError, DuplicateTensorName, TensorInvalidInfo, TensorNotFound
from .files import SafeTensorsFile

__all__ = ["TensorLocation", "LoadPlan", "plan_load", "plan_mapped", "locate_tensors", "align_up"]


def align_up(n: int, to: int = _cpp.TENSOR_ALIGNMENT) -> int:
    """``n`` rounded up to a multiple of ``to`` (by default where the read plan starts each tensor in a buffer)."""
    return -(-n // to) * to


class TensorLocation(NamedTuple):
    """Where one tensor lives after the plan runs: buffer ``buffer`` at byte ``offset``.

    A tuple, not a frozen dataclass: a plan holds one per tensor, headers may list millions of
    them, and a frozen dataclass takes four times as long to build. ``dtype`` and ``shape`` are
    copied out of the C++ entry once (``of``), since a load reads them several times per tensor.
    """

    name: str
    file: int
    buffer: int
    offset: int
    info: "_cpp.TensorInfo"
    dtype: str
    shape: Tuple[int, ...]

    @classmethod
    def of(cls, info: "_cpp.TensorInfo", file: int, buffer: int, offset: int) -> "TensorLocation":
        return cls(info.name, file, buffer, offset, info, info.dtype, tuple(info.shape))


# DLPack carries dimensions as int64, NumPy arrays have at most 64 of them, and frameworks size
# arrays by the product of their non-zero dimensions: a valid header may describe an empty tensor
# (one zero dimension) whose other dimensions no framework can hold.
MAX_LOADABLE_RANK = 64
_MAX_EXTENT = 2 ** 63 - 1


def _check_loadable(f: SafeTensorsFile, loc: TensorLocation) -> None:
    shape = loc.shape
    extent = ELEMENT_BYTES[loc.dtype]
    for d in shape:
        extent *= d or 1
    if len(shape) > MAX_LOADABLE_RANK or extent > _MAX_EXTENT:
        raise TensorInvalidInfo(f"{f.path}: tensor `{loc.name}` has shape {list(shape)}, which no framework can "
                                f"hold (at most {MAX_LOADABLE_RANK} dimensions whose non-zero product fits in "
                                "2**63-1 bytes)", filename=f.path, tensor=loc.name)


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


def _selection(files: Sequence[SafeTensorsFile],
               names: Union[str, Iterable[str], None]) -> List[Tuple[int, SafeTensorsFile, List[int]]]:
    """Each file holding some of ``names`` (every tensor when None): (its index, it, the indexes
    in its header of those tensors). Refuses a name in no file or in two."""
    _check_unique(files)
    wanted = None if names is None else set(name_list(names))
    for name in wanted or ():
        _file_of(files, name)
    chosen = ((i, f, [k for k, t in enumerate(f.infos) if wanted is None or t.name in wanted])
              for i, f in enumerate(files))
    return [c for c in chosen if c[2]]


def plan_load(files: Sequence[SafeTensorsFile], names: Union[str, Iterable[str], None] = None) -> LoadPlan:
    """Plans reading ``names`` (every tensor when None; a string is one name) from ``files``, one buffer per file."""
    ranges = _cpp.RangeList()
    sizes: List[int] = []
    tensors: Dict[str, TensorLocation] = {}
    for i, f, index in _selection(files, names):
        buffer = len(sizes)
        fp = _cpp.plan_file(f.header, i, buffer, index)
        ranges.extend(fp.ranges)
        sizes.append(fp.dst_size)
        for k, offset in zip(index, fp.tensor_offsets):
            loc = TensorLocation.of(f.infos[k], i, buffer, offset)
            _check_loadable(f, loc)
            tensors[loc.name] = loc
    return LoadPlan(list(files), ranges, sizes, tensors)


def plan_mapped(files: Sequence[SafeTensorsFile], names: Union[str, Iterable[str], None] = None) -> LoadPlan:
    """The plan of a mapped load (``mmap=True``): the same tensors as :func:`plan_load`, checked
    the same way, but buffer ``i`` is file ``i`` itself and each tensor is at its offset in the
    file, so there is nothing to read (no ranges)."""
    tensors: Dict[str, TensorLocation] = {}
    for i, f, index in _selection(files, names):
        start = f.header.data_start
        for k in index:
            info = f.infos[k]
            loc = TensorLocation.of(info, i, i, start + info.begin)
            _check_loadable(f, loc)
            tensors[loc.name] = loc
    return LoadPlan(list(files), _cpp.RangeList(), [f.size for f in files], tensors)
