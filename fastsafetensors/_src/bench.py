"""Loaders timed side by side: what ``fastsafetensors bench`` and ``benchmarks/`` share.

A case turns a list of files into ``{name: tensor}`` with every byte in memory. Lazy loaders
(mmap) get their pages touched inside the timed region, so every case pays for the same work.
Each case's output is checked against the reference reader once per run, outside the timing.
"""

from __future__ import annotations

import gc
import hashlib
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

__all__ = ["Case", "flat_bytes", "touch_pages", "numpy_memmap", "digests", "reference_digests", "mismatches", "cases",
           "run_alternating", "median", "markdown_table", "PAGE"]

PAGE = 4096
LoadFn = Callable[[Sequence[str]], Dict[str, Any]]


@dataclass(frozen=True)
class Case:
    name: str
    load: LoadFn


def flat_bytes(t: Any) -> np.ndarray:
    """A NumPy, PyTorch or JAX tensor's bytes as a flat uint8 array (a view where possible)."""
    module = type(t).__module__
    if module.startswith("torch"):
        import torch

        return t.detach().reshape(-1).view(torch.uint8).numpy()
    return np.ascontiguousarray(np.asarray(t)).reshape(-1).view(np.uint8)


def touch_pages(tensors: Mapping[str, Any]) -> int:
    """Reads one byte of every page of every tensor, so lazily mapped data is faulted in."""
    total = 0
    for t in tensors.values():
        b = flat_bytes(t)
        if b.size:
            total += int(b[::PAGE].sum()) + int(b[-1])
    return total


def _sha256(b: np.ndarray) -> str:
    return hashlib.sha256(b.data).hexdigest()  # releases the GIL on large buffers


def digests(tensors: Mapping[str, Any]) -> Dict[str, str]:
    """sha256 of each tensor's bytes."""
    names = list(tensors)
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        return dict(zip(names, pool.map(lambda n: _sha256(flat_bytes(tensors[n])), names)))


def reference_digests(paths: Sequence[str]) -> Dict[str, str]:
    """Digests of what the reference reader (``safetensors``) returns, one tensor at a time."""
    import ml_dtypes  # noqa: F401  (registers bfloat16 and fp8 with NumPy for safetensors.numpy)
    from safetensors import safe_open

    out: Dict[str, str] = {}
    for p in paths:
        with safe_open(p, framework="numpy") as f:
            for name in f.keys():
                out[name] = _sha256(flat_bytes(f.get_tensor(name)))
    return out


def mismatches(got: Mapping[str, str], want: Mapping[str, str]) -> List[str]:
    """Names missing, extra or with different bytes."""
    return sorted(n for n in set(got) | set(want) if got.get(n) != want.get(n))


def _ours(framework: str, mmap: bool = False) -> LoadFn:
    def load(paths: Sequence[str]) -> Dict[str, Any]:
        import fastsafetensors

        out = fastsafetensors.load(list(paths), framework=framework, progress=False, mmap=mmap)
        if mmap:
            touch_pages(out)
        return out

    return load


def _safetensors(module: str, touch: bool = False) -> LoadFn:
    def load(paths: Sequence[str]) -> Dict[str, Any]:
        import importlib

        import ml_dtypes  # noqa: F401

        load_file = importlib.import_module(f"safetensors.{module}").load_file
        out: Dict[str, Any] = {}
        for p in paths:
            out.update(load_file(p))
        if touch:
            touch_pages(out)
        if module == "flax":
            import jax

            jax.block_until_ready(list(out.values()))  # JAX copies asynchronously
        return out

    return load


def numpy_memmap(paths: Sequence[str], advise: Optional[Callable[[np.memmap], None]] = None,
                 touch: bool = True) -> Dict[str, Any]:
    """The NumPy way to map a safetensors file: its JSON header parsed, each tensor a view of a
    copy-on-write ``np.memmap`` of the whole file (typed as the NumPy backend types it; raw bytes
    where NumPy has no type), pages touched unless ``touch`` is False. ``advise(whole)`` runs on
    each whole-file mapping before its views are taken (benchmarks/mmap_bench.py's madvise cases)."""
    import json

    # Absolute: benchmarks/cpu_bench.py's children load this file by path, outside its package.
    from fastsafetensors._src.frameworks.numpy import NUMPY_DTYPES

    out: Dict[str, Any] = {}
    for p in paths:
        with open(p, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        whole = np.memmap(p, dtype=np.uint8, mode="c")
        if advise is not None:
            advise(whole)
        for name, e in header.items():
            begin, end = e["data_offsets"]
            raw = whole[8 + n + begin:8 + n + end]
            dtype = NUMPY_DTYPES.get(e["dtype"])
            out[name] = raw.view(dtype).reshape(e["shape"]) if dtype is not None else raw
    if touch:
        touch_pages(out)
    return out


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def cases(names: Optional[Sequence[str]] = None) -> List[Case]:
    """The in-process cases whose framework is installed, in a fixed order (or those named)."""
    known = [
        ("fastsafetensors numpy", (), _ours("numpy")),
        ("fastsafetensors torch", ("torch",), _ours("torch")),
        ("fastsafetensors numpy mmap (pages touched)", (), _ours("numpy", mmap=True)),
        ("fastsafetensors torch mmap (pages touched)", ("torch",), _ours("torch", mmap=True)),
        ("numpy memmap (pages touched)", (), numpy_memmap),
        ("safetensors numpy", ("safetensors",), _safetensors("numpy")),
        ("safetensors torch (mmap, pages touched)", ("safetensors", "torch"), _safetensors("torch", touch=True)),
        ("safetensors flax", ("safetensors", "jax"), _safetensors("flax")),
    ]
    return [Case(name, fn) for name, needs, fn in known
            if (names is None or name in names) and all(_importable(m) for m in needs)]


def run_alternating(cases: Sequence[Case], paths: Sequence[str], repeats: int,
                    reference: Optional[Mapping[str, str]] = None) -> Dict[str, List[float]]:
    """Seconds per load of each case, the order reversed every round so no case always goes first.

    With ``reference`` digests, the first load of each case is checked against them (untimed);
    a mismatch raises ``AssertionError`` naming the case and the tensors.
    """
    seconds: Dict[str, List[float]] = {c.name: [] for c in cases}
    for r in range(repeats):
        for case in (cases if r % 2 == 0 else list(reversed(cases))):
            gc.collect()
            start = time.perf_counter()
            out = case.load(paths)
            seconds[case.name].append(time.perf_counter() - start)
            if reference is not None and len(seconds[case.name]) == 1:
                bad = mismatches(digests(out), reference)
                if bad:
                    raise AssertionError(f"{case.name}: {len(bad)} tensor(s) differ from safetensors, e.g. {bad[:3]}")
            del out
    return seconds


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table, padded so it also reads well in a terminal; numbers right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [all(_is_number(r[i]) for r in cells[1:]) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if n else c.ljust(w) for c, w, n in zip(row, widths, numeric)) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if n else ("-" * (w + 2)) for w, n in zip(widths, numeric)) + "|"
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])


def _is_number(s: str) -> bool:
    try:
        float(s.rstrip("x"))
        return True
    except ValueError:
        return s in ("", "-")
