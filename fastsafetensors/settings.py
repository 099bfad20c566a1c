"""Every ``FASTSAFETENSORS_*`` environment variable, declared once, and the one way to read them.

Values are read when they are used (not at import), trimmed of spaces; an unset or blank variable
means its default. Booleans are ``1/0/true/false/yes/no/on/off`` in any case; numbers are plain
non-negative decimals within the bounds below (no sign, nan or inf); choices are the listed words.
Anything else raises :class:`~fastsafetensors.errors.SettingsError` naming the variable, the value
and what is accepted. The engine (``csrc/settings.cpp``) reads its variables with the same rules.
``fastsafetensors env`` prints the effective values (:func:`effective`).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

from .errors import SettingsError

__all__ = ["Setting", "Effective", "SETTINGS", "MAX_THREADS", "get", "effective",
           "parse_bool", "parse_uint", "parse_float", "parse_choice"]

_SPACES = " \t\n\r\f\v"
_BOOLS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
_DIGITS = re.compile(r"[0-9]+")
_DECIMAL = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:e[+-]?[0-9]+)?")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _clean(value: str) -> str:
    # ASCII only, as the engine does: no Unicode case folding or spaces turning junk into a word.
    return value.strip(_SPACES).translate(_ASCII_LOWER)


def _reject(name: str, value: str, expected: str) -> SettingsError:
    return SettingsError(f'{name}="{value}" is not valid: expected {expected}', variable=name)


def parse_bool(name: str, value: str) -> bool:
    """1/true/yes/on or 0/false/no/off, in any case."""
    out = _BOOLS.get(_clean(value))
    if out is None:
        raise _reject(name, value, "one of 1/0/true/false/yes/no/on/off")
    return out


def parse_uint(name: str, value: str, maximum: int, minimum: int = 0) -> int:
    """Decimal digits only (no sign), from ``minimum`` to ``maximum``."""
    v = _clean(value)
    # Digits past the 20th (leading zeros aside) exceed any bound, and int() refuses very long strings.
    if not _DIGITS.fullmatch(v) or len(v.lstrip("0")) > 20 or not minimum <= int(v) <= maximum:
        raise _reject(name, value, f"a whole number from {minimum} to {maximum}")
    return int(v)


def parse_float(name: str, value: str, maximum: float) -> float:
    """A decimal number (digits, optional fraction and exponent; no sign, nan or inf) up to ``maximum``."""
    v = _clean(value)
    out = float(v) if _DECIMAL.fullmatch(v) else math.nan
    if not (math.isfinite(out) and out <= maximum):
        raise _reject(name, value, f"a number from 0 to {maximum:.15g}")
    return out


def parse_choice(name: str, value: str, choices: Sequence[str]) -> str:
    """One of ``choices`` (lower case), in any case; returns it in lower case."""
    v = _clean(value)
    if v not in choices:
        raise _reject(name, value, "one of " + "/".join(choices))
    return v


Value = Union[bool, int, float, str, None]


@dataclass(frozen=True)
class Setting:
    """One variable: ``kind`` is bool, int, float, choice or text (taken as given, trimmed);
    ``default`` a value or a function of the machine (computed when asked for); ``engine``: read by
    the C++ engine (csrc/settings.cpp)."""

    name: str
    kind: str
    default: Union[Value, Callable[[], Value]]
    help: str
    minimum: int = 0
    maximum: float = 0
    choices: Tuple[str, ...] = ()
    engine: bool = False

    def parse(self, value: str) -> Value:
        if self.kind == "bool":
            return parse_bool(self.name, value)
        if self.kind == "int":
            return parse_uint(self.name, value, int(self.maximum), self.minimum)
        if self.kind == "float":
            return parse_float(self.name, value, self.maximum)
        if self.kind == "text":
            return value.strip(_SPACES)
        return parse_choice(self.name, value, self.choices)

    def default_value(self) -> Value:
        return self.default() if callable(self.default) else self.default

    def accepted(self) -> str:
        """What the variable accepts, in words (docs and ``fastsafetensors env``)."""
        if self.kind == "bool":
            return "boolean"
        if self.kind == "int":
            return f"integer {self.minimum} to {int(self.maximum)}"
        if self.kind == "float":
            return f"number 0 to {self.maximum:.15g}"
        if self.kind == "text":
            return "text"
        return "/".join(self.choices)


def _default_threads() -> int:
    return max(4, min(16, 2 * (os.cpu_count() or 1)))


def _quarter_of_memory_mib() -> int:
    pages, page = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGESIZE")
    return pages // 4 * page >> 20 if pages > 0 and page > 0 else 0


_SIZE_MAX_MIB = (1 << 64) - 1 >> 20  # MiB that still fit in the engine's size_t as bytes
# More reader threads than any disk or core count here can use; the cap keeps a typo (threads=10000)
# from asking the OS for thousands of threads. Bounds threads= too (engine.check_threads).
MAX_THREADS = 256

SETTINGS: Dict[str, Setting] = {s.name: s for s in [
    Setting("FASTSAFETENSORS_THREADS", "int", _default_threads,
            "reader threads of a load that passes no threads= (default 2 per core, 4 to 16)",
            minimum=1, maximum=MAX_THREADS),
    Setting("FASTSAFETENSORS_ODIRECT", "bool", False,
            "read with O_DIRECT, bypassing the page cache, when a load passes no direct_io="),
    Setting("FASTSAFETENSORS_COLD_READS", "bool", True,
            "CPU loads: bytes outside the page cache are read with their device's cold shape (docs/usage.md, "
            "Cold reads); 0: every byte as a page-cache read"),
    Setting("FASTSAFETENSORS_COLD_THREADS", "int", 0,
            "cold read threads: streams through the page cache, O_DIRECT reads in flight (0: by the device rule, "
            "docs/usage.md, Cold reads)", maximum=MAX_THREADS, engine=True),
    Setting("FASTSAFETENSORS_COLD_REQUEST_KB", "int", 0,
            "KiB per cold read (0: by the device rule)", maximum=1 << 20, engine=True),
    Setting("FASTSAFETENSORS_COLD_ODIRECT", "bool", False,
            "cold reads with O_DIRECT, leaving the page cache as it was (where the device's blocks allow); 0: "
            "through the page cache, which keeps the files for the next load", engine=True),
    Setting("FASTSAFETENSORS_DEBUG", "bool", False,
            "log each load's phases and timings (logger fastsafetensors); read once, at import"),
    Setting("FASTSAFETENSORS_HUGE_PAGES", "bool", False,
            "large host buffers ask for transparent huge pages (docs/usage.md, Memory)", engine=True),
    Setting("FASTSAFETENSORS_HOST_CACHE_MB", "int", _quarter_of_memory_mib,
            "MiB of freed host buffers kept for reuse (default a quarter of physical memory; 0: off); "
            "read once, when the cache is first used", maximum=_SIZE_MAX_MIB, engine=True),
    Setting("FASTSAFETENSORS_HOST_CACHE_SECONDS", "float", 5.0,
            "seconds freed host buffers are kept; read once, when the cache is first used",
            maximum=1e6, engine=True),
    Setting("FASTSAFETENSORS_GDS", "choice", None,
            "GPU loads: force GPU Direct Storage (auto: for files outside the page cache, direct: for all) "
            "or turn it off (buffered, off); unset: as the load asks (nogds=)",
            choices=("auto", "direct", "buffered", "off")),
    Setting("FASTSAFETENSORS_NUMA", "bool", True,
            "GPU loads: run the reader's threads on the GPU's NUMA node (docs/gpu.md)"),
    # 128 MiB: 16 lanes x 2 slots x 4 MiB.
    Setting("FASTSAFETENSORS_STAGING_MB", "int", 128,
            "GPU loads: pinned staging memory of the reader, in MiB", minimum=1, maximum=1 << 20),
    # 2: page registration serialises in the driver, so more lanes do not help.
    Setting("FASTSAFETENSORS_MAP_LANES", "int", 2,
            "GPU loads: lanes that DMA straight from page-cache pages when mapping is on", maximum=64),
    Setting("FASTSAFETENSORS_MAPPING", "choice", "0",
            "GPU loads: 0 staging only, 1 staging and page-cache DMA together, only: page-cache DMA "
            "only (docs/benchmarks.md)", choices=("0", "1", "only")),
    Setting("FASTSAFETENSORS_PIN", "choice", "register",
            "GPU loads: staging memory pinned by registering huge pages (register) or with cudaHostAlloc "
            "(alloc)", choices=("register", "alloc"), engine=True),
    Setting("FASTSAFETENSORS_REMOTE_HEADER_KB", "int", 1024,
            "URLs: bytes of the first ranged GET, which holds the header unless it is larger (then a "
            "second GET fetches the rest), in KiB (docs/remote.md)", minimum=1, maximum=1 << 20),
    Setting("FASTSAFETENSORS_REMOTE_CHUNK_MB", "int", 16,
            "URLs: bytes one ranged GET asks for at most, in MiB (bigger ranges are split, neighbouring "
            "small ones share one GET)", minimum=1, maximum=1 << 12),
    Setting("FASTSAFETENSORS_REMOTE_CONCURRENCY", "int", 16,
            "URLs: ranged GETs in flight at once; bytes in flight are at most this times the chunk size",
            minimum=1, maximum=256),
    Setting("FASTSAFETENSORS_REMOTE_GAP_KB", "int", 64,
            "URLs: unwanted bytes between two wanted ranges that one GET still fetches (and drops) rather "
            "than making two requests, in KiB", maximum=1 << 20),
    Setting("FASTSAFETENSORS_REMOTE_RETRIES", "int", 5,
            "URLs: retries of a failed GET (5xx, throttling, a dropped connection, a short body), with "
            "exponential backoff from 0.1 s up to 5 s", maximum=100),
    Setting("FASTSAFETENSORS_REMOTE_TIMEOUT", "float", 60.0,
            "URLs: seconds one request may take (connecting and reading its body) before it counts as "
            "failed and is retried (0: no limit)", maximum=1e5),
    Setting("FASTSAFETENSORS_CONFIG_JSON", "text", None,
            "AutoLoader: its configuration as JSON text (docs/torch.md, AutoLoader); set together with "
            "FASTSAFETENSORS_CONFIG it is an error"),
    Setting("FASTSAFETENSORS_CONFIG", "text", None,
            "AutoLoader: path of its JSON configuration file (default ./fastsafetensors.json if it exists)"),
]}


def _lookup(name: str) -> Tuple[Setting, Optional[str]]:
    setting = SETTINGS[name]  # a KeyError here is a bug: every variable is declared above
    raw = os.environ.get(name)
    return setting, raw if raw is not None and raw.strip(_SPACES) else None


def get(name: str) -> Any:
    """The variable's value now: parsed from the environment, or its default when unset or blank."""
    setting, raw = _lookup(name)
    return setting.default_value() if raw is None else setting.parse(raw)


class Effective(NamedTuple):
    name: str
    value: Value
    source: str  # "default" or "environment"
    help: str


def effective() -> List[Effective]:
    """Every variable's value now and where it comes from; the first malformed one raises."""
    return [Effective(name, get(name), "default" if _lookup(name)[1] is None else "environment", setting.help)
            for name, setting in SETTINGS.items()]
