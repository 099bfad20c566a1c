"""Transforms across processes: 2 and 4 JAX processes on 127.0.0.1 share 8 CPU devices; every leaf
is sharded over all of them, so each process must read exactly 1/N of the source bytes of the
leaves, and its shards must be bit-exact against NumPy on the full tensors.

This file is also the worker: ``python test_jax_transforms_multihost.py CKPT PORT N PROCESS_ID RESULT_JSON``.
"""

import json
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS, EMBED, HEADS, HEAD_DIM, KV = 2, 64, 8, 8, 16


def _transforms(fj):
    layer = r"l\.(\d+)\.q"
    return {
        "qkv": fj.stack(layer, lambda i: fj.transpose(fj.concat([f"l.{i}.q", f"l.{i}.k", f"l.{i}.v"]))),
        "heads": fj.reshape(fj.transpose("l.1.q"), (EMBED, HEADS, HEAD_DIM)),
        "rows": fj.transpose("l.0.o"),
    }


def _reference(r):
    return {
        "qkv": np.stack([np.concatenate([r[f"l.{i}.{p}"] for p in "qkv"]).T for i in range(LAYERS)]),
        "heads": r["l.1.q"].T.reshape(EMBED, HEADS, HEAD_DIM),
        "rows": r["l.0.o"].T,
    }


def worker(ckpt: str, port: int, n: int, process_id: int, result: str) -> None:
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=n, process_id=process_id,
                               initialization_timeout=60)
    from jax.sharding import Mesh, PartitionSpec as P
    from safetensors.numpy import load_file

    import fastsafetensors.jax as fj

    mesh = Mesh(np.array(jax.devices()).reshape(n, 8 // n), ("p", "d"))
    all_ = ("p", "d")
    rules = [("qkv", P(None, None, all_)), ("heads", P(None, all_, None)), ("rows", P(all_))]
    metrics = fj.JaxLoadMetrics()
    out = fj.load(ckpt, mesh=mesh, rules=rules, transforms=_transforms(fj), metrics=metrics)
    ref = _reference(load_file(ckpt))
    mismatches = [f"{name} {s.index}" for name, arr in out.items() for s in arr.addressable_shards
                  if np.asarray(s.data).tobytes() != np.ascontiguousarray(ref[name][s.index]).tobytes()]
    with open(result, "w") as f:
        json.dump({"process_index": jax.process_index(), "bytes_read": metrics.bytes_read, "mismatches": mismatches,
                   "shards": sum(len(a.addressable_shards) for a in out.values())}, f)
    jax.distributed.shutdown()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("n", [2, 4])
def test_each_process_reads_its_share(tmp_path, n):
    torch = pytest.importorskip("torch")
    pytest.importorskip("jax")
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(3)
    tensors = {}
    for i in range(LAYERS):
        tensors[f"l.{i}.q"] = torch.randn(HEADS * HEAD_DIM, EMBED, generator=gen).to(torch.bfloat16)
        tensors[f"l.{i}.k"] = torch.randn(KV, EMBED, generator=gen).to(torch.bfloat16)
        tensors[f"l.{i}.v"] = torch.randn(KV, EMBED, generator=gen).to(torch.bfloat16)
        tensors[f"l.{i}.o"] = torch.randn(EMBED, HEADS * HEAD_DIM, generator=gen)
    ckpt = tmp_path / "m.safetensors"
    save_file(tensors, str(ckpt))
    nbytes = {k: v.numel() * v.element_size() for k, v in tensors.items()}
    # The source bytes of each leaf: qkv reads every q, k, v; heads reads l.1.q again; rows l.0.o.
    wanted = sum(nbytes[f"l.{i}.{p}"] for i in range(LAYERS) for p in "qkv") + nbytes["l.1.q"] + nbytes["l.0.o"]

    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={8 // n}",
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    from tests.processes import free_port, run_all  # here: the workers run this file as a script

    port = free_port()
    results = [tmp_path / f"r{i}.json" for i in range(n)]
    run_all([[sys.executable, os.path.abspath(__file__), str(ckpt), str(port), str(n), str(i), str(results[i])]
             for i in range(n)], env=env, cwd=str(tmp_path), log_dir=tmp_path, timeout=240)
    for i, path in enumerate(results):
        r = json.loads(path.read_text())
        assert r["process_index"] == i
        assert r["mismatches"] == []
        assert r["shards"] == 3 * (8 // n)
        assert r["bytes_read"] == wanted // n, (r["bytes_read"], wanted, n)  # exactly 1/N


if __name__ == "__main__":
    worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
