"""Tensor-parallel loading: ``as_dict`` of a Llama-shaped checkpoint over N gloo ranks (127.0.0.1).

Compares, in the same run and on the same files (warm page cache):
  * ours with the default read mode (``direct_read=None``: blocks of split tensors read by each
    rank, whole tensors read once by their owner and broadcast),
  * ours, direct reads (each rank reads its own blocks from the files: ``direct_read=True``),
  * ours, scatter mode (each rank reads its files, blocks go out by packed scatter/broadcast),
  * the published fastsafetensors 0.5.0 doing the same calls (installed apart, e.g.
    ``pip install --no-deps --target /work/.peers/fst05 fastsafetensors==0.5.0``; it shares our
    import name, so it runs in its own processes with that folder first on sys.path).

Each rank does: SafeTensorsFileLoader(pg) -> add_filenames({r: files[r::N]}) -> copy_files_to_device()
-> as_dict({name: dim}) with the usual TP dims (q/k/v/gate/up and embeddings on dim 0, o/down on
dim 1, norms replicated). Timed from the loader's creation to the last tensor; every returned block
is then checked bit for bit against safetensors' own reader. Also reports bytes read per rank.

``--store moto`` (or ``seaweedfs``, benchmarks/remote_bench.py's server) loads the same files as
``s3://`` objects from that server on 127.0.0.1 instead (the three read modes of ours; 0.5.0 takes
no URLs) and reports each rank's bytes received, GETs and gap bytes (docs/remote.md, The 0.3 loaders).

Usage: python benchmarks/tp_bench.py [--gb 1.0] [--world 2] [--trials 2] [--dir DIR] [--peer PATH]
       python benchmarks/tp_bench.py --store moto --gb 0.1 --trials 1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Dict, Iterator, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER_DEFAULT = "/work/.peers/fst05"


def tp_dim(name: str, ndim: int) -> int:
    if ndim < 2:
        return -1  # norms: whole on every rank
    if "o_proj" in name or "down_proj" in name:
        return 1  # row-parallel layers
    return 0  # column-parallel layers, embeddings, lm_head


def write_checkpoint(directory: str, gb: float) -> List[str]:
    """Llama-shaped bf16 weights with f32 norms, about ``gb`` GB over 4 shards (save_file)."""
    import torch
    from safetensors.torch import save_file

    hidden, inter, vocab, kv = 2048, 5632, 32000, 512
    per_layer = 2 * (2 * hidden * hidden + 2 * kv * hidden + 3 * hidden * inter)
    layers = max(1, int((gb * 1e9 - 4 * vocab * hidden) // per_layer))
    tensors: Dict[str, tuple] = {"model.embed_tokens.weight": (vocab, hidden), "lm_head.weight": (vocab, hidden),
                                          "model.norm.weight": (hidden,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        tensors.update({p + "self_attn.q_proj.weight": (hidden, hidden), p + "self_attn.k_proj.weight": (kv, hidden),
                        p + "self_attn.v_proj.weight": (kv, hidden), p + "self_attn.o_proj.weight": (hidden, hidden),
                        p + "mlp.gate_proj.weight": (inter, hidden), p + "mlp.up_proj.weight": (inter, hidden),
                        p + "mlp.down_proj.weight": (hidden, inter), p + "input_layernorm.weight": (hidden,),
                        p + "post_attention_layernorm.weight": (hidden,)})
    names = list(tensors)
    shards = [names[i::4] for i in range(4)]
    paths = []
    g = torch.Generator().manual_seed(0)
    for k, shard in enumerate(shards):
        data = {}
        for n in shard:
            shape = tensors[n]
            dtype = torch.float32 if len(shape) == 1 else torch.bfloat16
            data[n] = torch.empty(shape, dtype=dtype).uniform_(-1, 1, generator=g)
        paths.append(os.path.join(directory, f"model-{k:05d}-of-00004.safetensors"))
        save_file(data, paths[-1], metadata={"format": "pt"})
    return paths


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- one rank (a child process)
def rank_main(impl: str, rank: int, world: int, port: int, files: List[str], peer: str, op: str,
              urls: Optional[List[str]] = None) -> None:
    if impl == "fst05":
        sys.path.insert(0, peer)
    else:
        sys.path.insert(0, ROOT)
    import torch.distributed as dist
    from safetensors import safe_open

    import fastsafetensors
    from fastsafetensors import SafeTensorsFileLoader

    assert (impl == "fst05") == fastsafetensors.__file__.startswith(peer), fastsafetensors.__file__
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    pg = dist.group.WORLD
    dims = {}
    for f in files:
        with safe_open(f, "pt") as h:
            for n in h.keys():
                dims[n] = tp_dim(n, len(h.get_slice(n).get_shape()))
    kwargs = {"ours-direct": {"direct_read": True}, "ours-scatter": {"direct_read": False}}.get(impl, {})
    dist.barrier()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    loader = SafeTensorsFileLoader(pg, "cpu", nogds=True, **kwargs)
    names = urls or files
    loader.add_filenames({r: names[r::world] for r in range(world)})
    fb = loader.copy_files_to_device()
    t1 = time.perf_counter()
    if op == "get_tensor":  # an inference server's loop: every tensor, whole, on every rank
        dims = {n: -1 for n in dims}
        out = {k: fb.get_tensor(k) for k in list(fb.key_to_rank_lidx.keys())}
    else:
        out = fb.as_dict(dims)
    t2 = time.perf_counter()
    cpu = time.process_time() - cpu0
    dist.barrier()
    t3 = time.perf_counter()
    bytes_read = loader.metrics.bytes_read if impl != "fst05" else None
    ok = _verify(out, dims, files, rank, world)
    fb.close()
    loader.close()
    m = loader.metrics
    result = {"impl": impl, "rank": rank, "total_s": t3 - t0, "copy_s": t1 - t0, "op_s": t2 - t1, "cpu_s": cpu,
              "bytes_read": bytes_read, "verified": ok, "remote_bytes": getattr(m, "remote_bytes", None),
              "remote_requests": getattr(m, "remote_requests", None), "gap_bytes": getattr(m, "gap_bytes", None)}
    print("RESULT " + json.dumps(result), flush=True)
    dist.destroy_process_group()


def _verify(out, dims, files, rank: int, world: int) -> bool:
    import torch
    from safetensors import safe_open

    for f in files:
        with safe_open(f, "pt") as h:
            for n in h.keys():
                want = h.get_tensor(n)
                if dims[n] >= 0:
                    want = torch.tensor_split(want, world, dims[n])[rank]
                got = out[n]
                got = got.get_raw() if hasattr(got, "get_raw") else got  # 0.5 wraps its tensors
                if got.shape != want.shape or got.dtype != want.dtype:
                    return False
                if not torch.equal(got.contiguous().view(torch.uint8), want.contiguous().view(torch.uint8)):
                    return False
    return True


# ---------------------------------------------------------------- the parent
def _split_bytes(files: List[str]):
    from safetensors import safe_open

    split = replicated = 0
    for f in files:
        with safe_open(f, "pt") as h:
            for n in h.keys():
                t = h.get_slice(n)
                nbytes = 2 if t.get_dtype() == "BF16" else 4
                for d in t.get_shape():
                    nbytes *= d
                if tp_dim(n, len(t.get_shape())) >= 0:
                    split += nbytes
                else:
                    replicated += nbytes
    return split, replicated


def run_impl(impl: str, world: int, files: List[str], peer: str, timeout: float, op: str,
             store: Optional[Dict[str, str]] = None) -> List[dict]:
    """``store``: the environment reaching the object store, with ``urls`` (JSON) the files' objects."""
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", **(store or {}))
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "--rank-worker", impl, str(r), str(world),
                               str(port), json.dumps(files), peer, op, (store or {}).get("FST_BENCH_URLS", "")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env, cwd="/") for r in range(world)]
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
            if p.returncode != 0 or not lines:
                raise RuntimeError(f"{impl}: a rank failed (exit {p.returncode}):\n{err[-3000:]}")
            results.append(json.loads(lines[-1][len("RESULT "):]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    return results


@contextlib.contextmanager
def object_store(kind: str, files: List[str]) -> Iterator[Dict[str, str]]:
    """The files uploaded to bucket ``tp-bench`` of a ``kind`` server on 127.0.0.1 (remote_bench's servers);
    yields the ranks' environment: endpoint, credentials, and FST_BENCH_URLS (the objects, JSON)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import remote_bench

    work = tempfile.mkdtemp(prefix="fst-tp-store-")
    try:
        with remote_bench.server(kind, remote_bench.WEED, work) as endpoint:
            servers = remote_bench._servers()
            servers.upload(endpoint, "tp-bench", {os.path.basename(f): f for f in files})
            env = {k: v for k, v in remote_bench.child_env(endpoint).items() if k.startswith("AWS_")}
            env["FST_BENCH_URLS"] = json.dumps([f"s3://tp-bench/{os.path.basename(f)}" for f in files])
            yield env
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _warm(files: List[str]) -> None:
    """Reads every file once so that each case starts from a warm page cache."""
    for f in files:
        with open(f, "rb") as h:
            while h.read(64 << 20):
                pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--dir", help="reuse/keep the checkpoint in this directory")
    ap.add_argument("--peer", default=PEER_DEFAULT, help="folder holding fastsafetensors 0.5.0")
    ap.add_argument("--timeout", type=float, default=150)
    ap.add_argument("--op", choices=["as_dict", "get_tensor"], default="as_dict",
                    help="as_dict with TP dims (default), or get_tensor of every tensor (whole) on every rank")
    ap.add_argument("--store", choices=["moto", "seaweedfs"], help="load s3:// objects from this local server")
    args = ap.parse_args()
    directory = args.dir or tempfile.mkdtemp(prefix="fst-tp-bench-")
    try:
        os.makedirs(directory, exist_ok=True)
        files = sorted(os.path.join(directory, f) for f in os.listdir(directory) if f.endswith(".safetensors"))
        if not files:
            files = write_checkpoint(directory, args.gb)
        with object_store(args.store, files) if args.store else contextlib.nullcontext() as store:
            _run(args, files, store)
    finally:
        if not args.dir:
            shutil.rmtree(directory, ignore_errors=True)


def _run(args: argparse.Namespace, files: List[str], store: Optional[Dict[str, str]]) -> None:
    total = sum(os.path.getsize(f) for f in files)
    peer = os.path.isdir(args.peer) and store is None
    impls = ["ours-default", "ours-direct", "ours-scatter"] + (["fst05"] if peer else [])
    best: Dict[str, dict] = {}
    for trial in range(args.trials):
        # interleaved and rotated (the first case after a pause ran slower here), so drift of the
        # shared machine and position in the round hit every case alike
        for impl in impls[trial % len(impls):] + impls[:trial % len(impls)]:
            _warm(files)
            rows = run_impl(impl, args.world, files, args.peer, args.timeout, args.op, store)
            slowest = max(rows, key=lambda r: r["total_s"])
            slowest["cpu_s"] = sum(r["cpu_s"] for r in rows)  # all ranks together
            if not all(r["verified"] for r in rows):
                print(f"WARNING: {impl}: blocks differ from safetensors", flush=True)
            if impl not in best or slowest["total_s"] < best[impl]["total_s"]:
                best[impl] = {**slowest, "bytes_per_rank": [r["bytes_read"] for r in rows],
                              "remote_per_rank": [(r["remote_bytes"], r["remote_requests"], r["gap_bytes"])
                                                  for r in rows]}
    where = f"s3:// objects on a local {args.store} server" if store else "warm cache"
    print(f"{args.op}: checkpoint {total / 1e9:.2f} GB in {len(files)} files, {args.world} gloo ranks, {where}, "
          f"best of {args.trials} (time: slowest rank; CPU: all ranks, user+sys)")
    print(f"{'impl':14} {'total s':>8} {'copy s':>8} {args.op + ' s':>9} {'CPU s':>6} {'verified':>8}  bytes read per rank")
    for impl, r in best.items():
        per_rank = ", ".join(f"{b / 1e6:.0f} MB" for b in r["bytes_per_rank"] if b is not None) or "-"
        print(f"{impl:14} {r['total_s']:8.3f} {r['copy_s']:8.3f} {r['op_s']:9.3f} {r['cpu_s']:6.2f} {str(r['verified']):>8}  "
              f"{per_rank}")
    if store:
        print("received per rank (fraction of the files' bytes; GETs; gap bytes fetched and dropped):")
        for impl, r in best.items():
            print(f"  {impl:14} " + "; ".join(f"{b / total:.3f} ({b / 1e6:.0f} MB), {n} GETs, gap {g / 1e6:.0f} MB"
                                              for b, n, g in r["remote_per_rank"]))
    split, replicated = _split_bytes(files)
    if args.op == "as_dict":
        print(f"direct-read budget per rank: split/N + replicated = {(split / args.world + replicated) / 1e6:.0f} MB")
    if "fst05" in best:
        for impl in ("ours-default", "ours-direct", "ours-scatter"):
            print(f"speed-up of {impl} over fastsafetensors 0.5.0: {best['fst05']['total_s'] / best[impl]['total_s']:.2f}x")
    print(json.dumps(best))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--rank-worker":
        impl, rank, world, port, files, peer, op, urls = sys.argv[2:10]
        rank_main(impl, int(rank), int(world), int(port), json.loads(files), peer, op, json.loads(urls) if urls else None)
    else:
        main()
