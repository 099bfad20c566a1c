"""JAX loads on the CPU with 8 fake devices: fastsafetensors.jax against safetensors.flax.

Writes a Llama-shaped bf16 checkpoint (about 1.06 GB by default) with safetensors, then for
column- and row-sharded layouts over a 1x8 mesh times, in the same run:

* ``safetensors.flax.load_file`` followed by ``jax.device_put`` to the same shardings (the peer),
* ``fastsafetensors.jax.load`` with strategy ``per_device`` (what ``auto`` picks) and ``scatter``,
  and ``per_device`` once more with the host cache off (every buffer in fresh pages, as in the
  first load of a process; with the cache, a load reuses the pages of the previous trial's arrays),

and reports ratios against the peer (page cache warm: the file was just written). Then it times
the first load of a new process, peer and ours each in fresh children, as a server starting up does
it. Then it starts
N processes (jax.distributed on 127.0.0.1, 8/N devices each, one mesh over all 8) and reports the
bytes each process read for N-way sharding, as a fraction of the checkpoint.

With ``--transforms`` it times instead, each load in a fresh process, the checkpoint into the
layout of examples/flax_llama_scan.py (layers stacked, (in, out) kernels, heads split, q/k/v
fused) on a 2x4 mesh: ``fastsafetensors.jax.load(..., transforms=...)`` against (a)
``safetensors.numpy`` + the same transforms in NumPy + ``jax.make_array_from_callback`` and (b)
Orbax's safetensors layout (``orbax.checkpoint.v1``, sources sharded by their first axis) + the
same transforms in ``jax.jit`` with ``out_shardings``; with each one's peak host memory.

    python benchmarks/jax_bench.py [--layers 9] [--repeat 3] [--procs 2 4] [--transforms]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

if "--worker" not in sys.argv:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

LAYOUTS = {
    # every 2-D weight split along its last axis (columns: small strided runs) or its first (rows)
    "column": [(r"(proj|embed_tokens|lm_head)\.weight$", P(None, "model"))],
    "row": [(r"(proj|embed_tokens|lm_head)\.weight$", P("model", None))],
}


def write_checkpoint(path: str, layers: int, hidden: int = 2048, inter: int = 5632, vocab: int = 32000,
                     kv: int = 256) -> int:
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(0)

    def w(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float32).to(torch.bfloat16)

    tensors = {"model.embed_tokens.weight": w(vocab, hidden), "lm_head.weight": w(vocab, hidden),
               "model.norm.weight": w(hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        tensors.update({p + "self_attn.q_proj.weight": w(hidden, hidden), p + "self_attn.k_proj.weight": w(kv, hidden),
                        p + "self_attn.v_proj.weight": w(kv, hidden), p + "self_attn.o_proj.weight": w(hidden, hidden),
                        p + "mlp.gate_proj.weight": w(inter, hidden), p + "mlp.up_proj.weight": w(inter, hidden),
                        p + "mlp.down_proj.weight": w(hidden, inter), p + "input_layernorm.weight": w(hidden),
                        p + "post_attention_layernorm.weight": w(hidden)})
    save_file(tensors, path)
    return os.path.getsize(path)


def shardings_for(names, mesh, rules):
    from fastsafetensors._src.jax.placement import rule_sharding

    place = rule_sharding(mesh, rules)
    return {n: place(n) for n in names}


def run_peer(path, mesh, rules):
    from safetensors.flax import load_file

    t0 = time.perf_counter()
    host = load_file(path)
    out = jax.device_put(host, shardings_for(host, mesh, rules))
    jax.block_until_ready(out)
    return time.perf_counter() - t0


def run_ours(path, mesh, rules, strategy, host_cache=True):
    import fastsafetensors.jax as fj
    from fastsafetensors import host_cache as cache

    limit = cache.stats()["limit"]
    if not host_cache:  # every buffer from fresh pages, as in a process's first load
        cache.configure(limit_bytes=0)
    try:
        m = fj.JaxLoadMetrics()
        t0 = time.perf_counter()
        out = fj.load(path, mesh=mesh, rules=rules, strategy=strategy, metrics=m)
        jax.block_until_ready(out)
        return time.perf_counter() - t0, m
    finally:
        cache.configure(limit_bytes=limit)  # the only bound changed above


def settle(timeout=5.0):
    """Frees what the last trial returned and waits until the host cache's background thread has
    handed it to the kernel, so that no trial pays for the one before it."""
    from fastsafetensors import host_cache

    gc.collect()  # JAX drops its references to imported host memory from a GC callback: run it now
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        s = host_cache.stats()
        if s["lazy_bytes"] == s["bytes"]:
            return
        time.sleep(0.01)


def single_process(path, size, repeat):
    """Trials interleave the peer and each of our strategies, so that whatever the machine does in
    between (page reclaim, another tenant) falls on all of them alike; the best trial of each counts."""
    mesh = Mesh(np.array(jax.devices()), ("model",))
    print(f"checkpoint {size / 1e9:.3f} GB, {len(jax.devices())} CPU devices, warm page cache, "
          f"best of {repeat} interleaved trials")
    for layout, rules in LAYOUTS.items():
        cases = {"safetensors.flax + device_put": lambda: (run_peer(path, mesh, rules), None),
                 "fastsafetensors per_device (auto)": lambda: run_ours(path, mesh, rules, "per_device"),
                 "  same, host cache off": lambda: run_ours(path, mesh, rules, "per_device", host_cache=False),
                 "fastsafetensors scatter": lambda: run_ours(path, mesh, rules, "scatter")}
        trials = {name: [] for name in cases}
        for _ in range(repeat):
            for name, fn in cases.items():
                trials[name].append(fn())
                settle()
        best = {name: min(runs, key=lambda r: r[0]) for name, runs in trials.items()}
        peer = best["safetensors.flax + device_put"][0]
        for name, (t, m) in best.items():
            line = f"  {layout:7s} {name:34s} {t:7.3f} s  {size / t / 1e9:6.2f} GB/s  x{peer / t:5.2f} vs peer"
            if m is not None:
                phases = ", ".join(f"{k} {v:.3f}" for k, v in m.seconds.items())
                line += f"  (read {m.bytes_read / 1e9:.3f} GB in {m.read_calls} reads; {phases})"
            print(line)


def first_load(case, layout, path):
    """Child of first_loads: one load in a fresh process (imports done, timing the load alone)."""
    import fastsafetensors.jax  # noqa: F401
    from safetensors.flax import load_file  # noqa: F401

    mesh = Mesh(np.array(jax.devices()), ("model",))
    t = run_peer(path, mesh, LAYOUTS[layout]) if case == "peer" else run_ours(path, mesh, LAYOUTS[layout], "auto")[0]
    print(json.dumps({"seconds": t}), flush=True)


def first_loads(path, size, rounds):
    """The load a server does once at start-up: every buffer in fresh pages, nothing to reuse."""
    print(f"first load in a new process (median of {rounds}, peer and ours alternating; the load call alone)")
    for layout in LAYOUTS:
        times = {"peer": [], "ours": []}
        for _ in range(rounds):
            for case in times:
                done = subprocess.run([sys.executable, __file__, "--first", case, layout, path], capture_output=True,
                                      text=True, timeout=300, check=True)
                times[case].append(json.loads(done.stdout.strip().splitlines()[-1])["seconds"])
        peer, ours = (sorted(times[c])[len(times[c]) // 2] for c in ("peer", "ours"))
        print(f"  {layout:7s} safetensors.flax + device_put {peer:.3f} s, fastsafetensors {ours:.3f} s "
              f"({size / ours / 1e9:.2f} GB/s)  x{peer / ours:5.2f} vs peer")


def worker(path, port, procs, pid, layout):
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=procs, process_id=pid, initialization_timeout=120)
    import fastsafetensors.jax as fj

    mesh = Mesh(np.array(jax.devices()), ("model",))
    m = fj.JaxLoadMetrics()
    t0 = time.perf_counter()
    jax.block_until_ready(fj.load(path, mesh=mesh, rules=LAYOUTS[layout], metrics=m))
    print(json.dumps({"pid": pid, "bytes_read": m.bytes_read, "seconds": time.perf_counter() - t0,
                      "phases": m.seconds}), flush=True)
    jax.distributed.shutdown()


def multi_process(path, size, nprocs):
    print("bytes read per process, N-way sharding over 8 devices in N processes (target <= 1/N + 5%)")
    for layout in LAYOUTS:
        for n in nprocs:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={8 // n}")
            procs = [subprocess.Popen([sys.executable, __file__, "--worker", path, str(port), str(n), str(i), layout],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                     for i in range(n)]
            try:
                outs = [json.loads(p.communicate(timeout=300)[0].strip().splitlines()[-1]) for p in procs]
            finally:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
                    p.wait()
            worst = max(o["bytes_read"] for o in outs)
            slowest = max(outs, key=lambda o: o["seconds"])
            phases = ", ".join(f"{k} {v:.3f}" for k, v in slowest["phases"].items())
            print(f"  {layout:7s} N={n}: max {worst / 1e9:.3f} GB per process = {worst * n / size:.3f} x (1/N of "
                  f"the checkpoint); slowest process {slowest['seconds']:.2f} s ({phases})")


# ---------------------------------------------------------------- --transforms


def _scan_example():
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    import flax_llama_scan
    from flax_llama import LlamaShape

    return flax_llama_scan, LlamaShape


def _shape(layers):
    _, LlamaShape = _scan_example()
    return LlamaShape(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=layers,
                      num_attention_heads=16, num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=10000.0)


def peer_layout(t, c, xp):
    """The leaves of flax_llama_scan.transforms(c, fused_qkv=True), computed with ``xp`` (np or jnp)."""
    E, H, KV, D = c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim
    w = lambda i, n: t[f"model.layers.{i}.{n}.weight"]  # noqa: E731
    per = lambda f: xp.stack([f(i) for i in range(c.num_hidden_layers)])  # noqa: E731
    return {
        "layers.input_layernorm.weight": per(lambda i: w(i, "input_layernorm")),
        "layers.post_attention_layernorm.weight": per(lambda i: w(i, "post_attention_layernorm")),
        "layers.attn.qkv": per(lambda i: xp.concatenate([w(i, f"self_attn.{p}_proj") for p in "qkv"]).T.reshape(
            E, H + 2 * KV, D)),
        "layers.attn.o": per(lambda i: w(i, "self_attn.o_proj").T.reshape(H, D, E)),
        "layers.mlp.gate_up": per(lambda i: xp.stack([w(i, "mlp.gate_proj").T, w(i, "mlp.up_proj").T], axis=1)),
        "layers.mlp.down": per(lambda i: w(i, "mlp.down_proj").T),
        "embed.embedding": t["model.embed_tokens.weight"], "norm.weight": t["model.norm.weight"],
        "lm_head.kernel": t["lm_head.weight"].T,
    }


def transform_load(case, path, layers):
    """Child of transform_loads: one load in a fresh process; prints seconds and peak memory."""
    from cpu_bench import _memory_kb
    from fastsafetensors._src.jax.placement import rule_sharding
    import fastsafetensors.jax as fj
    import jax.numpy as jnp
    from orbax.checkpoint import v1 as ocp
    from safetensors.numpy import load_file

    scan, _ = _scan_example()
    c = _shape(layers)
    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))  # Auto axes: jit picks the layouts
    place = rule_sharding(mesh, scan.RULES)
    before = _memory_kb("VmRSS") * 1024
    t0 = time.perf_counter()
    if case == "ours":
        out = fj.load(path, mesh=mesh, rules=scan.RULES, transforms=scan.transforms(c, fused_qkv=True))
    elif case == "numpy":
        full = peer_layout(load_file(path), c, np)
        out = {k: jax.make_array_from_callback(v.shape, place(k), lambda idx, v=v: v[idx]) for k, v in full.items()}
        del full
    else:
        with ocp.Context(checkpoint_layout=ocp.options.CheckpointLayout.SAFETENSORS):
            meta = ocp.metadata(path).metadata
            rows = NamedSharding(mesh, P(("data", "model")))
            abstract = {k: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=rows if m.shape[0] % 8 == 0 else
                                                NamedSharding(mesh, P())) for k, m in meta.items()}
            src = ocp.load(path, abstract_state=abstract)
        leaves = list(peer_layout(src, c, jnp))
        fn = jax.jit(lambda t: peer_layout(t, c, jnp), out_shardings={k: place(k) for k in leaves})
        out = fn(src)
        del src
    jax.block_until_ready(out)
    seconds = time.perf_counter() - t0
    peak = _memory_kb("VmHWM") * 1024  # not ru_maxrss: a child starts from its parent's (here 0.95 GB)
    # distinct shards: replicas over "data" may share memory (ours) or not (the peers)
    shard_bytes = sum(sum({str(s.index): s.data.nbytes for s in a.addressable_shards}.values()) for a in out.values())
    print(json.dumps({"seconds": seconds, "peak_over_start": peak - before, "shard_bytes": shard_bytes}), flush=True)


def transform_loads(path, size, layers, rounds):
    cases = {"ours": "fastsafetensors.jax.load(transforms=)",
             "numpy": "(a) safetensors.numpy + NumPy + make_array_from_callback",
             "orbax": "(b) Orbax safetensors layout + jax.jit(out_shardings)"}
    print(f"checkpoint {size / 1e9:.3f} GB into the flax_llama_scan layout (heads split, q/k/v fused, layers "
          f"stacked) on a 2x4 mesh of 8 CPU devices; each load in a fresh process, median of {rounds}, cases "
          "alternating; peak = the process's peak RSS minus its RSS before the load, against the bytes of its "
          "distinct shards")
    runs = {c: [] for c in cases}
    for _ in range(rounds):
        for case in cases:
            done = subprocess.run([sys.executable, __file__, "--transform-case", case, path, str(layers)],
                                  capture_output=True, text=True, timeout=600)
            if done.returncode:
                raise RuntimeError(f"{case} failed:\n{done.stderr[-3000:]}")
            runs[case].append(json.loads(done.stdout.strip().splitlines()[-1]))
    med = {c: sorted(r, key=lambda o: o["seconds"])[len(r) // 2] for c, r in runs.items()}
    for case, label in cases.items():
        m = med[case]
        print(f"  {label:58s} {m['seconds']:7.3f} s  ({m['seconds'] / med['ours']['seconds']:5.2f} x ours)  "
              f"peak {m['peak_over_start'] / 1e9:.3f} GB = "
              f"{m['peak_over_start'] / m['shard_bytes']:.2f} x its distinct shards ({m['shard_bytes'] / 1e9:.3f} GB)")


def main():
    if sys.argv[1:2] == ["--transform-case"]:
        return transform_load(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    if sys.argv[1:2] == ["--worker"]:
        _, _, path, port, n, pid, layout = sys.argv
        return worker(path, int(port), int(n), int(pid), layout)
    if sys.argv[1:2] == ["--first"]:
        return first_load(*sys.argv[2:5])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=9, help="decoder layers (9: about 1.06 GB)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--procs", type=int, nargs="*", default=[2, 4], help="process counts for the bytes-read check")
    ap.add_argument("--dir", default=None, help="where to write the checkpoint (default: a temporary folder)")
    ap.add_argument("--transforms", action="store_true", help="only the layout-transform comparison (see above)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        path = os.path.join(d, "model.safetensors")
        size = write_checkpoint(path, args.layers)
        if args.transforms:
            return transform_loads(path, size, args.layers, args.repeat)
        single_process(path, size, args.repeat)
        first_loads(path, size, args.repeat)
        multi_process(path, size, args.procs)


if __name__ == "__main__":
    main()
