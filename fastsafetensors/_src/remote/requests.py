"""One request to an object store: bounded retries with backoff, and a typed error naming the URL.

obstore's own retries are off (store.py) so that every retry is counted here and bounded by
FASTSAFETENSORS_REMOTE_RETRIES. Error messages name the URL and the HTTP status, never obstore's
text (it can quote response bodies) nor credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import random
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Dict, Optional, TypeVar
from urllib.parse import urlsplit

from ... import settings
from ...errors import (RemoteAccessDeniedError, RemoteNotFoundError, RemoteObjectChangedError, RemoteReadError,
                      TruncatedFileError, UnsupportedURLError)
from .store import env_variable, obstore_module
from .urls import shown_url

__all__ = ["Counters", "ShortBody", "call", "range_refused"]

T = TypeVar("T")
_STATUS = re.compile(r"status code: (\d{3})")
_BACKOFF_FIRST, _BACKOFF_MAX = 0.1, 5.0
# The HTTP client refused to build the request (obstore's debug text of a reqwest builder error):
# its configuration is wrong, and no retry changes that. BadScheme: plain http:// without allow_http.
_BUILDER = re.compile(r"kind: Builder")
_BAD_SCHEME = re.compile(r"source: BadScheme")
_REQUEST_URL = re.compile(r"Error performing \w+ (\S+)")


@dataclass
class Counters:
    """What a load's requests did, added to LoadMetrics at the end; shared by its threads."""

    requests: int = 0
    retries: int = 0
    bytes: int = 0
    stop: threading.Event = field(default_factory=threading.Event)  # set on the first failure
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _running: Dict[Any, Any] = field(default_factory=dict)  # the requests in flight in run(): task -> its loop

    def add(self, requests: int = 0, retries: int = 0, nbytes: int = 0) -> None:
        with self._lock:
            self.requests += requests
            self.retries += retries
            self.bytes += nbytes

    def run(self, request: Callable[[], Awaitable[T]]) -> T:
        """``await request()`` on an event loop of the calling thread, abortable by cancel(): a
        blocking GET cannot be stopped before its timeout, a cancelled coroutine closes its connection."""

        async def main() -> T:
            task = asyncio.current_task()
            with self._lock:
                if self.stop.is_set():
                    raise asyncio.CancelledError
                self._running[task] = asyncio.get_running_loop()
            try:
                return await request()
            finally:
                with self._lock:
                    self._running.pop(task, None)

        return asyncio.run(main())

    def cancel(self) -> None:
        """Stops the load's requests: none starts or retries, and those in run() are aborted (they
        raise asyncio.CancelledError in their threads)."""
        self.stop.set()
        with self._lock:
            running = list(self._running.items())
        for task, loop in running:
            with contextlib.suppress(RuntimeError):  # its loop closed since: that request has ended
                loop.call_soon_threadsafe(task.cancel)


class ShortBody(Exception):
    """A response carried fewer bytes than the range asked for (retried like a dropped connection)."""


def _status(exc: BaseException) -> Optional[int]:
    found = _STATUS.search(str(exc))
    return int(found.group(1)) if found else None


def range_refused(exc: BaseException) -> bool:
    """Whether a ranged GET failed because the object has no such range (HTTP 416: it is empty)."""
    return isinstance(exc, obstore_module().exceptions.NotSupportedError) or _status(exc) == 416


def _configuration_error(exc: BaseException, url: str) -> Optional[Exception]:
    """UnsupportedURLError saying what to set when the client refused to build the request, else None."""
    text = str(exc)
    if not _BUILDER.search(text):
        return None
    sent = _REQUEST_URL.search(text)
    to = f" to {shown_url(sent.group(1))}" if sent else ""
    if _BAD_SCHEME.search(text):
        variable = env_variable(urlsplit(url).scheme, "allow_http")
        how = "storage_options={'allow_http': True}" + (f" or {variable}=true in the environment" if variable else "")
        return UnsupportedURLError(f"{url}: the request{to} is plain http://, which the client refuses unless "
                                   f"told otherwise: set {how} (or use an https:// endpoint)")
    return UnsupportedURLError(f"{url}: the HTTP client could not build the request{to}: check the endpoint "
                               "and the client options in storage_options and the environment")


def _final_error(exc: BaseException, url: str, offset: Optional[int]) -> Optional[Exception]:
    """The typed error for a failure no retry can help, else None."""
    exceptions = obstore_module().exceptions
    configuration = _configuration_error(exc, url)
    if configuration is not None:
        return configuration
    status = _status(exc)
    if isinstance(exc, (FileNotFoundError, exceptions.NotFoundError)) or status == 404:
        return RemoteNotFoundError(f"{url}: no such object or bucket (HTTP 404)", filename=url, errno=errno.ENOENT)
    if isinstance(exc, (exceptions.PermissionDeniedError, exceptions.UnauthenticatedError)) or status in (401, 403):
        return RemoteAccessDeniedError(f"{url}: access denied (HTTP {status or 403}): check the credentials and "
                                       "the permissions on the bucket and object", filename=url, errno=errno.EACCES)
    if isinstance(exc, exceptions.PreconditionError) or status == 412:
        return RemoteObjectChangedError(f"{url}: the object was replaced after its header was read (its ETag no "
                                        "longer matches): load it again", filename=url, offset=offset)
    if isinstance(exc, exceptions.NotSupportedError):
        return RemoteReadError(f"{url}: the server does not answer this request ({type(exc).__name__})",
                               filename=url, offset=offset)
    if status is not None and 400 <= status < 500 and status not in (408, 429):
        return RemoteReadError(f"{url}: the server refused the request (HTTP {status})", filename=url, offset=offset)
    return None


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, (ShortBody, OSError, TimeoutError, obstore_module().exceptions.BaseError))


def call(request: Callable[[], T], url: str, offset: Optional[int], counters: Counters) -> T:
    """``request()``, retried on transient failures; raises a typed error naming ``url``."""
    retries = settings.get("FASTSAFETENSORS_REMOTE_RETRIES")
    for attempt in range(retries + 1):
        if counters.stop.is_set() and attempt:
            break  # another request of the load failed: no more retries
        counters.add(requests=1, retries=1 if attempt else 0)
        try:
            return request()
        except Exception as exc:
            if not _retryable(exc):
                raise
            final = _final_error(exc, url, offset)
            if final is not None:
                raise final from None
            last = exc
        if attempt < retries:  # the backoff ends early when the load stops
            counters.stop.wait(min(_BACKOFF_MAX, _BACKOFF_FIRST * 2 ** attempt) * random.uniform(0.5, 1.0))
    return _give_up(last, url, offset, attempt + 1)


def _give_up(exc: BaseException, url: str, offset: Optional[int], attempts: int) -> Any:
    where = f" at offset {offset}" if offset is not None else ""
    if isinstance(exc, ShortBody):
        raise TruncatedFileError(f"{url}: the server sent fewer bytes than asked for{where} ({exc}), "
                                 f"{attempts} time(s)", filename=url, offset=offset) from None
    status = _status(exc)
    why = f"HTTP {status}" if status else f"{type(exc).__name__}: no complete response"
    raise RemoteReadError(f"{url}: request{where} failed {attempts} time(s) ({why})", filename=url,
                          offset=offset) from None
