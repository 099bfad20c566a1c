#!/usr/bin/env python3
"""Every client's call sequence (tests/clients/), timed with this package and with the published
fastsafetensors 0.5.0, in one process and over gloo ranks on 127.0.0.1, in one run.

The checkpoint is MiniLM-shaped (transformers BertConfig: 6 layers, hidden 384, random weights,
~90 MB, one file), written once to --cache. Each (package, world) runs in its own processes (0.5.0
first on sys.path for its cases); every rank times each sequence between two barriers, after one
untimed warm-up, and rank 0 reports the median of --repeats. Files stay in the page cache.

    python benchmarks/clients_bench.py                 # worlds 1 and 2, table on stdout
    python benchmarks/clients_bench.py --worlds 1 2 3 --repeats 7 --out clients.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER_05 = "/work/.peers/fst05"  # pip install --no-deps --target /work/.peers/fst05 fastsafetensors==0.5.0
TIMEOUT_S = 600


# ============================================================== the sequences (run in each rank)


def _batches(files: List[str], world: int) -> List[List[str]]:
    return [files[i:i + world] for i in range(0, len(files), world)]


def seq_vllm_0_8(pg, files, device):
    """vLLM 0.8-0.10 (and FastDeploy's order): per batch a loader, get_tensor of every key, both closed."""
    from fastsafetensors import SafeTensorsFileLoader

    out = {}
    for batch in _batches(files, pg.size()):
        loader = SafeTensorsFileLoader(pg, device, nogds=True)
        loader.add_filenames({i: [f] for i, f in enumerate(batch)})
        fb = loader.copy_files_to_device()
        for k in list(fb.key_to_rank_lidx.keys()):
            out[k] = fb.get_tensor(k)
        fb.close()
        loader.close()
    return out


def seq_sglang(pg, files, device):
    """SGLang: SafeTensorsFileLoader(pg, device) with no keywords; only loader.close()."""
    from fastsafetensors import SafeTensorsFileLoader

    out = {}
    for batch in _batches(files, pg.size()):
        loader = SafeTensorsFileLoader(pg, device)
        loader.add_filenames({i: [f] for i, f in enumerate(batch)})
        fb = loader.copy_files_to_device()
        for k in list(fb.key_to_rank_lidx.keys()):
            out[k] = fb.get_tensor(k)
        loader.close()
    return out


def seq_vllm_parallel_loader(pg, files, device):
    """vLLM main: ParallelLoader(...).iterate_weights()."""
    from fastsafetensors.parallel_loader import ParallelLoader

    pl = ParallelLoader(pg=pg, hf_weights_files=files, queue_size=0, use_tqdm_on_load=False, device=device,
                        nogds=True)
    out = dict(pl.iterate_weights())
    pl.close()
    return out


def seq_atom(pg, files, device):
    """ROCm ATOM: fastsafe_open(filenames=files, framework="pt", pg=, device=, nogds=)."""
    from fastsafetensors import fastsafe_open

    with fastsafe_open(filenames=files, framework="pt", pg=pg, device=device, nogds=True, debug_log=False) as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def seq_tgis(pg, files, device):
    """The TGIS adapter: files round-robin over ranks, get_sharded of 2-d tensors along dim 0."""
    from fastsafetensors import SafeTensorsFileLoader

    loader = SafeTensorsFileLoader(pg, device, bbuf_size_kb=16384 // pg.size(), max_threads=16, nogds=True)
    loader.add_filenames({r: files[r::pg.size()] for r in range(pg.size())})
    fb = loader.copy_files_to_device()
    out = {}
    for k in loader.get_keys():
        out[k] = fb.get_sharded(k, 0) if len(fb.get_shape(k)) == 2 else fb.get_tensor(k)
    fb.close()
    loader.close()
    return out


def seq_rtp_llm(pg, files, device):
    """rtp-llm: AutoLoader(pg, files, device=) with the nogds configuration it sets."""
    os.environ["FASTSAFETENSORS_CONFIG_JSON"] = '{"loader": "base", "base": {"copier_type": "nogds"}}'
    from fastsafetensors import AutoLoader

    loader = AutoLoader(pg, files, device=device)
    out = dict(loader.iterate_weights())
    loader.close()
    return out


SEQUENCES: Dict[str, Callable] = {name[4:]: fn for name, fn in list(globals().items()) if name.startswith("seq_")}


def rank_main(args: argparse.Namespace) -> None:
    if args.package == "0.5.0":
        sys.path.insert(0, PEER_05)
    else:
        sys.path.insert(0, REPO)
    import torch  # noqa: F401
    import torch.distributed as dist

    import fastsafetensors
    from fastsafetensors import SingleGroup

    assert fastsafetensors.__file__.startswith(PEER_05 if args.package == "0.5.0" else REPO), fastsafetensors.__file__
    if args.world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{args.port}", rank=args.rank,
                                world_size=args.world, timeout=datetime.timedelta(seconds=TIMEOUT_S))
        pg = dist.group.WORLD
    else:
        pg = SingleGroup()

    def barrier() -> None:
        if args.world > 1:
            dist.barrier()

    report: Dict[str, Any] = {}
    for name in args.sequences:
        fn = SEQUENCES[name]
        try:
            times = []
            for i in range(args.repeats + 1):
                barrier()
                start = time.perf_counter()
                out = fn(pg, args.files, "cpu")
                barrier()
                if i:
                    times.append(time.perf_counter() - start)
                del out
            report[name] = statistics.median(times)
        except Exception as exc:  # a sequence this package cannot run is reported, not fatal
            report[name] = f"{type(exc).__name__}: {str(exc)[:120]}"
            barrier()
    if args.rank == 0:
        print("@@" + json.dumps(report), flush=True)
    if args.world > 1:
        dist.destroy_process_group()


# ============================================================== the parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_group(package: str, world: int, files: List[str], sequences: List[str], repeats: int) -> Dict[str, Any]:
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, __file__, "--rank-of", package, str(rank), str(world), str(port),
                               str(repeats), json.dumps(files), ",".join(sequences)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/tmp")
             for rank in range(world)]
    report: Dict[str, Any] = {}
    try:
        for rank, p in enumerate(procs):
            out, err = p.communicate(timeout=TIMEOUT_S)
            lines = [line for line in out.splitlines() if line.startswith("@@")]
            if rank == 0:
                report = json.loads(lines[-1][2:]) if lines else {"error": err[-500:]}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return report


def make_checkpoint(cache: str) -> List[str]:
    path = os.path.join(cache, "minilm-shaped", "model.safetensors")
    if not os.path.exists(path):
        import torch
        from safetensors.torch import save_file
        from transformers import BertConfig, BertModel

        torch.manual_seed(0)
        config = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
        model = BertModel(config)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path, metadata={"format": "pt"})
    return [path]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--rank-of":
        package, rank, world, port, repeats, files, seqs = sys.argv[2:9]
        rank_main(argparse.Namespace(package=package, rank=int(rank), world=int(world), port=int(port),
                                     repeats=int(repeats), files=json.loads(files), sequences=seqs.split(",")))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sequences", nargs="+", default=list(SEQUENCES), choices=list(SEQUENCES))
    parser.add_argument("--cache", default="/tmp/fst-clients-bench")
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args()
    files = make_checkpoint(args.cache)
    size = sum(os.path.getsize(f) for f in files)
    rows = [f"MiniLM-shaped checkpoint, {size / 1e6:.0f} MB in {len(files)} file(s); median of {args.repeats} "
            "(ms, page cache warm)", "", "| sequence | ranks | this package | 0.5.0 |", "|---|---|---|---|"]
    for world in args.worlds:
        ours = run_group("ours", world, files, args.sequences, args.repeats)
        peer = run_group("0.5.0", world, files, args.sequences, args.repeats)
        for name in args.sequences:
            cells = [f"{v * 1e3:.0f}" if isinstance(v, float) else f"fails ({v})" if v else "-"
                     for v in (ours.get(name), peer.get(name))]
            rows.append(f"| {name} | {world} | {cells[0]} | {cells[1]} |")
    table = "\n".join(rows)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
