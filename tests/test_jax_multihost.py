"""Multi-host: two JAX processes on 127.0.0.1 with 4 CPU devices each and one mesh over all 8.
Each process must read only the shards of its own devices, bit-exact.

This file is also the worker: ``python test_jax_multihost.py CKPT PORT PROCESS_ID RESULT_JSON``.
"""

import json
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# name -> PartitionSpec over mesh axes ("p": one row of the mesh per process, "d": devices in a process)
SPECS = {"rows": ("p", "d"), "cols": (None, ("p", "d")), "mixed": ("d", "p"), "norm": ()}
SHARDED = ("rows", "cols", "mixed")  # norm is replicated: every process reads it whole


def worker(ckpt: str, port: int, process_id: int, result: str) -> None:
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id,
                               initialization_timeout=60)
    from jax.sharding import Mesh, PartitionSpec as P
    from safetensors.numpy import load_file

    import fastsafetensors.jax as fj

    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("p", "d"))
    metrics = fj.JaxLoadMetrics()
    out = fj.load(ckpt, mesh=mesh, rules=[(f"^{k}$", P(*v)) for k, v in SPECS.items()], metrics=metrics)
    ref = load_file(ckpt)
    mismatches = [f"{name} {s.index}" for name, arr in out.items() for s in arr.addressable_shards
                  if np.asarray(s.data).tobytes() != np.ascontiguousarray(ref[name][s.index]).tobytes()]
    # The arrays are global: a jitted reduction over all 8 devices sees both processes' shards.
    total = float(jax.jit(lambda x: x.sum(dtype=np.float32))(out["cols"]))
    with open(result, "w") as f:
        json.dump({"process_index": jax.process_index(), "process_count": jax.process_count(),
                   "devices": len(jax.devices()), "local_devices": len(jax.local_devices()),
                   "bytes_read": metrics.bytes_read, "tensors_per_strategy": metrics.tensors_per_strategy, "bytes_per_device": metrics.bytes_per_device,
                   "shards": sum(len(a.addressable_shards) for a in out.values()),
                   "mismatches": mismatches, "total": total, "ref_total": float(ref["cols"].sum(dtype=np.float32))},
                  f)
    jax.distributed.shutdown()


@pytest.mark.timeout(240)
def test_two_processes_read_half_each(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("jax")
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(2)
    ckpt = tmp_path / "m.safetensors"
    tensors = {"rows": torch.randn(64, 48, generator=gen), "cols": torch.randn(40, 64, generator=gen),
               "mixed": torch.randn(32, 16, generator=gen).to(torch.bfloat16), "norm": torch.randn(48, generator=gen)}
    save_file(tensors, str(ckpt))
    sharded = sum(tensors[k].numel() * tensors[k].element_size() for k in SHARDED)
    replicated = tensors["norm"].numel() * 4

    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    from tests.processes import free_port, run_all  # here: the workers run this file as a script

    port = free_port()
    results = [tmp_path / f"r{i}.json" for i in range(2)]
    run_all([[sys.executable, os.path.abspath(__file__), str(ckpt), str(port), str(i), str(results[i])] for i in range(2)],
            env=env, cwd=str(tmp_path), log_dir=tmp_path, timeout=180)

    for i, path in enumerate(results):
        r = json.loads(path.read_text())
        assert (r["process_index"], r["process_count"], r["devices"], r["local_devices"]) == (i, 2, 8, 4)
        assert r["mismatches"] == []
        assert r["shards"] == 4 * len(SPECS)
        # Half of every sharded tensor, plus the replicated one whole: within 5% of that.
        assert abs(r["bytes_read"] - replicated - sharded / 2) <= 0.05 * sharded / 2, r["bytes_read"]
        assert len(r["bytes_per_device"]) == 4
        assert r["tensors_per_strategy"] == {"per_device": len(SPECS), "scatter": 0}
        assert r["total"] == pytest.approx(r["ref_total"], rel=1e-5)


if __name__ == "__main__":
    worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
