"""URLs to headers: an object's header from one speculative ranged GET, and a prefix or an index
resolved to its objects (the same rules as local directories and indexes, files.py)."""

from __future__ import annotations

import io
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

from ... import _cpp, settings
from ...errors import RemoteNotFoundError, SafeTensorsError, UnsupportedURLError
from ..files import INDEX_SUFFIX, SafeTensorsFile, parse_index
from ...metrics import LoadMetrics
from .requests import Counters, ShortBody, call, range_refused
from .store import obstore_module, store_for
from .urls import ObjectURL, is_url, parse_url

__all__ = ["RemoteObject", "open_object", "open_remote_checkpoint", "get_range", "stream_range", "add_counters"]

# The object a prefix names when the server cannot list (https://): an index, else one file.
_DEFAULT_INDEX = "model.safetensors" + INDEX_SUFFIX
_DEFAULT_FILE = "model.safetensors"
# An index is JSON naming shards: larger than this is not one (and is not read into memory).
_MAX_INDEX_BYTES = 256 << 20
_LISTABLE = ("s3", "gs", "az")
# stream_range's pieces: large enough that handing one to Python costs little, small enough that
# the responses in flight hold little memory.
_PIECE = 1 << 20


@dataclass(frozen=True)
class RemoteObject:
    """An object whose header was read: later GETs send If-Match ``etag`` (and ask for ``version``)."""

    url: ObjectURL
    store: Any
    size: int
    etag: Optional[str]
    version: Optional[str]

    def get_options(self, start: int, end: int) -> Dict[str, Any]:
        options: Dict[str, Any] = {"range": (start, end)}
        if self.etag:
            options["if_match"] = self.etag
        if self.version:
            options["version"] = self.version
        return options


def get_range(obj: RemoteObject, start: int, end: int, counters: Counters) -> Any:
    """Bytes [start, end) of the pinned object (all of them, or an error naming its URL)."""
    obstore = obstore_module()

    def request():
        data = obstore.get(obj.store, obj.url.key, options=obj.get_options(start, end)).bytes()
        if len(data) != end - start:
            raise ShortBody(f"{len(data)} of {end - start} bytes")
        return data

    data = call(request, obj.url.url, start, counters)
    counters.add(nbytes=len(data))
    return data


def stream_range(obj: RemoteObject, start: int, end: int, counters: Counters,
                 deliver: Callable[[int, Any], None]) -> None:
    """Bytes [start, end) of the pinned object, handed to ``deliver(object_offset, piece)`` as they
    arrive, in pieces of at least _PIECE bytes: a GET holds one piece instead of its whole body,
    and copying a piece overlaps receiving the next. A retry hands the range over again. The GET
    runs as a coroutine so that counters.cancel() aborts it at once (Ctrl-C, another GET's failure)."""
    obstore = obstore_module()

    async def request():
        offset = start
        result = await obstore.get_async(obj.store, obj.url.key, options=obj.get_options(start, end))
        async for piece in result.stream(min_chunk_size=_PIECE):
            deliver(offset, piece)
            offset += len(piece)
        if offset != end:
            raise ShortBody(f"{offset - start} of {end - start} bytes")

    call(lambda: counters.run(request), obj.url.url, start, counters)
    counters.add(nbytes=end - start)


def _first_get(url: ObjectURL, store: Any, counters: Counters) -> Tuple[RemoteObject, bytes]:
    """The object's first bytes (up to FASTSAFETENSORS_REMOTE_HEADER_KB) and its size, ETag and version."""
    obstore = obstore_module()
    want = settings.get("FASTSAFETENSORS_REMOTE_HEADER_KB") << 10

    def request():
        try:
            result = obstore.get(store, url.key, options={"range": (0, want)})
        except Exception as exc:
            # An empty object has no range to give; the parser refuses it as it refuses an empty file.
            meta = obstore.head(store, url.key) if range_refused(exc) else None
            if meta is None or meta["size"]:
                raise
            return meta, b""
        data = result.bytes()
        if len(data) != min(want, result.meta["size"]):
            raise ShortBody(f"{len(data)} of {min(want, result.meta['size'])} bytes")
        return result.meta, data

    meta, data = call(request, url.url, 0, counters)
    counters.add(nbytes=len(data))
    return RemoteObject(url, store, int(meta["size"]), meta.get("e_tag"), meta.get("version")), bytes(data)


def open_object(url: ObjectURL, store: Any, counters: Counters) -> SafeTensorsFile:
    """One object's validated header: one GET, a second only when the header is larger than the first."""
    obj, prefix = _first_get(url, store, counters)
    if len(prefix) >= 8:
        end = 8 + int.from_bytes(prefix[:8], "little")
        if len(prefix) < end <= min(obj.size, 8 + _cpp.MAX_HEADER_LENGTH):
            prefix += bytes(get_range(obj, len(prefix), end, counters))
    try:
        header = _cpp.parse_header_bytes(prefix, obj.size)
    except SafeTensorsError as exc:  # the parser knows no names: the error says which object
        raise type(exc)(f"{url.url}: {exc}", filename=url.url) from None
    infos = list(header.tensors)
    return SafeTensorsFile(url.url, header, infos, {t.name: t for t in infos}, remote=obj)


def _read_text(url: ObjectURL, store: Any, counters: Counters) -> str:
    """A small object (an index) as text."""
    obj, data = _first_get(url, store, counters)
    if obj.size > _MAX_INDEX_BYTES:
        raise UnsupportedURLError(f"{url.url}: {obj.size} bytes is too large for an index file")
    if obj.size > len(data):
        data += bytes(get_range(obj, len(data), obj.size, counters))
    return data.decode("utf-8", errors="replace")


def _index(url: ObjectURL, store: Any, counters: Counters) -> Tuple[List[ObjectURL], Dict[str, str]]:
    """An index's shards, each inside the index's prefix (files.parse_index's rules, on keys)."""
    text = _read_text(url, store, counters)
    base = "/" + posixpath.dirname(url.key)
    keys, by_name = parse_index(url.url, lambda: io.StringIO(text), base.rstrip("/") or "/")
    shards = {key: url.child(key.lstrip("/")) for key in keys}
    return list(shards.values()), {name: shards[key].url for name, key in by_name.items()}


def _exists(url: ObjectURL, store: Any, counters: Counters) -> bool:
    try:
        call(lambda: obstore_module().head(store, url.key), url.url, None, counters)
    except RemoteNotFoundError:
        return False
    return True


def _resolve_prefix(url: ObjectURL, store: Any,
                    counters: Counters) -> Tuple[List[ObjectURL], Optional[Dict[str, str]]]:
    """A prefix as a directory: its one ``*.safetensors.index.json``, else its ``*.safetensors``."""
    prefix = url.key.rstrip("/") + "/" if url.key.strip("/") else ""
    if url.scheme not in _LISTABLE:  # a plain web server: the conventional names, no listing
        for name in (_DEFAULT_INDEX, _DEFAULT_FILE):
            child = url.child(prefix + name)
            if _exists(child, store, counters):
                return _index(child, store, counters) if name == _DEFAULT_INDEX else ([child], None)
        raise RemoteNotFoundError(f"{url.url}: neither {_DEFAULT_INDEX} nor {_DEFAULT_FILE} under this prefix "
                                  f"({url.scheme}:// servers cannot be listed: name the files)", filename=url.url)
    listing = call(lambda: obstore_module().list_with_delimiter(store, prefix or None), url.url, None, counters)
    keys = sorted(o["path"] for o in listing["objects"])
    indexes = [k for k in keys if k.endswith(".safetensors" + INDEX_SUFFIX)]
    if len(indexes) == 1:
        return _index(url.child(indexes[0]), store, counters)
    files = [url.child(k) for k in keys if k.endswith(".safetensors")]
    if not files:
        raise RemoteNotFoundError(f"{url.url}: no .safetensors objects under this prefix", filename=url.url)
    return files, None


def _resolve(spec: Union[str, Iterable[str]], storage_options: Optional[Mapping[str, Any]],
             counters: Counters) -> Tuple[List[ObjectURL], Optional[Dict[str, str]], Dict[str, Any]]:
    """URLs of the objects a checkpoint argument names, its index's weight map, and their stores."""
    specs = [spec] if isinstance(spec, str) else list(spec)
    local = [p for p in specs if not is_url(p)]
    if local:
        raise UnsupportedURLError(f"a checkpoint is either URLs or local paths, not both ({local[0]!r} is local)")
    urls = [parse_url(s) for s in specs]
    many = [u for u in urls if not u.key.endswith(".safetensors")] if len(urls) > 1 else []
    if many:  # GETting it as one object would fail with a misleading 404, or read the wrong thing
        raise UnsupportedURLError(f"{many[0].url}: a prefix or an index (a URL not ending in .safetensors) stands "
                                  "for its objects only when it is the only URL given: pass it alone, or list "
                                  "its .safetensors objects")
    stores = {u.root: store_for(u, storage_options) for u in urls}
    if len(urls) > 1 or urls[0].key.endswith(".safetensors"):
        return urls, None, stores
    url = urls[0]
    if url.key.endswith(INDEX_SUFFIX):
        shards, weight_map = _index(url, stores[url.root], counters)
        return shards, weight_map, stores
    shards, prefix_map = _resolve_prefix(url, stores[url.root], counters)
    return shards, prefix_map, stores


def open_remote_checkpoint(spec: Union[str, Iterable[str]], storage_options: Optional[Mapping[str, Any]] = None,
                           metrics: Optional[LoadMetrics] = None
                           ) -> Tuple[List[SafeTensorsFile], Optional[Dict[str, str]]]:
    """Headers of every object a URL (an object, a prefix, an index) or a list of object URLs names,
    and the index's weight map (tensor -> URL) when there is one."""
    counters = Counters()
    try:
        urls, weight_map, stores = _resolve(spec, storage_options, counters)
        if len(urls) == 1:
            files = [open_object(urls[0], stores[urls[0].root], counters)]
        else:
            with ThreadPoolExecutor(max_workers=min(16, len(urls))) as pool:
                futures = [pool.submit(open_object, u, stores[u.root], counters) for u in urls]
                try:
                    files = [f.result() for f in futures]
                except BaseException:
                    counters.stop.set()
                    for f in futures:
                        f.cancel()
                    raise
    finally:
        if metrics is not None:
            add_counters(metrics, counters)
    return files, weight_map


def add_counters(metrics: LoadMetrics, counters: Counters) -> None:
    metrics.remote_requests += counters.requests
    metrics.remote_retries += counters.retries
    metrics.remote_bytes += counters.bytes
