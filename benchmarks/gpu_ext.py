"""Our loader as `ext:` cases of the shared GPU harness (../shared/gpu-bench/peers_bench.py):

    CASES=ext:$PWD/benchmarks/gpu_ext.py:load_torch,ext:$PWD/benchmarks/gpu_ext.py:load_jax,...

Each `load(files)` returns every tensor on cuda:0. Importing this module does what the harness
does for peer cases before it starts the clock: initialise CUDA in the framework the case uses
(torch, or JAX for the *_jax cases). Everything of ours (finding the CUDA runtime, pinning the
staging slots, allocating the outputs) happens inside the timed call.
"""

from __future__ import annotations

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


def load_torch(files):
    """fastsafetensors.load into torch: staging + page-cache DMA, no cuFile."""
    return fastsafetensors.load(files, framework="torch", device="cuda:0")


def load_jax(files):
    """fastsafetensors.load into JAX arrays JAX allocated itself."""
    return fastsafetensors.load(files, framework="jax", device="cuda:0")


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
    return load_torch(files)


def load_torch_mapped(files):
    """Page-cache DMA only for cached files."""
    os.environ["FASTSAFETENSORS_MAPPING"] = "only"
    return load_torch(files)
