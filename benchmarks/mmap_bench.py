#!/usr/bin/env python3
"""Mapped loads in one process: where the time of ``mmap=True`` goes, against its peers and against
populating the mapping up front.

    python benchmarks/mmap_bench.py [DIR] [--rounds 12]

DIR holds a checkpoint (default: cpu_bench.py's 1 GB one, /tmp/fst-bench/llama-1gb). Every case
maps the files, then reads one byte of every page (as cpu_bench.py's mapped cases), in one process,
the order reversed every round. Load (until the dict is returned) and touch are timed apart, in
this thread's CPU time (what the faults cost, whatever else the machine runs) and in wall time.
The page cache's state decides the touch cost (benchmarks/README.md, Mapped cases): the last line
gives the share of the checkpoint mapped 2 MiB at a time.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import mmap
import os
import statistics
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's build

import fastsafetensors  # noqa: E402
from fastsafetensors._src import bench  # noqa: E402

MADV_POPULATE_READ = 22  # Linux >= 5.14; not in Python 3.11's mmap module
_libc = ctypes.CDLL(None, use_errno=True)
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def _advise(advice: int) -> Callable[[np.memmap], None]:
    def advise(whole: np.memmap) -> None:
        if _libc.madvise(whole.ctypes.data, whole.size, advice) != 0:
            raise OSError(ctypes.get_errno(), f"madvise({advice})")

    return advise


def _safetensors_torch(paths: Sequence[str]) -> Dict[str, Any]:
    from safetensors.torch import load_file

    out: Dict[str, Any] = {}
    for p in paths:
        out.update(load_file(p))
    return out


CASES: Dict[str, Callable[[Sequence[str]], Dict[str, Any]]] = {
    "ours-numpy": lambda paths: fastsafetensors.load(list(paths), framework="numpy", progress=False, mmap=True),
    "ours-torch": lambda paths: fastsafetensors.load(list(paths), framework="torch", progress=False, mmap=True),
    "st-torch": _safetensors_torch,
    # bench.py's np.memmap case; the touch is timed apart here
    "np-memmap": lambda paths: bench.numpy_memmap(paths, touch=False),
    "np-memmap+populate": lambda paths: bench.numpy_memmap(paths, _advise(MADV_POPULATE_READ), touch=False),
    "np-memmap+willneed": lambda paths: bench.numpy_memmap(paths, _advise(mmap.MADV_WILLNEED), touch=False),
}


def _file_pmd_kb() -> int:
    with open("/proc/self/smaps_rollup") as f:
        return next((int(line.split()[1]) for line in f if line.startswith("FilePmdMapped:")), 0)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dir", nargs="?", default="/tmp/fst-bench/llama-1gb", help="a checkpoint's directory")
    p.add_argument("--rounds", type=int, default=12, help="loads per case, alternating order (default 12)")
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated, of: " + ", ".join(CASES))
    args = p.parse_args(argv)
    paths = sorted(os.path.join(args.dir, f) for f in os.listdir(args.dir) if f.endswith(".safetensors"))
    data = sum(os.path.getsize(x) for x in paths)
    names = args.cases.split(",")
    times: Dict[str, List[List[float]]] = {k: [] for k in names}  # [load cpu, touch cpu, total wall]
    pmd: List[int] = []
    for k in names:  # warm-up: imports, and every page in the page cache
        bench.touch_pages(CASES[k](paths))
    for r in range(args.rounds):
        for k in (names if r % 2 == 0 else names[::-1]):
            gc.collect()
            c0, w0 = time.thread_time(), time.perf_counter()
            out = CASES[k](paths)
            c1 = time.thread_time()
            bench.touch_pages(out)
            c2, w2 = time.thread_time(), time.perf_counter()
            pmd.append(_file_pmd_kb())
            del out
            times[k].append([c1 - c0, c2 - c1, w2 - w0])
    rows = []
    base = statistics.median(a + b for a, b, _ in times[names[0]])
    for k in names:
        load, touch, wall = ([t[i] for t in times[k]] for i in range(3))
        cpu = [a + b for a, b in zip(load, touch)]
        q = statistics.quantiles(cpu, n=4)
        rows.append([k, f"{statistics.median(load) * 1e3:.2f}", f"{statistics.median(touch) * 1e3:.2f}",
                     f"{statistics.median(cpu) * 1e3:.2f}", f"{q[0] * 1e3:.2f}-{q[2] * 1e3:.2f}",
                     f"{base / statistics.median(cpu):.3f}x", f"{statistics.median(wall) * 1e3:.2f}"])
    print(f"{len(paths)} files, {data / 1e9:.2f} GB, {args.rounds} rounds; CPU ms of this thread (medians)\n")
    print(bench.markdown_table(["case", "load CPU ms", "touch CPU ms", "total CPU ms", "total IQR",
                                f"vs {names[0]}", "total wall ms"], rows))
    print(f"\nMapped 2 MiB at a time (FilePmdMapped) after a load: {min(pmd) * 1024 / data:.0%}-"
          f"{max(pmd) * 1024 / data:.0%} of the checkpoint.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
