"""Freed host buffers kept for the next load.

A fresh buffer costs the kernel a page fault and a zeroed page per 4 KiB before the read can fill
it, which is more than half of a warm load on small machines. The engine therefore keeps the
memory of freed host buffers for a few seconds and serves the next buffers from it; meanwhile the
kernel may take the pages back whenever memory runs short (``MADV_FREE``). Bounds:
``FASTSAFETENSORS_HOST_CACHE_MB`` (default a quarter of physical memory, ``0`` turns the cache off)
and ``FASTSAFETENSORS_HOST_CACHE_SECONDS`` (default 5), or :func:`configure` at run time.
"""

from __future__ import annotations

from typing import Dict, Optional, Union

from fastsafetensors import _cpp
from .errors import InvalidArgumentError


def stats() -> Dict[str, Union[int, float]]:
    """``bytes`` and ``entries`` kept now, ``lazy_bytes`` of them already reclaimable by the kernel,
    ``hits`` / ``misses`` (buffers served from the cache or not), ``limit``, ``hold_seconds``."""
    return _cpp.host_cache_stats()


def clear() -> None:
    """Return every kept buffer to the operating system now."""
    _cpp.host_cache_clear()


def configure(limit_bytes: Optional[int] = None, hold_seconds: Optional[float] = None) -> None:
    """Change the bounds; ``None`` keeps a bound as it is, ``limit_bytes=0`` turns the cache off."""
    if (limit_bytes is not None and limit_bytes < 0) or (hold_seconds is not None and hold_seconds < 0):
        raise InvalidArgumentError(f"host cache bounds must be >= 0, got limit_bytes={limit_bytes}, hold_seconds={hold_seconds}")
    now = stats()
    _cpp.host_cache_configure(now["limit"] if limit_bytes is None else int(limit_bytes),
                             now["hold_seconds"] if hold_seconds is None else float(hold_seconds))
