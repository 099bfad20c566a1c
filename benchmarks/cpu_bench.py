#!/usr/bin/env python3
"""Loading Llama-shaped checkpoints into CPU memory: fastsafetensors against its peers.

Every case runs in its own child process (so it can use its own sys.path and environment, and so
its peak RSS is its own); the parent builds the checkpoints, controls the page cache, times nothing
itself and checks every case's tensors against the reference reader. See benchmarks/README.md.

    python benchmarks/cpu_bench.py --quick            # the ~1 GB checkpoint only
    python benchmarks/cpu_bench.py --out results.md   # ~1 GB and ~6 GB, table also written to a file
    python benchmarks/cpu_bench.py --cold-sweep       # cold reads: threads x request size x O_DIRECT
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import queue
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER_05 = "/work/.peers/fst05"  # pip install --no-deps --target /work/.peers/fst05 fastsafetensors==0.5.0
MARK = "@@"  # prefixes the child's protocol lines; anything else a library prints is passed through
HUGE_PAGE = 2 << 20
# label -> (bytes of tensors asked of the writer, shards)
CHECKPOINTS = {"1GB": (1_060_000_000, 2), "6GB": (6_200_000_000, 7)}
READ_CHUNK = 8 << 20


# ============================================================== the cases (run in a child)


@dataclass(frozen=True)
class CaseDef:
    key: str
    label: str
    peer05: bool = False  # runs with the published fastsafetensors 0.5.0 first on sys.path
    env: Tuple[Tuple[str, str], ...] = ()
    maps: bool = False  # its tensors view the files mapped (pages faulted in by the touch)


CASES = [
    CaseDef("ours-numpy", "fastsafetensors (this) numpy"),
    CaseDef("ours-torch", "fastsafetensors (this) torch"),
    CaseDef("ours-numpy-huge", "fastsafetensors (this) numpy, FASTSAFETENSORS_HUGE_PAGES=1",
            env=(("FASTSAFETENSORS_HUGE_PAGES", "1"),)),
    CaseDef("ours-numpy-nocold", "fastsafetensors (this) numpy, FASTSAFETENSORS_COLD_READS=0",
            env=(("FASTSAFETENSORS_COLD_READS", "0"),)),
    CaseDef("ours-numpy-mmap", "fastsafetensors (this) numpy, mmap=True, pages touched", maps=True),
    CaseDef("ours-torch-mmap", "fastsafetensors (this) torch, mmap=True, pages touched", maps=True),
    CaseDef("st-torch", "safetensors torch.load_file (mmap, pages touched)", maps=True),
    CaseDef("np-memmap", "numpy memmap of each file, header by json (pages touched)", maps=True),
    CaseDef("st-numpy", "safetensors numpy.load_file"),
    CaseDef("st-flax", "safetensors flax.load_file"),
    CaseDef("fst05-buffered", "fastsafetensors 0.5.0, FASTSAFETENSORS_ODIRECT=0", True,
            (("FASTSAFETENSORS_ODIRECT", "0"),)),
    CaseDef("fst05-default", "fastsafetensors 0.5.0, default (O_DIRECT)", True),
    CaseDef("readinto", "upper bound: threaded readinto, huge-page memory"),
]
# Our in-process cases (fastsafetensors/_src/bench.py) behind the keys above.
SHARED_CASES = {
    "ours-numpy": "fastsafetensors numpy",
    "ours-numpy-huge": "fastsafetensors numpy",  # the same case, with the huge-page policy in its env
    "ours-numpy-nocold": "fastsafetensors numpy",  # the same case, every byte read as a page-cache read
    "ours-torch": "fastsafetensors torch",
    "ours-numpy-mmap": "fastsafetensors numpy mmap (pages touched)",
    "ours-torch-mmap": "fastsafetensors torch mmap (pages touched)",
    "np-memmap": "numpy memmap (pages touched)",
    "st-torch": "safetensors torch (mmap, pages touched)",
    "st-numpy": "safetensors numpy",
    "st-flax": "safetensors flax",
}

Loaded = Tuple[Dict[str, Any], Optional[Callable[[], None]]]  # tensors, and what frees them


def _import_by_path(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the module runs
    spec.loader.exec_module(module)
    return module


def _load_fst05(paths: Sequence[str]) -> Loaded:
    from fastsafetensors import SafeTensorsFileLoader, SingleGroup  # 0.5.0, first on sys.path

    loader = SafeTensorsFileLoader(SingleGroup(), "cpu", nogds=True, framework="pytorch")
    loader.add_filenames({0: list(paths)})
    fb = loader.copy_files_to_device()
    tensors = {name: fb.get_tensor(name) for name in fb.key_to_rank_lidx}

    def close() -> None:
        fb.close()
        loader.close()

    return tensors, close


def _huge_page_buffer(size: int):
    """Anonymous memory of ``size`` bytes, 2 MiB aligned and advised to use transparent huge pages."""
    import ctypes
    import mmap

    mm = mmap.mmap(-1, size + 2 * HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    anchor = ctypes.c_char.from_buffer(mm)
    start = -ctypes.addressof(anchor) % HUGE_PAGE
    del anchor
    length = (size + HUGE_PAGE - 1) // HUGE_PAGE * HUGE_PAGE
    mm.madvise(mmap.MADV_HUGEPAGE, start, length)
    return mm, start


def _load_readinto(paths: Sequence[str], threads: int) -> Loaded:
    """Whole files read by a thread pool in 8 MiB preadv calls: no parsing cost, no copies."""
    import numpy as np

    maps, jobs, tensors = [], [], {}
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        size = os.fstat(fd).st_size
        mm, start = _huge_page_buffer(size)
        view = memoryview(mm)[start:start + size]
        maps.append((fd, mm, view))
        jobs += [(fd, view, off, min(READ_CHUNK, size - off)) for off in range(0, size, READ_CHUNK)]

    def read(job) -> None:
        fd, view, off, n = job
        done = 0
        while done < n:
            got = os.preadv(fd, [view[off + done:off + n]], off + done)
            if got <= 0:
                raise OSError(f"short read at {off + done}")
            done += got

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(read, jobs))
    for (fd, _mm, view), _path in zip(maps, paths):
        n = int.from_bytes(view[:8], "little")
        header = json.loads(bytes(view[8:8 + n]))
        header.pop("__metadata__", None)
        buf = np.frombuffer(view, dtype=np.uint8)
        for name, e in header.items():
            begin, end = e["data_offsets"]
            tensors[name] = buf[8 + n + begin:8 + n + end]
        os.close(fd)

    def close() -> None:
        tensors.clear()
        for _, mm, view in maps:
            view.release()
            mm.close()

    return tensors, close


def make_case(key: str, helpers) -> Callable[[Sequence[str]], Loaded]:
    if key in SHARED_CASES:
        fn = {c.name: c.load for c in helpers.cases()}[SHARED_CASES[key]]
        return lambda paths: (fn(paths), None)
    if key.startswith("fst05"):
        return _load_fst05
    if key == "readinto":
        from fastsafetensors._src.engine import default_threads  # as many threads as our loader uses

        threads = default_threads()
        return lambda paths: _load_readinto(paths, threads)
    raise ValueError(key)


def _prepare(key: str) -> None:
    """Imports and initialises what a case needs, so that no timed load pays for it."""
    import importlib

    import ml_dtypes  # noqa: F401  (bf16 for NumPy: part of any such set-up)

    if key.startswith("ours-"):
        from fastsafetensors.frameworks import get_framework

        get_framework(key.split("-")[1])
    elif key.startswith("st-"):
        module = {"st-torch": "torch", "st-numpy": "numpy", "st-flax": "flax"}[key]
        importlib.import_module(f"safetensors.{module}")
        if module == "flax":
            import jax.numpy as jnp

            jnp.zeros(1).block_until_ready()  # starts the JAX runtime
    elif key.startswith("fst05"):
        import torch  # noqa: F401

        import fastsafetensors.loader  # noqa: F401


def _memory_kb(field: str) -> int:
    """VmHWM (peak) or VmRSS (now) of this process. Not ru_maxrss: Linux carries that over from
    the parent through fork and exec, so every child would report at least the parent's peak."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _file_pmd_kb() -> int:
    """KiB of files this process maps 2 MiB at a time (FilePmdMapped): a fault maps a whole 2 MiB
    folio of the page cache at once, so touching mapped pages costs several times less where the
    page cache holds such folios (what read-ahead of 2 MiB or more builds) than where it holds
    small ones. Mapped cases compare fairly only where they saw the same share."""
    with open("/proc/self/smaps_rollup") as f:
        return next((int(line.split()[1]) for line in f if line.startswith("FilePmdMapped:")), 0)


def _send(**msg: Any) -> None:
    print(MARK + json.dumps(msg), flush=True)


def child_main(key: str, helpers_path: str, paths: List[str]) -> None:
    """Loads on request from the parent: one JSON line per command on stdin."""
    helpers = _import_by_path("fst_bench_helpers", helpers_path)
    load = make_case(key, helpers)
    _prepare(key)
    _send(ready=True, rss_kb=_memory_kb("VmRSS"))
    pmd_before = _file_pmd_kb()  # the libraries' own
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            break
        gc.collect()
        start = time.perf_counter()
        tensors, close = load(paths)
        seconds = time.perf_counter() - start
        pmd_kb = _file_pmd_kb() - pmd_before  # untimed, while the tensors still map the files
        digests = helpers.digests(tensors) if cmd.get("digest") else None
        del tensors
        if close is not None:
            close()
        gc.collect()
        _send(seconds=seconds, digests=digests, pmd_kb=pmd_kb)
    _send(peak_rss_kb=_memory_kb("VmHWM"))


# ============================================================== the parent


def _ours():
    if REPO not in sys.path:
        sys.path.insert(0, REPO)  # benchmark the build in this checkout
    import fastsafetensors
    import fastsafetensors._src.files  # noqa: F401  (header sizes)
    from fastsafetensors._src import bench as _bench, synthetic as _synthetic

    return fastsafetensors, _bench, _synthetic


@dataclass
class Checkpoint:
    label: str
    directory: str
    paths: List[str]
    data_bytes: int
    reference: Dict[str, str]


def _read_json(path: str) -> Dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def prepare_checkpoint(cache: str, label: str, size: int, shards: int) -> Checkpoint:
    """Writes the checkpoint with safetensors.torch.save_file once; later runs reuse it.

    ``complete.json`` beside the shards records what was written and the reference digests; a
    checkpoint without it (an interrupted write) or written to another spec is written again.
    """
    fst, bench, synthetic = _ours()
    directory = os.path.join(cache, f"llama-{label.lower()}")
    stamp = os.path.join(directory, "complete.json")
    want = {"size": size, "shards": shards, "seed": 0, "writer": "safetensors.torch.save_file"}
    if os.path.exists(stamp) and _read_json(stamp).get("spec") == want:
        paths = sorted(os.path.join(directory, f) for f in os.listdir(directory) if f.endswith(".safetensors"))
    else:
        shutil.rmtree(directory, ignore_errors=True)
        print(f"writing the {label} checkpoint to {directory} ...", flush=True)
        paths = sorted(synthetic.write_checkpoint(directory, size, shards, save=synthetic.save_with_safetensors))
        print("  reference digests (safetensors.safe_open, one tensor at a time) ...", flush=True)
        with open(stamp, "w") as f:
            json.dump({"spec": want, "reference": bench.reference_digests(paths)}, f)
    data = sum(fst._src.files.read_file_header(p).data_bytes for p in paths)
    return Checkpoint(label, directory, paths, data, _read_json(stamp)["reference"])


def resident_bytes(paths: Sequence[str]) -> Optional[int]:
    """Bytes of these files in the page cache, by fincore (None where fincore is missing)."""
    if shutil.which("fincore") is None:
        return None
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES", *paths],
                         capture_output=True, text=True, check=True).stdout
    return sum(int(x) for x in out.split())


def evict(paths: Sequence[str]) -> Optional[int]:
    fst, _, _ = _ours()
    for p in paths:
        fst._cpp.testing.evict_page_cache(p)
    return resident_bytes(paths)


def warm(paths: Sequence[str]) -> None:
    buf = bytearray(64 << 20)
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


class Child:
    """One case in its own process, driven line by line."""

    def __init__(self, case: CaseDef, paths: Sequence[str], peer05: str, timeout: float):
        _, bench, _ = _ours()
        env = {k: v for k, v in os.environ.items() if not k.startswith("FASTSAFETENSORS_")}
        ours = os.path.dirname(os.path.dirname(os.path.abspath(sys.modules["fastsafetensors"].__file__)))
        env["PYTHONPATH"] = peer05 if case.peer05 else ours
        env.update(case.env)
        self.timeout = timeout
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--child", case.key, "--helpers", bench.__file__, *paths],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd="/")
        self.lines: "queue.Queue[Optional[str]]" = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.ready = self.recv()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            if line.startswith(MARK):
                self.lines.put(line[len(MARK):])
            else:
                sys.stdout.write(line)
        self.lines.put(None)

    def recv(self) -> Dict[str, Any]:
        line = self.lines.get(timeout=self.timeout)
        if line is None:
            raise RuntimeError(f"child exited with status {self.proc.wait()}")
        return json.loads(line)

    def load(self, digest: bool) -> Dict[str, Any]:
        self.proc.stdin.write(json.dumps({"op": "load", "digest": digest}) + "\n")
        self.proc.stdin.flush()
        return self.recv()

    def close(self) -> Dict[str, Any]:
        try:
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.flush()
            return self.recv()
        finally:
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class CaseResult:
    seconds: List[float] = field(default_factory=list)  # loads counted for the regime
    first: List[float] = field(default_factory=list)  # each child's warm-up load (not counted)
    peak_rss_kb: int = 0  # the child's VmHWM
    base_rss_kb: int = 0  # its RSS once its libraries were imported, before any load
    resident_after_evict: List[int] = field(default_factory=list)
    pmd_kb: List[int] = field(default_factory=list)  # files mapped 2 MiB at a time after each counted load
    checked: Optional[bool] = None
    error: Optional[str] = None


def run_regime(regime: str, cases: Sequence[CaseDef], ck: Checkpoint, rounds: int, loads: int,
               peer05: str, timeout: float) -> Dict[str, CaseResult]:
    """``rounds`` children per case, in alternating order; each loads once to warm up, then ``loads`` times.

    The warm-up load pays each library's one-time costs (thread pools, first DLPack import, JAX
    dispatch) and is kept apart; the counted loads run in memory the previous load freed just before.
    hot: the page cache holds the files. cold: every file is evicted from the page cache before
    every load, and fincore checks that nothing stayed.
    """
    results = {c.key: CaseResult() for c in cases}
    if regime == "hot":
        warm(ck.paths)
    for r in range(rounds):
        for case in (cases if r % 2 == 0 else list(reversed(cases))):
            res = results[case.key]
            if res.error:
                continue
            try:
                child = Child(case, ck.paths, peer05, timeout)
            except Exception as exc:  # a peer that cannot start is reported, not fatal
                res.error = f"did not start: {exc}"
                continue
            try:
                res.base_rss_kb = max(res.base_rss_kb, child.ready["rss_kb"])
                times = []
                for k in range(loads + 1):
                    if regime == "cold":
                        resident = evict(ck.paths)
                        if resident is not None:
                            res.resident_after_evict.append(resident)
                    digest = res.checked is None
                    out = child.load(digest)
                    if digest:
                        res.checked = _same_bytes(case, out["digests"], ck.reference)
                    times.append(out["seconds"])
                    (res.seconds if k else res.first).append(out["seconds"])
                    if k:
                        res.pmd_kb.append(out["pmd_kb"])
                res.peak_rss_kb = max(res.peak_rss_kb, child.close()["peak_rss_kb"])
            except Exception as exc:  # a peer that fails is reported, the others go on
                res.error = f"{type(exc).__name__}: {exc}"
                child.proc.kill()
                child.proc.wait()
            print(f"  {ck.label} {regime} round {r + 1}/{rounds} {case.key:15s} GB/s:"
                  + "".join(f" {ck.data_bytes / t / 1e9:6.2f}" + (" |" if i == 0 else "") for i, t in enumerate(times))
                  + (f"  ERROR {res.error}" if res.error else ""), flush=True)
    return results


def _same_bytes(case: CaseDef, got: Dict[str, str], want: Dict[str, str]) -> bool:
    _, bench, _ = _ours()
    bad = bench.mismatches(got, want)
    if bad:
        print(f"  MISMATCH {case.key}: {len(bad)} tensor(s) differ from safetensors, e.g. {bad[:3]}", flush=True)
    return not bad


# ============================================================== the cold sweep


SWEEP_THREADS = (2, 4, 8, 16, 32)
SWEEP_REQUESTS = (256 << 10, 1 << 20, 4 << 20, 16 << 20)


def _drop_caches() -> None:
    """The whole page cache dropped (root only): what a reboot leaves, where posix_fadvise may not
    reach (a file system that ignores DONTNEED)."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("1\n")


def cold_sweep(ck: Checkpoint, repeats: int, drop: bool) -> str:
    """The engine's cold reads of the whole checkpoint at every point of threads x request size x
    O_DIRECT, ``repeats`` times in alternating order, the files evicted (and checked) before each.

    Times ``read_into_host`` alone (the residency split and the cold path, as a load reads), into
    buffers allocated and faulted in once, so the figures are the disk's and the read shapes', not
    allocation's. Each point overrides the rule (FASTSAFETENSORS_COLD_THREADS, _REQUEST_KB,
    _ODIRECT): buffered points read in streams, O_DIRECT ones in turn (docs/usage.md, Cold reads).
    The last row is the engine's own choice (``_cpp.testing.cold_read_shape``).
    """
    fst, bench, _ = _ours()
    from fastsafetensors._src import engine
    from fastsafetensors._src import files
    from fastsafetensors._src import plan

    lp = plan.plan_load(files.read_headers(ck.paths))
    buffers = [fst._cpp.HostBuffer.allocate(n) for n in lp.buffer_sizes]
    points = [(t, r, d) for d in (False, True) for t in SWEEP_THREADS for r in SWEEP_REQUESTS] + [None]
    times: Dict[Any, List[float]] = {p: [] for p in points}
    residue = 0
    os.sync()
    for rep in range(repeats):
        for point in (points if rep % 2 == 0 else points[::-1]):
            _drop_caches() if drop else None
            residue = max(residue, evict(ck.paths) or 0)
            overrides = {} if point is None else {"FASTSAFETENSORS_COLD_THREADS": str(point[0]),
                                                  "FASTSAFETENSORS_COLD_REQUEST_KB": str(point[1] >> 10),
                                                  "FASTSAFETENSORS_COLD_ODIRECT": str(int(point[2]))}
            os.environ.update(overrides)
            start = time.perf_counter()
            try:
                engine.read_into_host(lp, buffers=buffers)
            finally:
                for name in overrides:
                    del os.environ[name]
            times[point].append(time.perf_counter() - start)
        print(f"  sweep repeat {rep + 1}/{repeats} done", flush=True)
    rule = fst._cpp.testing.cold_read_shape(os.stat(ck.paths[0]).st_dev)
    rows = []
    for point, ts in times.items():
        rates = sorted(ck.data_bytes / t / 1e9 for t in ts)
        what = ([f"rule: {rule['threads']}", f"{rule['request_bytes'] >> 10}", "yes" if rule["direct"] else "no",
                 "streams" if rule["streams"] else "in turn"]
                if point is None
                else [str(point[0]), f"{point[1] >> 10}", "yes" if point[2] else "no",
                      "in turn" if point[2] else "streams"])
        rows.append(what + [f"{bench.median(rates):.2f}", f"{rates[0]:.2f}", f"{rates[-1]:.2f}"])
    table = bench.markdown_table(["threads", "request KiB", "O_DIRECT", "reads", "median GB/s", "min", "max"],
                                 rows)
    evicted = "drop_caches and posix_fadvise" if drop else "posix_fadvise(DONTNEED) per file"
    return (f"{table}\n\nEvicted before every read by {evicted}; at most {residue} bytes stayed resident "
            f"(fincore). The rule's row is a whole read_into_host (residency split included); its inputs: "
            f"{rule['rule']}.")


# ============================================================== report


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    mem = next((int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal")), 0)
    thp = open("/sys/kernel/mm/transparent_hugepage/enabled").read().strip()
    versions = []
    for mod in ("numpy", "torch", "jax", "safetensors"):
        try:
            versions.append(f"{mod} {__import__(mod).__version__}")
        except Exception:
            pass
    return (f"{os.cpu_count()} vCPU ({cpu}), {mem / 2**20:.0f} GiB RAM, Linux {platform.release()}, "
            f"THP `{thp}`, Python {platform.python_version()}, " + ", ".join(versions))


def report(ck: Checkpoint, cases: Sequence[CaseDef], results: Dict[str, Dict[str, CaseResult]]) -> str:
    _, bench, _ = _ours()
    gbs = {reg: {k: ck.data_bytes / bench.median(r.seconds) / 1e9 for k, r in res.items()} for reg, res in results.items()}
    regs = list(results)
    head = ["case"]
    for reg in regs:
        head += [f"{reg} GB/s", "vs ours"]
    if "hot" in results:
        head += ["1st load in a new process GB/s"]
    head += ["peak RSS GiB", "peak - imports - data GiB", "same bytes as safetensors"]
    rows = []
    for c in cases:
        row: List[Any] = [c.label]
        rss, base, checked, error = 0, 0, [], None
        for reg in regs:
            r = results[reg][c.key]
            ours = gbs[reg].get("ours-numpy", float("nan"))
            row += (["-", "-"] if not r.seconds else [f"{gbs[reg][c.key]:.2f}", f"{gbs[reg][c.key] / ours:.2f}x"])
            rss, base = max(rss, r.peak_rss_kb), max(base, r.base_rss_kb)
            checked.append(r.checked)
            error = error or r.error
        if "hot" in results:
            first = results["hot"][c.key].first
            row += [f"{ck.data_bytes / bench.median(first) / 1e9:.2f}" if first else "-"]
        row += ["-", "-"] if not rss else [f"{rss / 2**20:.2f}", f"{(rss - base) / 2**20 - ck.data_bytes / 2**30:+.2f}"]
        row.append("error: " + error if error else ("yes" if all(checked) else "NO"))
        rows.append(row)
    return bench.markdown_table(head, rows)


def pmd_note(ck: Checkpoint, cases: Sequence[CaseDef], results: Dict[str, Dict[str, CaseResult]]) -> List[str]:
    """How much of the checkpoint each mapped case found mapped 2 MiB at a time (see _file_pmd_kb)."""
    parts = [f"{c.key} {reg} {min(r.pmd_kb) * 1024 / ck.data_bytes:.0%}-{max(r.pmd_kb) * 1024 / ck.data_bytes:.0%}"
             for reg, res in results.items() for c in cases if c.maps and (r := res[c.key]).pmd_kb]
    if not parts:
        return []
    return ["Mapped cases: share of the tensor bytes mapped 2 MiB at a time after a counted load (FilePmdMapped, "
            "min-max): " + ", ".join(parts) + ". Touching pages costs several times less where the page cache "
            "holds 2 MiB folios; the cases compare fairly at equal shares.", ""]


def write_report(text: str, out: Optional[str], data: Any, json_path: Optional[str]) -> None:
    """Prints the Markdown report, and writes it to ``out`` and ``data`` to ``json_path`` where given."""
    print("\n" + text)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(data, f, indent=1)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the ~1 GB checkpoint only (same as --sizes 1GB)")
    p.add_argument("--sizes", default=",".join(CHECKPOINTS), help="checkpoints to run (default 1GB,6GB)")
    p.add_argument("--cache", default="/tmp/fst-bench", help="where checkpoints are written once (default /tmp/fst-bench)")
    p.add_argument("--regimes", default="hot,cold", help="hot, cold or both (default hot,cold)")
    p.add_argument("--rounds", type=int, default=3, help="children per case and regime, alternating order (default 3)")
    p.add_argument("--loads", type=int, default=2, help="counted loads per child, after one warm-up load (default 2)")
    p.add_argument("--cases", default=",".join(c.key for c in CASES), help="comma-separated case keys")
    p.add_argument("--peer05", default=PEER_05, help="folder holding fastsafetensors 0.5.0 (pip --target)")
    p.add_argument("--timeout", type=float, default=600, help="seconds a child may take to answer")
    p.add_argument("--out", help="also write the report (Markdown) to this file")
    p.add_argument("--json", help="also write every timing to this JSON file")
    p.add_argument("--cold-sweep", action="store_true",
                   help="instead of the cases: the engine's cold reads of the 1 GB checkpoint at threads x request "
                        "size x O_DIRECT, and its own rule's choice")
    p.add_argument("--repeats", type=int, default=3, help="--cold-sweep: reads per point (default 3)")
    p.add_argument("--drop-caches", action="store_true",
                   help="--cold-sweep: also drop the whole page cache before each read (root)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--helpers", help=argparse.SUPPRESS)
    p.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child_main(args.child, args.helpers, args.paths)
        return 0

    if args.cold_sweep:
        ck = prepare_checkpoint(args.cache, "1GB", *CHECKPOINTS["1GB"])
        text = (f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Machine: {machine()}.\n"
                f"Command: `python benchmarks/cpu_bench.py {' '.join(argv if argv is not None else sys.argv[1:])}`\n\n"
                + cold_sweep(ck, args.repeats, args.drop_caches))
        print("\n" + text)
        if args.out:
            with open(args.out, "w") as f:
                f.write(text + "\n")
        return 0

    keys = args.cases.split(",")
    cases = [c for c in CASES if c.key in keys]
    if not os.path.isdir(os.path.join(args.peer05, "fastsafetensors")):
        print(f"no fastsafetensors 0.5.0 in {args.peer05}: skipping its cases "
              f"(pip install --no-deps --target {args.peer05} fastsafetensors==0.5.0)")
        cases = [c for c in cases if not c.peer05]
    regimes = args.regimes.split(",")
    sizes = [(label, *CHECKPOINTS[label]) for label in ("1GB" if args.quick else args.sizes).split(",")]
    lines = [f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Machine: {machine()}.",
             f"Command: `python benchmarks/cpu_bench.py {' '.join(argv if argv is not None else sys.argv[1:])}`"
             f" ({args.rounds} children per case and regime in alternating order, each 1 warm-up + {args.loads} counted"
             " loads; median of the counted loads).", ""]
    dump: Dict[str, Any] = {}
    failed = False
    for label, size, shards in sizes:
        ck = prepare_checkpoint(args.cache, label, size, shards)
        print(f"{label}: {len(ck.paths)} files, {ck.data_bytes / 1e9:.2f} GB of tensors in {ck.directory}", flush=True)
        results = {reg: run_regime(reg, cases, ck, args.rounds, args.loads, args.peer05, args.timeout)
                   for reg in regimes}
        lines += [f"### {label} ({len(ck.paths)} shards, {ck.data_bytes / 1e9:.2f} GB of tensors)", "",
                  report(ck, cases, results), ""] + pmd_note(ck, cases, results)
        if "cold" in results:
            worst = max((x for r in results["cold"].values() for x in r.resident_after_evict), default=None)
            lines += [f"Cold loads: at most {worst if worst is not None else '(unchecked: no fincore)'} bytes of the "
                      "checkpoint were still in the page cache after eviction (fincore).", ""]
        dump[label] = {reg: {k: vars(r) for k, r in res.items()} for reg, res in results.items()}
        failed = failed or any(r.checked is False or r.error for res in results.values() for r in res.values())
    write_report("\n".join(lines), args.out, dump, args.json)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
