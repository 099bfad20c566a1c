"""Column shards against row shards of the same size, read by the GPU reader into one device buffer.

Writes a checkpoint of `--tensors` bf16 (rows, cols) matrices, then times reading shard 0 of
`--ways` of every matrix, split by columns (a run per row: the rows go as 2D copies, docs/gpu.md)
and by rows (one run per matrix), best of `--repeat`, page cache warm. On a GPU the ratio says
what the 2D copies cost against plain copies of the same bytes; with `--host-device` it runs on
the CPU through the engine's HostDevice (only the copy counts mean anything there).

    python benchmarks/column_bench.py [--rows 4096 --cols 4096 --tensors 16 --ways 8] [--host-device]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's build
from fastsafetensors import _cpp  # noqa: E402
from fastsafetensors._src import device_engine  # noqa: E402
from fastsafetensors._src.files import read_headers  # noqa: E402


def plan(files, ways: int, by_columns: bool):
    """Shard 0 of every matrix, one after another in one destination; returns the ranges and bytes."""
    header = files[0].header
    ranges, at = _cpp.RangeList(), 0
    for index, t in enumerate(header.tensors):
        rows, cols = t.shape
        stop = [rows, cols // ways] if by_columns else [rows // ways, cols]
        _cpp.plan_boxes(header, index, 0, [([0, 0], stop, 0, at)], ranges)
        at += stop[0] * stop[1] * 2
    return ranges, at


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--tensors", type=int, default=16)
    ap.add_argument("--ways", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--staging-mb", type=int, default=128)
    ap.add_argument("--host-device", action="store_true", help="the CPU stand-in instead of cuda:0")
    args = ap.parse_args()
    dev = _cpp.testing.HostDevice() if args.host_device else device_engine.cuda_device(0)
    reader = _cpp.DeviceReader(dev, args.threads, args.staging_mb << 20, 0)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.safetensors")
        g = torch.Generator().manual_seed(0)
        save_file({f"w{i}": torch.randn(args.rows, args.cols, generator=g).to(torch.bfloat16)
                   for i in range(args.tensors)}, path)
        files = read_headers([path])
        sources = [_cpp.ReadSource(f.path, f.header) for f in files]
        print(f"{args.tensors} bf16 ({args.rows}, {args.cols}) matrices, shard 0 of {args.ways}, "
              f"{reader.staging_lanes} lanes, {reader.slot_bytes >> 10} KiB slots, {dev.name}")
        for layout, by_columns in (("columns", True), ("rows", False)):
            ranges, nbytes = plan(files, args.ways, by_columns)
            buf = _cpp.DeviceBuffer.allocate(dev, nbytes)
            best, copies = float("inf"), 0
            for _ in range(args.repeat):
                before = dev.copies if args.host_device else 0
                t0 = time.perf_counter()
                reader.read(sources, ranges, [buf.data_ptr], [nbytes], use_mapping=False)
                best = min(best, time.perf_counter() - t0)
                copies = dev.copies - before if args.host_device else 0
            line = f"  {layout:7s} {len(ranges):7d} runs  {nbytes / 1e6:8.1f} MB  {best * 1e3:8.2f} ms  " \
                   f"{nbytes / best / 1e9:6.2f} GB/s"
            print(line + (f"  {copies} copies" if args.host_device else ""))


if __name__ == "__main__":
    main()
