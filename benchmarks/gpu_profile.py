"""Where a GPU load's time goes, in one process: first load (pays one-time costs: CUDA runtime
lookup, pinning the staging slots) vs. later ones, each read path alone, and JAX's allocation.

    python3 benchmarks/gpu_profile.py CHECKPOINT_DIR
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import torch  # noqa: E402

import fastsafetensors  # noqa: E402
from fastsafetensors._src import device_engine  # noqa: E402


def run(label: str, files, framework: str = "torch", env=None, **kw) -> None:
    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        m = fastsafetensors.LoadMetrics()
        t0 = time.perf_counter()
        out = fastsafetensors.load(files, framework=framework, device="cuda:0", metrics=m, **kw)
        if framework == "jax":
            for v in out.values():
                v.block_until_ready()
        dt = time.perf_counter() - t0
        phases = " ".join(f"{k}={v * 1e3:.0f}ms" for k, v in m.seconds.items())
        paths = " ".join(f"{k}={v / 1e9:.2f}GB" for k, v in m.bytes_per_path.items())
        print(f"{label:28} {dt:6.3f}s {m.bytes_read / dt / 1e9:6.1f} GB/s | {phases} | {paths}", flush=True)
        del out
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def main() -> None:
    d = sys.argv[1]
    files = sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".safetensors"))
    torch.cuda.init()
    torch.empty(1, device="cuda")
    t0 = time.perf_counter()
    dev = device_engine.cuda_device(0)
    print(f"cuda_device: {(time.perf_counter() - t0) * 1e3:.1f} ms ({dev.name})")
    run("torch first", files)
    run("torch second", files)
    run("torch third", files)
    run("staging only", files, env={"FASTSAFETENSORS_MAPPING": "0"})
    run("mapping only", files, env={"FASTSAFETENSORS_MAPPING": "only"})
    device_engine.release_device_readers()
    run("cudaHostAlloc slots (first)", files, env={"FASTSAFETENSORS_PIN": "alloc"})
    run("cudaHostAlloc slots", files, env={"FASTSAFETENSORS_PIN": "alloc"})
    for lanes in ("1", "4"):
        device_engine.release_device_readers()
        run(f"map lanes {lanes} (first)", files, env={"FASTSAFETENSORS_MAP_LANES": lanes})
        run(f"map lanes {lanes}", files, env={"FASTSAFETENSORS_MAP_LANES": lanes})
    for mb in ("64", "512"):
        run(f"staging {mb} MiB (first)", files, env={"FASTSAFETENSORS_STAGING_MB": mb})
        run(f"staging {mb} MiB", files, env={"FASTSAFETENSORS_STAGING_MB": mb})
    for threads in (8, 24):
        run(f"threads {threads} (first)", files, threads=threads)
        run(f"threads {threads}", files, threads=threads)
    try:
        import jax

        jax.devices()
        run("jax first", files, framework="jax")
        run("jax second", files, framework="jax")
    except ImportError:
        pass


if __name__ == "__main__":
    main()
