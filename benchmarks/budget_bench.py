#!/usr/bin/env python3
"""The time cost of a tight memory budget: ParallelLoader over the same checkpoint with no budget,
``device_memory_budget`` of 1/4 of the checkpoint, and one of the largest tensor, in one run.

The checkpoint (--files shards of bf16 tensors of 4-32 MiB, ~--mb MiB in all, written once to --cache
by safetensors) stays in the page cache. The caller drops every tensor once yielded
(``accumulate_resident=False``), as a loader copying weights into a model does. Cases alternate
within each repeat, after one untimed warm-up per case that also compares every tensor's sha256
with safetensors'; the median of --repeats is reported, with the units each load is cut into, the
read-ahead the budget left (a budget too small for it lowers it) and the most engine host bytes
alive at a yield.

    python benchmarks/budget_bench.py                       # device cpu, queue_size 0, 5 repeats
    python benchmarks/budget_bench.py --queue-size -1 --repeats 9
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import os
import statistics
import sys
import time
from typing import Dict, List, Optional, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 1 << 20


def write_checkpoint(cache: str, files: int, mb: int) -> List[str]:
    """``files`` shards of bf16 tensors of 4, 8, 16 MiB (and one of 32 MiB in the first), ~``mb`` MiB."""
    import torch
    from safetensors.torch import save_file

    os.makedirs(cache, exist_ok=True)
    paths = [os.path.join(cache, f"model-{i:05d}-of-{files:05d}.safetensors") for i in range(files)]
    if all(os.path.exists(p) for p in paths):
        return paths
    gen = torch.Generator().manual_seed(0)
    per_file = mb * MIB // files
    for i, path in enumerate(paths):
        tensors, size, j = {}, 0, 0
        if i == 0:
            tensors["embed.weight"] = torch.randn(32 * MIB // 2, generator=gen).to(torch.bfloat16)
            size = 32 * MIB
        while size < per_file:
            n = (4, 8, 16)[j % 3] * MIB
            tensors[f"layers.{i}.{j}.weight"] = torch.randn(n // 2, generator=gen).to(torch.bfloat16)
            size, j = size + n, j + 1
        save_file(tensors, path + ".tmp")
        os.replace(path + ".tmp", path)
    return paths


def _digest(t) -> str:
    import torch

    return hashlib.sha256(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


def reference_digests(paths: List[str]) -> Dict[str, str]:
    from safetensors.torch import load_file

    return {name: _digest(t) for p in paths for name, t in load_file(p).items()}


def load(paths: List[str], budget: Optional[int], queue_size: int, device: str,
         check: Optional[Dict[str, str]] = None) -> Tuple[float, int, int, int]:
    """One load, every tensor dropped once yielded: (seconds, units, read-ahead used, most host bytes alive)."""
    from fastsafetensors import ParallelLoader, _cpp

    gc.collect()
    base = _cpp.testing.host_live_bytes()
    start = time.perf_counter()
    pl = ParallelLoader(None, paths, queue_size=queue_size, device=device, nogds=True, use_tqdm_on_load=False,
                        device_memory_budget=budget, accumulate_resident=False)
    units, ahead, peak, seen = len(pl._work), pl._ahead, 0, 0
    for name, t in pl.iterate_weights():
        peak = max(peak, _cpp.testing.host_live_bytes() - base)
        if check is not None and _digest(t.cpu()) != check[name]:
            raise SystemExit(f"budget {budget}: tensor {name} differs from safetensors")
        seen += 1
        del t
    elapsed = time.perf_counter() - start
    if check is not None and seen != len(check):
        raise SystemExit(f"budget {budget}: {seen} tensors yielded, safetensors has {len(check)}")
    return elapsed, units, ahead, peak


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", default="/tmp/fst-budget-bench")
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--mb", type=int, default=512, help="MiB of tensors in all")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--queue-size", type=int, default=0, help="ParallelLoader's queue_size (0.3's default: 0)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    sys.path.insert(0, REPO)
    from fastsafetensors._src.budget import aligned
    from fastsafetensors._src.files import read_headers

    paths = write_checkpoint(args.cache, args.files, args.mb)
    sizes = [aligned(t.nbytes) for f in read_headers(paths) for t in f.infos]
    total = sum(sizes)
    cases = {"none": None, "1/4 of the checkpoint": total // 4, "largest tensor": max(sizes)}
    ref = reference_digests(paths)
    runs: Dict[str, List[float]] = {k: [] for k in cases}
    shape: Dict[str, Tuple[int, int, int]] = {}
    for key, budget in cases.items():  # warm-up, checked against safetensors
        _, *shape[key] = load(paths, budget, args.queue_size, args.device, check=ref)
    for _ in range(args.repeats):
        for key, budget in cases.items():
            runs[key].append(load(paths, budget, args.queue_size, args.device)[0])
    print(f"{len(paths)} files, {total / MIB:.0f} MiB of tensors (largest {max(sizes) / MIB:.0f} MiB), "
          f"device {args.device}, queue_size {args.queue_size}, median of {args.repeats}, page cache warm\n")
    print("| budget | bytes | units | read ahead | most host bytes alive | median s | min s | vs none |")
    print("|---|---|---|---|---|---|---|---|")
    none = statistics.median(runs["none"])
    for key, budget in cases.items():
        units, ahead, peak = shape[key]
        med = statistics.median(runs[key])
        print(f"| {key} | {budget if budget else '-'} | {units} | {ahead} | {peak / MIB:.0f} MiB | {med:.3f} | "
              f"{min(runs[key]):.3f} | {med / none:.2f}x |")


if __name__ == "__main__":
    main()
