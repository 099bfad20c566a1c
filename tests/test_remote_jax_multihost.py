"""Sharded JAX loads from s3://: two jax.distributed processes on 127.0.0.1 (4 CPU devices each, one
mesh over all 8) load one object from moto's S3 server; each must GET only the byte ranges of its
own devices' shards (about half of the sharded bytes), bit for bit.

This file is also the worker: ``python test_remote_jax_multihost.py URL ENDPOINT PORT PROCESS_ID RESULT_JSON REF``.
"""

import json
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPECS = {"rows": ("p", "d"), "cols": (None, ("p", "d")), "norm": ()}
SHARDED = ("rows", "cols")
HEADER_KB = 4


def worker(url: str, endpoint: str, port: int, process_id: int, result: str, ref_path: str) -> None:
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id,
                               initialization_timeout=60)
    from jax.sharding import Mesh, PartitionSpec as P
    from safetensors.numpy import load_file

    import fastsafetensors.jax as fj
    from tests.remote_servers import storage_options

    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("p", "d"))
    metrics = fj.JaxLoadMetrics()
    out = fj.load(url, mesh=mesh, rules=[(f"^{k}$", P(*v)) for k, v in SPECS.items()], metrics=metrics,
                  storage_options=storage_options(endpoint))
    ref = load_file(ref_path)
    mismatches = [f"{name} {s.index}" for name, arr in out.items() for s in arr.addressable_shards
                  if np.asarray(s.data).tobytes() != np.ascontiguousarray(ref[name][s.index]).tobytes()]
    with open(result, "w") as f:
        json.dump({"remote_bytes": metrics.remote_bytes, "bytes_read": metrics.bytes_read,
                   "gap_bytes": metrics.gap_bytes, "mismatches": mismatches,
                   "shards": sum(len(a.addressable_shards) for a in out.values())}, f)
    jax.distributed.shutdown()


@pytest.mark.timeout(240)
def test_two_processes_get_half_each(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("jax")
    pytest.importorskip("obstore", reason="the remote tests need obstore (pip install fastsafetensors[remote])")
    from safetensors.torch import save_file

    from tests.remote_servers import free_port, moto_server, upload

    gen = torch.Generator().manual_seed(5)
    # Rows of `cols` are 256 KiB: each process's half of a row is one run, more than the default
    # 64 KiB gap apart from its next one, so it never fetches the other process's half.
    tensors = {"rows": torch.randn(256, 512, generator=gen), "cols": torch.randn(16, 65536, generator=gen),
               "norm": torch.randn(512, generator=gen)}
    ckpt = tmp_path / "m.safetensors"
    save_file(tensors, str(ckpt))
    sharded = sum(tensors[k].numel() * tensors[k].element_size() for k in SHARDED)
    replicated = tensors["norm"].numel() * 4
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               FASTSAFETENSORS_REMOTE_HEADER_KB=str(HEADER_KB),
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    with moto_server() as endpoint:
        upload(endpoint, "ckpt", {"m/m.safetensors": str(ckpt)})
        port = free_port()
        results = [tmp_path / f"r{i}.json" for i in range(2)]
        from tests.processes import run_all  # here: the workers run this file as a script

        run_all([[sys.executable, os.path.abspath(__file__), "s3://ckpt/m/m.safetensors", endpoint, str(port), str(i),
                  str(results[i]), str(ckpt)] for i in range(2)], env=env, cwd=ROOT, log_dir=tmp_path, timeout=180)
    for i in range(2):
        r = json.loads(results[i].read_text())
        assert r["mismatches"] == [] and r["shards"] == 3 * 4
        assert r["bytes_read"] == sharded // 2 + replicated, r
        # Received: the header GET (HEADER_KB) and this process's bytes, nothing of the other's.
        assert r["remote_bytes"] <= sharded // 2 + replicated + (HEADER_KB << 10) + r["gap_bytes"], r
        assert r["gap_bytes"] == 0, r


if __name__ == "__main__":
    worker(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6])
