"""Files to headers: finding a checkpoint's files and reading their validated headers."""

from __future__ import annotations

import errno
import json
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union, cast

from .. import _cpp
from .remote.urls import is_url
from ..errors import InvalidArgumentError, ArgumentTypeError
from ..errors import (IndexMismatch, IndexPathError, MissingFileError, NotRegularFileError,
                     TensorNotFound)

__all__ = ["SafeTensorsFile", "read_file_header", "read_headers", "resolve_checkpoint", "open_checkpoint", "PathLike"]

if TYPE_CHECKING:
    from ..metrics import LoadMetrics
    from .remote.objects import RemoteObject

PathLike = Union[str, os.PathLike]
INDEX_SUFFIX = ".index.json"


@dataclass
class SafeTensorsFile:
    """One file's validated header: its tensors by name, in header order."""

    path: str
    header: "_cpp.Header"
    infos: List["_cpp.TensorInfo"] = field(repr=False)  # header order
    tensors: Dict[str, "_cpp.TensorInfo"] = field(repr=False)
    # An object in a store (``path`` is then its URL): where later ranged GETs go, pinned to its ETag.
    remote: Optional["RemoteObject"] = field(default=None, repr=False)

    @property
    def metadata(self) -> Optional[Dict[str, str]]:
        # The binding is typed as object; it builds None or a dict of str to str (Header.metadata in
        # csrc/python/bindings.cpp): the header parser reads each metadata value as a JSON string.
        return cast(Optional[Dict[str, str]], self.header.metadata)

    @property
    def size(self) -> int:
        return self.header.file_size

    @property
    def data_bytes(self) -> int:
        return self.header.file_size - self.header.data_start


def read_file_header(path: PathLike) -> SafeTensorsFile:
    """Reads and validates one file's header; its errors carry the file name (set by the engine)."""
    path = os.fspath(path)
    header = _cpp.read_header(path)
    infos = list(header.tensors)  # views of the C++ entries, which the header keeps alive
    return SafeTensorsFile(path, header, infos, {t.name: t for t in infos})


# Up to this many headers are read one after another: from the page cache each takes ~50 us, and
# starting a thread pool ~1 ms (half of a 1 GB mmap=True load of two files went there).
_SERIAL_HEADERS = 4


def read_headers(paths: Sequence[PathLike]) -> List[SafeTensorsFile]:
    """Reads many headers at once (the engine releases the GIL while it reads)."""
    if len(paths) <= _SERIAL_HEADERS:
        return [read_file_header(p) for p in paths]
    pool = ThreadPoolExecutor(max_workers=min(8, len(paths)))
    try:
        return list(pool.map(read_file_header, paths))
    finally:  # the first bad file ends the call: headers not yet started are not read
        pool.shutdown(cancel_futures=True)


def names_urls(path_or_paths: Any) -> bool:
    """Whether a checkpoint argument names URLs: a URL, or a list holding one (a list may not mix
    URLs and local paths; remote.objects refuses that)."""
    if isinstance(path_or_paths, (str, os.PathLike)):
        return is_url(path_or_paths)
    return isinstance(path_or_paths, (list, tuple)) and any(is_url(p) for p in path_or_paths)


def _index_entry_path(index_path: str, base: str, name: str, entry: object) -> str:
    """The file an index entry names, which must be a relative path inside the index's directory.

    The check is on the entry as written (after resolving ``..``), not on where symlinks lead:
    the index is text that travels with a download, a symlink is put there by whoever wrote the
    directory (a Hugging Face cache snapshot links every shard to its ``blobs/``).
    """
    if not isinstance(entry, str) or not entry:
        raise IndexPathError(f"{index_path}: weight_map[`{name}`] is {type(entry).__name__} "
                             f"{entry!r:.40}, not a file name", filename=index_path, tensor=name)
    path = os.path.normpath(os.path.join(base, entry))
    if os.path.isabs(entry) or os.path.commonpath([base, path]) != base or path == base:
        raise IndexPathError(f"{index_path}: weight_map[`{name}`] names {entry!r}, which is not inside "
                             f"the index's directory {base}", filename=index_path, tensor=name)
    return path


_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _open_regular(path: str):
    """Opens a text file as the engine opens checkpoint files: without blocking, and only if it is a
    regular file (open() of a FIFO named like an index would wait for a writer forever)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _KINDS if test(mode)), "not a plain file")
            raise NotRegularFileError(f"{path}: not a regular file ({kind})", filename=path)
        os.set_blocking(fd, True)
        return os.fdopen(fd, encoding="utf-8")
    except BaseException:
        os.close(fd)
        raise


def _unique_keys(pairs: List[Tuple[str, object]]) -> Dict[str, object]:
    """A JSON object whose keys are unique: with a key twice, ``json`` keeps the last value, so an
    index naming a tensor twice would load from one shard and never look at the other."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise InvalidArgumentError(f"key {key!r:.80} appears twice in one object")
            seen.add(key)
    return out


def _read_index(index_path: str) -> Tuple[List[str], Dict[str, str]]:
    files, by_name = parse_index(index_path, lambda: _open_regular(index_path),
                                 os.path.abspath(os.path.dirname(index_path)))
    for path in files:  # every shard is there before any header is read (an index may name millions)
        if not os.path.exists(path):
            base = os.path.dirname(os.path.abspath(index_path))
            raise MissingFileError(f"{index_path} names {os.path.relpath(path, base)!r}, which does not exist",
                                   filename=path, errno=errno.ENOENT)
    return files, by_name


def parse_index(index_path: str, open_text: Callable[[], IO[str]], base: str) -> Tuple[List[str], Dict[str, str]]:
    """An index's shards (sorted) and weight map, its entries resolved inside ``base`` (the index's
    directory: a local one, or an object prefix as ``/key/prefix``)."""
    try:
        with open_text() as f:
            index = json.load(f, object_pairs_hook=_unique_keys)
        weight_map = index["weight_map"]
        if not isinstance(weight_map, dict):
            raise ArgumentTypeError("weight_map is not an object")
        if not weight_map:  # the directory's files would be skipped, and the load return nothing
            raise InvalidArgumentError("weight_map names no tensors")
    except RecursionError:
        raise IndexMismatch(f"{index_path}: not a usable index file: JSON nested too deeply",
                            filename=index_path) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise IndexMismatch(f"{index_path}: not a usable index file: {exc}", filename=index_path) from exc
    resolved: Dict[str, str] = {}  # every tensor of a shard names it: each entry is checked once
    by_name = {}
    for name, entry in weight_map.items():
        path = resolved.get(entry) if isinstance(entry, str) else None
        if path is None:
            path = resolved[entry] = _index_entry_path(index_path, base, name, entry)  # raises unless a str
        by_name[name] = path
    return sorted(set(by_name.values())), by_name


def _check_checkpoint_type(path_or_paths: Any) -> None:
    if isinstance(path_or_paths, (bytes, bytearray)) or not isinstance(path_or_paths, (str, os.PathLike, Iterable)):
        raise ArgumentTypeError(f"a checkpoint is a path (str or os.PathLike) or a list of paths, "
                        f"not {type(path_or_paths).__name__}")


def resolve_checkpoint(path_or_paths: Union[PathLike, Iterable[PathLike]]) -> Tuple[List[str], Optional[Dict[str, str]]]:
    """Turns a file, a list of files, a directory or an ``*.index.json`` into a list of files.

    Returns the files and, for an index (given directly or found in a directory), its weight
    map (tensor name -> file), which :func:`check_index` compares with the headers.
    """
    _check_checkpoint_type(path_or_paths)
    if isinstance(path_or_paths, (str, os.PathLike)):
        path = os.fspath(path_or_paths)
        if os.path.isdir(path):
            indexes = sorted(f for f in os.listdir(path) if f.endswith(".safetensors" + INDEX_SUFFIX))
            if len(indexes) == 1:
                return _read_index(os.path.join(path, indexes[0]))
            files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".safetensors"))
            if not files:
                raise MissingFileError(f"{path}: no .safetensors files in this directory", filename=path,
                                       errno=errno.ENOENT)
            return files, None
        if path.endswith(INDEX_SUFFIX):
            return _read_index(path)
        return [path], None
    files = [os.fspath(p) for p in path_or_paths]
    if not files:
        raise InvalidArgumentError("no files given")
    return files, None


def _identity(path: str) -> str:
    """What makes two names of a shard the same shard: the real path of a file, a URL as it is."""
    return path if is_url(path) else os.path.realpath(path)


def check_index(files: Sequence[SafeTensorsFile], weight_map: Mapping[str, str]) -> None:
    """Every tensor the index names must be in the file it names, and no file may hold more."""
    by_path = {_identity(f.path): f for f in files}
    real = {path: _identity(path) for path in set(weight_map.values())}  # one per shard, not per tensor
    for name, path in weight_map.items():
        f = by_path.get(real[path])
        if f is None or name not in f.tensors:
            raise TensorNotFound(f"{path}: the index says this file holds tensor `{name}`, but it does not",
                                 filename=path, tensor=name)
    for f in files:
        extra = [n for n in f.tensors if n not in weight_map]
        if extra:
            raise IndexMismatch(f"{f.path}: holds tensor `{extra[0]}` that the index does not list",
                                filename=f.path, tensor=extra[0])


def open_checkpoint(path_or_paths: Union[PathLike, Iterable[PathLike]], *,
                    storage_options: Optional[Mapping[str, Any]] = None,
                    metrics: Optional["LoadMetrics"] = None) -> List[SafeTensorsFile]:
    """Resolves a checkpoint (see :func:`resolve_checkpoint`) and reads its headers, checked
    against its index when it has one. URLs (``s3://``, ...) go to :mod:`fastsafetensors._src.remote`,
    with ``storage_options`` (refused for local paths: nothing would use them)."""
    _check_checkpoint_type(path_or_paths)
    if not isinstance(path_or_paths, (str, os.PathLike)):
        path_or_paths = list(path_or_paths)  # looked at twice: for URLs, then for files
    if names_urls(path_or_paths):
        from .remote.objects import open_remote_checkpoint

        urls = cast(Union[str, List[str]], path_or_paths)  # names_urls: a URL or a list of them
        files, weight_map = open_remote_checkpoint(urls, storage_options, metrics)
        if weight_map is not None:
            check_index(files, weight_map)
        return files
    if storage_options is not None:
        raise InvalidArgumentError("storage_options= configures object stores; this checkpoint is local files")
    paths, weight_map = resolve_checkpoint(path_or_paths)
    files = read_headers(paths)
    if weight_map is not None:
        check_index(files, weight_map)
    return files
