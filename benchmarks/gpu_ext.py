"""Our loader as `ext:` cases of the shared GPU harness (../shared/gpu-bench/peers_bench.py):

    CASES=ext:$PWD/benchmarks/gpu_ext.py:load_torch,ext:$PWD/benchmarks/gpu_ext.py:load_jax,...

Each `load(files)` returns every tensor on cuda:0. Importing this module does what the harness
does for peer cases before it starts the clock: initialise CUDA in the framework the case uses
(torch, or JAX for the *_jax cases). Everything of ours (finding the CUDA runtime, pinning the
staging slots, allocating the outputs) happens inside the timed call.

With RESULTS set (benchmarks/gpu_check.sh sets it), load_torch and load_jax also append to
RESULTS/memory.jsonl the GPU memory the load used beyond its outputs: the framework's peak
device memory during the load (torch: max_memory_reserved; JAX: peak_bytes_in_use) minus what
it held before and minus the outputs' bytes.
"""

from __future__ import annotations

import json
import os
import sys

_CASE = " ".join(sys.argv)
if "_jax" in _CASE:
    import jax
    import jax.numpy as jnp

    # JAX reserves its GPU memory pool at the first allocation (about 2 s on an H200): done here,
    # as the harness creates torch's CUDA context before timing the torch cases.
    jnp.zeros(1, device=jax.devices("gpu")[0]).block_until_ready()
else:
    import torch

    torch.cuda.init()
    torch.empty(1, device="cuda")

import fastsafetensors  # noqa: E402


def _record_memory(case: str, before: int, peak: int, out) -> None:
    """Appends this load's GPU memory beyond its outputs to RESULTS/memory.jsonl."""
    results = os.environ.get("RESULTS")
    if not results:
        return
    out_bytes = sum(t.nbytes for t in out.values())
    row = {"case": case, "out_GB": round(out_bytes / 1e9, 3),
           "beyond_MB": round((peak - before - out_bytes) / 2**20, 1)}
    with open(os.path.join(results, "memory.jsonl"), "a") as f:
        f.write(json.dumps(row) + "\n")


def _load_torch(files, case: str):
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_reserved()
    out = fastsafetensors.load(files, framework="torch", device="cuda:0")
    _record_memory(case, before, torch.cuda.max_memory_reserved(), out)
    return out


def load_torch(files):
    """fastsafetensors.load into torch: staging lanes, no cuFile."""
    return _load_torch(files, "load_torch")


def load_jax(files):
    """fastsafetensors.load into JAX arrays JAX allocated itself (one allocation per load). The
    outputs are DLPack views that JAX's allocator does not count, so its peak minus what it held
    before is the allocation itself (outputs and padding) plus any temporaries."""
    dev = jax.devices("gpu")[0]
    before = dev.memory_stats()["bytes_in_use"]
    out = fastsafetensors.load(files, framework="jax", device="cuda:0")
    _record_memory("load_jax", before, dev.memory_stats()["peak_bytes_in_use"], out)
    return out


def load_sharded_jax(files):
    """fastsafetensors.jax.load (the JAX-first API) to one GPU: every tensor whole, read through
    the device engine into one JAX allocation (docs/jax.md, GPUs)."""
    import fastsafetensors.jax as fj

    dev = jax.devices("gpu")[0]
    before = dev.memory_stats()["bytes_in_use"]
    out = fj.load(files, dev)
    _record_memory("load_sharded_jax", before, dev.memory_stats()["peak_bytes_in_use"], out)
    return out


def _load_03(files, nogds: bool, **kw):
    loader = fastsafetensors.SafeTensorsFileLoader(fastsafetensors.SingleGroup(), "cuda:0", nogds=nogds, **kw)
    loader.add_filenames({0: list(files)})
    fb = loader.copy_files_to_device()
    return {k: fb.get_tensor(k) for k in fb.get_keys()}


def load_torch_gds(files):
    """The 0.3 API with nogds=False: cuFile for files outside the page cache, buffered otherwise.
    A failed GDS set-up is retried with nogds=True, as inference servers do (noted on stderr)."""
    try:
        return _load_03(files, nogds=False, bbuf_size_kb=128 * 1024)
    except RuntimeError as exc:
        if "gds" not in str(exc):
            raise
        print(f"gds failed, retrying with nogds=True: {exc}", file=sys.stderr)
        return _load_03(files, nogds=True, bbuf_size_kb=128 * 1024)


def load_torch_nogds(files):
    """The 0.3 API with nogds=True, as inference servers call it (16 MiB of staging by default)."""
    return _load_03(files, nogds=True)


def load_torch_staged(files):
    """Staging lanes only (no page-cache DMA), to see what each path gives."""
    os.environ["FASTSAFETENSORS_MAPPING"] = "0"
    return _load_torch(files, "load_torch_staged")


def load_torch_mapped(files):
    """Page-cache DMA only for cached files."""
    os.environ["FASTSAFETENSORS_MAPPING"] = "only"
    return _load_torch(files, "load_torch_mapped")
