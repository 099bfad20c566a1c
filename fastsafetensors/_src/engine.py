"""Read plan to host buffers: runs a plan on the engine's persistent reader threads."""

from __future__ import annotations

import logging
import numbers
import os
import sys
import threading
from collections import OrderedDict
from typing import Any, Callable, Dict, Hashable, List, Literal, Optional, overload

import numpy as np

from .. import _cpp, settings
from ..settings import MAX_THREADS
from ..metrics import LoadMetrics
from .plan import LoadPlan
from ..errors import InvalidArgumentError, ArgumentTypeError

__all__ = ["MAX_THREADS", "check_flag", "check_threads", "default_threads", "get_reader", "read_into_host",
           "ReaderCache"]

logger = logging.getLogger("fastsafetensors")

# A progress bar appears by itself for loads at least this large, when stderr is a terminal.
PROGRESS_MIN_BYTES = 1 << 30
# Reads run in batches of about this size: between them the progress bar moves and Ctrl-C is seen.
_BATCH_BYTES = 512 << 20
DEFAULT_CHUNK_BYTES = 8 << 20


def default_threads() -> int:
    """Reader threads: FASTSAFETENSORS_THREADS, else enough to keep every core and the disk busy."""
    return settings.get("FASTSAFETENSORS_THREADS")


@overload
def check_threads(threads: None, name: str = "threads") -> None: ...


@overload
def check_threads(threads: int, name: str = "threads") -> int: ...


def check_threads(threads: Any, name: str = "threads") -> Optional[int]:
    """``threads`` as an int in [1, MAX_THREADS] (None stays None: the default); anything else raises
    TypeError/ValueError naming ``name``."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, numbers.Integral):
        raise ArgumentTypeError(f"{name} must be a positive int, not {type(threads).__name__} ({threads!r})")
    n = int(threads)
    if not 1 <= n <= MAX_THREADS:
        raise InvalidArgumentError(f"{name} must be between 1 and {MAX_THREADS}, not {threads}")
    return n


@overload
def check_flag(value: Any, name: str, optional: Literal[False] = False) -> bool: ...


@overload
def check_flag(value: Any, name: str, optional: bool) -> Optional[bool]: ...


def check_flag(value: Any, name: str, optional: bool = False) -> Optional[bool]:
    """``value`` as a bool: True/False (NumPy's too) or the ints 1/0, and None when ``optional``.
    Anything else raises TypeError naming ``name``: the string "no" is truthy, so ``raw="no"`` would
    silently do the opposite of what it says."""
    if value is None and optional:
        return None
    if isinstance(value, (bool, np.bool_, numbers.Integral)) and value in (0, 1):
        return bool(value)
    raise ArgumentTypeError(f"{name} must be True or False{' or None' if optional else ''}, "
                    f"not {type(value).__name__} ({value!r:.40})")


class ReaderCache:
    """The last few readers, by settings: loads with the same settings reuse one (no thread start-up),
    and alternating between two settings keeps both; older ones are dropped (their threads end once
    no load still uses them), so the process keeps a bounded number of reader threads."""

    def __init__(self, size: int):
        self._size = size
        self._lock = threading.Lock()
        self._readers: "OrderedDict[Hashable, Any]" = OrderedDict()
        self._abandoned: List[Any] = []
        os.register_at_fork(after_in_child=self._after_fork_in_child)

    def _after_fork_in_child(self) -> None:
        # Another thread may have held the lock, or been inside a reader (a GPU reader's own mutex
        # held), at fork time: the child gets a new lock and builds readers of its own. The
        # inherited readers are kept, never destroyed: their memory and handles belong to the parent.
        self._lock = threading.Lock()
        self._abandoned.extend(self._readers.values())
        self._readers = OrderedDict()

    def get(self, key: Hashable, make: Callable[[], Any]) -> Any:
        with self._lock:
            reader = self._readers.get(key)
            if reader is None:
                reader = self._readers[key] = make()
                while len(self._readers) > self._size:
                    self._readers.popitem(last=False)
            self._readers.move_to_end(key)
            return reader

    def clear(self) -> None:
        with self._lock:
            self._readers.clear()


_readers = ReaderCache(2)


def get_reader(threads: Optional[int] = None) -> "_cpp.HostReader":
    """A reader with this many threads (validated), reused by later loads with the same number."""
    n = check_threads(threads) or default_threads()
    return _readers.get(n, lambda: _cpp.HostReader(n))


def progress_bar(total_bytes: Callable[[], int], progress: Optional[bool]):
    """A tqdm bar over ``total_bytes()`` bytes, or None. ``progress=None`` shows one only on a
    terminal and for loads of at least PROGRESS_MIN_BYTES."""
    if progress is False or (progress is None and not sys.stderr.isatty()):
        return None
    # Asked only now: a plan's total walks every range (millions for column shards).
    total = total_bytes()
    if progress is None and total < PROGRESS_MIN_BYTES:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc="fastsafetensors", leave=False)


def _buffer_labels(plan: LoadPlan) -> List[str]:
    """What each planned buffer holds, for error messages: its file where the plan's tensors say
    (shard plans fill buffers from many places and name none)."""
    owner = {loc.buffer: plan.files[loc.file].path for loc in plan.tensors.values()}
    return [owner.get(i, f"buffer {i} of a load from {len(plan.files)} file(s)") for i in range(len(plan.buffer_sizes))]


def _allocate(size: int, label: str, metrics: LoadMetrics) -> "_cpp.HostBuffer":
    try:
        buffer = _cpp.HostBuffer.allocate(size)
    except MemoryError as exc:
        raise MemoryError(f"{label}: cannot allocate {size} bytes of host memory to load it") from exc
    metrics.reused_bytes += size if buffer.reused else 0
    return buffer


def read_into_host(plan: LoadPlan, *, threads: Optional[int] = None, direct_io: bool = False,
                   chunk_bytes: int = DEFAULT_CHUNK_BYTES, progress: Optional[bool] = None,
                   metrics: Optional[LoadMetrics] = None,
                   buffers: Optional[List["_cpp.HostBuffer"]] = None, bar: Any = None) -> List["_cpp.HostBuffer"]:
    """Allocates one host buffer per planned file (unless ``buffers`` are given to reuse) and reads
    every range into its buffer; returns the buffers (those it allocated, or ``buffers``). Host
    buffers only: objects' pieces go in by ``HostBuffer.write``, which other buffers lack. ``bar``:
    the progress bar of a larger load this read is part of (updated, left open; ``progress`` unused)."""
    metrics = metrics if metrics is not None else LoadMetrics()
    remote = is_remote(plan)
    reader = None if remote else get_reader(threads)
    owned = buffers is None
    out: List["_cpp.HostBuffer"] = [] if buffers is None else buffers
    own_bar = bar is None
    try:
        if owned:
            with metrics.phase("allocate"):
                for size, label in zip(plan.buffer_sizes, _buffer_labels(plan)):
                    out.append(_allocate(size, label, metrics))
        sources = [] if remote else plan.sources()
        if own_bar:
            bar = progress_bar(lambda: plan.total_bytes, progress)
        with metrics.phase("read"):
            if reader is None:
                per_file = _read_remote(plan, out, threads, direct_io, bar, metrics)
            else:
                stats = reader.read(sources, plan.ranges, out, chunk_bytes, direct_io, batch_bytes=_BATCH_BYTES,
                                    on_batch=bar.update if bar is not None else None,
                                    cold_reads=settings.get("FASTSAFETENSORS_COLD_READS"))
                metrics.count_host_reads(stats)
                _report_cold_reads(stats["cold_reads"], metrics)
                per_file = stats["bytes_per_file"]
    except BaseException:
        # Nothing of a failed load is handed back, and the traceback must not keep it alive.
        if owned:
            out.clear()
        raise
    finally:
        if own_bar and bar is not None:
            bar.close()
    total = sum(per_file)
    metrics.count_files([f.path for f in plan.files], per_file)
    logger.debug("read %d bytes from %d %s with %s (%d bytes into reused memory)", total, len(plan.files),
                 "object(s)" if remote else "file(s)", "ranged GETs" if reader is None else f"{reader.threads} threads",
                 metrics.reused_bytes)
    return out


def _report_cold_reads(cold_reads: List[Dict[str, Any]], metrics: LoadMetrics) -> None:
    """Logs the shape each device's cold bytes were read with (DEBUG), and warns where
    FASTSAFETENSORS_COLD_ODIRECT=1 asked for O_DIRECT and the engine read through the page cache
    instead (the device's blocks, or a file system refusing it): nothing silent."""
    for c in cold_reads:
        logger.debug("cold reads of %s (device %s): %d bytes, %d %s, %d-byte requests, %s; rule: %s",
                     c["file"], c["device"], c["bytes"], c["threads"],
                     "streams" if c["streams"] else "threads taking reads in turn", c["request_bytes"],
                     "O_DIRECT" if c["direct"] else "buffered", c["rule"])
        if c["direct_asked"] and not c["direct"]:
            message = (f"{c['file']} (device {c['device']}): FASTSAFETENSORS_COLD_ODIRECT=1 asks for O_DIRECT, but "
                       f"{c['direct_refusal']}: its {c['bytes']} cold bytes were read through the page cache instead")
            logger.warning("%s", message)
            metrics.cold_fallbacks.append(message)


def is_remote(plan: LoadPlan) -> bool:
    """Whether a plan reads objects in a store (URLs) rather than files; a load is one or the other."""
    remote = [f.remote is not None for f in plan.files]
    if any(remote) and not all(remote):
        raise InvalidArgumentError("a load reads either local files or URLs, not both: load them separately")
    return any(remote)


def _read_remote(plan: LoadPlan, buffers: List["_cpp.HostBuffer"], threads: Optional[int], direct_io: bool, bar,
                 metrics: LoadMetrics) -> List[int]:
    """The plan's ranges as ranged GETs (fastsafetensors._src.remote.reader); ``threads`` GETs at once."""
    if direct_io:
        raise InvalidArgumentError("direct_io=True (or FASTSAFETENSORS_ODIRECT=1) reads files outside the page cache; a "
                         "URL has no page cache: load it with direct_io=False")
    from .remote.objects import add_counters
    from .remote.reader import read_ranges
    from .remote.requests import Counters

    counters = Counters()
    try:
        per_file, gap = read_ranges(plan, buffers, counters, concurrency=check_threads(threads),
                                    on_bytes=bar.update if bar is not None else None)
    finally:  # a failed load's requests and retries are counted too
        add_counters(metrics, counters)
    metrics.gap_bytes += gap
    return per_file
