#!/usr/bin/env python3
"""Cold loads in back-to-back rounds: ours against fastsafetensors 0.5.0 (or other peers) and the disk's ceiling.

The disk this runs on may swing 2x within a minute, so separate runs of each case cannot rank
them. Each round here loads the checkpoint once per case, back to back, every case in a fresh
child process with the files evicted first (benchmarks/cpu_bench.py's children and eviction),
the order rotated every round so each case meets the disk in every position. Ratios within a
round cancel the drift the rounds share. See benchmarks/README.md.

    python benchmarks/cold_pairs.py                    # 25 rounds on the ~1 GB checkpoint
    python benchmarks/cold_pairs.py --size 8MB --rounds 2
    python benchmarks/cold_pairs.py --peers fst05-buffered,readinto,st-torch
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cpu_bench  # noqa: E402  (its children, eviction and checkpoints; no copies)

OURS, PEER, CEILING = "ours-numpy", "fst05-buffered", "ceiling"
LOAD_CASES = {c.key: c for c in cpu_bench.CASES}
# The best median of disk_ceiling.sh's session of 2026-11-30 16:24 UTC (docs/benchmarks.md).
FIO_CEILING = ["--ioengine=libaio", "--direct=1", "--bs=1M", "--iodepth=16"]
DD_CEILING = ["bs=16M", "iflag=direct"]  # where fio is missing: dd's best point at 16 MiB
BOOTSTRAP = 2000


@dataclass
class Case:
    key: str
    gbps: List[float] = field(default_factory=list)  # one per round, None where the round failed
    checked: Optional[bool] = None  # bytes equal to safetensors' (None: not checked)
    resident_after_evict: List[int] = field(default_factory=list)
    error: Optional[str] = None  # the case stopped: it is reported, the others go on
    not_run: Optional[str] = None  # why it never ran


def ceiling_tool() -> str:
    return "fio " + " ".join(FIO_CEILING) if shutil.which("fio") else "dd " + " ".join(DD_CEILING)


def ceiling_read(paths: Sequence[str], timeout: float) -> float:
    """GB/s of the files read whole with O_DIRECT, in one fio run (one job per file, together) or
    dd file after file. fio's own bandwidth; dd's timed here, its start included."""
    if shutil.which("fio"):
        cmd = ["fio", "--readonly", "--rw=read", "--output-format=terse", "--terse-version=3", "--group_reporting",
               *FIO_CEILING]
        for i, p in enumerate(paths):
            cmd += [f"--name=f{i}", f"--filename={p}", f"--size={os.path.getsize(p)}"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=timeout).stdout
        return float(out.strip().splitlines()[-1].split(";")[6]) * 1024 / 1e9  # field 7: read KiB/s
    start = time.perf_counter()
    for p in paths:
        subprocess.run(["dd", f"if={p}", "of=/dev/null", "status=none", *DD_CEILING], check=True, timeout=timeout)
    return sum(os.path.getsize(p) for p in paths) / (time.perf_counter() - start) / 1e9


def write_back(paths: Sequence[str]) -> None:
    """Writes a just-written checkpoint's dirty pages to the disk: eviction (posix_fadvise
    DONTNEED) leaves dirty pages in the page cache, and the first rounds would read them warm."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def evict(case: Case, ck: cpu_bench.Checkpoint) -> None:
    resident = cpu_bench.evict(ck.paths)
    if resident is not None:
        case.resident_after_evict.append(resident)


def load_once(case: Case, ck: cpu_bench.Checkpoint, peer05: str, timeout: float) -> float:
    """One cold load in a fresh child; the first load of each case also checks its bytes."""
    child = cpu_bench.Child(LOAD_CASES[case.key], ck.paths, peer05, timeout)
    try:
        evict(case, ck)  # after the child's start, which may read files itself
        digest = case.checked is None
        out = child.load(digest)
        if digest:
            case.checked = cpu_bench._same_bytes(LOAD_CASES[case.key], out["digests"], ck.reference)
        child.close()
        return ck.data_bytes / out["seconds"] / 1e9
    except BaseException:
        child.proc.kill()
        child.proc.wait()
        raise


def run_rounds(cases: Dict[str, Case], ck: cpu_bench.Checkpoint, rounds: int, peer05: str,
               timeout: float) -> None:
    order = [c for c in cases.values() if c.not_run is None]
    for r in range(rounds):
        shift = r % len(order)
        for case in order[shift:] + order[:shift]:
            gbps: Any = None
            if case.error is None:
                try:
                    if case.key == CEILING:
                        evict(case, ck)
                        gbps = ceiling_read(ck.paths, timeout)
                    else:
                        gbps = load_once(case, ck, peer05, timeout)
                except Exception as exc:
                    case.error = f"{type(exc).__name__}: {exc}"
            case.gbps.append(gbps)
            print(f"  round {r + 1}/{rounds} {case.key:15s} "
                  + (f"{gbps:6.2f} GB/s" if gbps is not None else f"ERROR {case.error}"), flush=True)


def quartiles(xs: Sequence[float]) -> Dict[str, float]:
    q1, med, q3 = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else (xs[0],) * 3
    return {"median": med, "q1": q1, "q3": q3, "iqr": q3 - q1}


def bootstrap_median(xs: Sequence[float], seed: int) -> List[float]:
    """90% interval of the median, by resampling the rounds (seeded: the same rounds give the same interval)."""
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(xs, k=len(xs))) for _ in range(BOOTSTRAP))
    return [meds[int(0.05 * BOOTSTRAP)], meds[int(0.95 * BOOTSTRAP) - 1]]


def summarise(cases: Dict[str, Case], seed: int) -> Dict[str, Any]:
    out: Dict[str, Any] = {"cases": {}, "pairs": {}}
    for c in cases.values():
        done = [x for x in c.gbps if x is not None]
        out["cases"][c.key] = {
            "status": "not run" if c.not_run else "error" if c.error else "ok",
            "reason": c.not_run or c.error, "rounds": len(done), "gbps": c.gbps,
            "bytes": {None: "not checked", True: "equal", False: "NOT equal"}[c.checked],
            "max_resident_after_evict": max(c.resident_after_evict, default=None),
            **(quartiles(done) if done else {})}
    peers = [k for k in cases if k not in (OURS, CEILING)]
    for a, b in [(OURS, k) for k in peers] + [(OURS, CEILING)] + [(k, CEILING) for k in peers]:
        ratios = [x / y for x, y in zip(cases[a].gbps, cases[b].gbps) if x is not None and y is not None]
        pair: Dict[str, Any] = {"rounds": len(ratios)}
        if ratios:
            pair.update(ratios=ratios, median=statistics.median(ratios), ci90=bootstrap_median(ratios, seed),
                        wins=sum(r > 1 for r in ratios))
        out["pairs"][f"{a}/{b}"] = pair
    return out


def report(summary: Dict[str, Any], ck: cpu_bench.Checkpoint, command: str) -> str:
    lines = [f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Machine: {cpu_bench.machine()}.",
             f"Command: `{command}`. Checkpoint: {len(ck.paths)} shards, {ck.data_bytes / 1e9:.3f} GB of tensors. "
             f"Ceiling: {ceiling_tool()} over the whole files (headers included).", "",
             "| case | rounds | median GB/s | IQR | bytes vs safetensors |", "|---|---|---|---|---|"]
    for key, c in summary["cases"].items():
        if c["status"] == "not run":
            lines.append(f"| {key} | not run: {c['reason']} | | | |")
            continue
        stats = f"{c['median']:.2f} | {c['q1']:.2f}-{c['q3']:.2f}" if c["rounds"] else "- | -"
        err = f" (ERROR {c['reason']})" if c["status"] == "error" else ""
        lines.append(f"| {key}{err} | {c['rounds']} | {stats} | {c['bytes'] if key != CEILING else 'n/a'} |")
    residues = [c["max_resident_after_evict"] for c in summary["cases"].values()]
    worst = max((r for r in residues if r is not None), default=None)
    lines += ["", f"Before each load at most {worst if worst is not None else '(unchecked: no fincore)'} bytes of the "
              "checkpoint were still in the page cache (fincore)."]
    lines += ["", "| per round | rounds | median | bootstrap 90% | rounds > 1 |", "|---|---|---|---|---|"]
    for name, p in summary["pairs"].items():
        lines.append(f"| {name} | {p['rounds']} | " + (
            f"{p['median']:.3f} | {p['ci90'][0]:.3f}-{p['ci90'][1]:.3f} | {p['wins']}/{p['rounds']} |"
            if p["rounds"] else "- | - | - |"))
    return "\n".join(lines)


def checkpoint_size(text: str) -> tuple:
    """A cpu_bench checkpoint label (1GB, 6GB) or a size in MB (e.g. 8MB: 2 shards)."""
    if text in cpu_bench.CHECKPOINTS:
        return cpu_bench.CHECKPOINTS[text]
    if text.upper().endswith("MB") and text[:-2].isdigit() and int(text[:-2]) > 0:
        return int(text[:-2]) * 1_000_000, 2
    raise argparse.ArgumentTypeError(f"--size {text!r}: one of {', '.join(cpu_bench.CHECKPOINTS)} or <N>MB")


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=25, help="rounds, one cold load of each case in each (default 25)")
    p.add_argument("--size", default="1GB", help="checkpoint: 1GB, 6GB or <N>MB (default 1GB)")
    p.add_argument("--cache", default="/tmp/fst-bench", help="where checkpoints are written once (default /tmp/fst-bench)")
    p.add_argument("--peer05", default=cpu_bench.PEER_05, help="folder holding fastsafetensors 0.5.0 (pip --target)")
    p.add_argument("--peers", default=PEER,
                   help=f"cpu_bench cases each round loads besides {OURS} and the ceiling, comma-separated "
                   f"(default {PEER}; e.g. {PEER},readinto,st-torch)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--timeout", type=float, default=600, help="seconds a child or a ceiling read may take")
    p.add_argument("--out", help="also write the report (Markdown) to this file")
    p.add_argument("--json", help="also write the summary, every round included, to this JSON file")
    args = p.parse_args(argv)
    size, shards = checkpoint_size(args.size)
    peers = [k for k in args.peers.split(",") if k]
    unknown = [k for k in peers if k not in LOAD_CASES or k == OURS]
    if unknown:
        p.error(f"--peers: {', '.join(unknown)}: not one of {', '.join(k for k in LOAD_CASES if k != OURS)}")

    ck = cpu_bench.prepare_checkpoint(args.cache, args.size, size, shards)
    write_back(ck.paths)
    cases = {k: Case(k) for k in (OURS, *peers, CEILING)}
    for k in peers:
        if LOAD_CASES[k].peer05 and not os.path.isdir(os.path.join(args.peer05, "fastsafetensors")):
            cases[k].not_run = f"no fastsafetensors 0.5.0 in {args.peer05}"
    print(f"{args.size}: {len(ck.paths)} files, {ck.data_bytes / 1e9:.3f} GB of tensors; {args.rounds} rounds", flush=True)
    run_rounds(cases, ck, args.rounds, args.peer05, args.timeout)
    summary = summarise(cases, args.seed)
    command = "python benchmarks/cold_pairs.py " + " ".join(argv if argv is not None else sys.argv[1:])
    cpu_bench.write_report(report(summary, ck, command.strip()), args.out, summary, args.json)
    return 1 if any(c.checked is False or c.error for c in cases.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
