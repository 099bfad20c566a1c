"""ROCm ATOM's call sequence: ``fastsafe_open(filenames=..., framework="pt", pg=, device=, nogds=,
debug_log=)`` with a list of files or a ``{rank: [files]}`` map, ``f.keys()``, ``f.get_tensor(name)``
— in one process and over 2 gloo ranks, bit for bit against safetensors."""

from __future__ import annotations


import pytest

pytest.importorskip("torch")

from fastsafetensors import fastsafe_open  # noqa: E402

from . import ranks  # noqa: E402
from .ranks import reference, same  # noqa: E402


def _read_all(f, files, what):
    ref = reference(tuple(files))
    keys = list(f.keys())
    assert sorted(keys) == sorted(ref), f"{what}: keys {sorted(keys)}"
    for k in keys:
        same(f.get_tensor(k), ref[k], f"{what} {k}")


def seq_file_list(pg, files):
    """A list: rank 0 reads the files, every rank gets every tensor."""
    with fastsafe_open(filenames=files, framework="pt", pg=pg, device="cpu", nogds=True, debug_log=False) as f:
        _read_all(f, files, "list")


def seq_rank_map(pg, files):
    """A {rank: [files]} map: each rank reads its own files."""
    world = pg.size()
    by_rank = {r: files[r::world] for r in range(world)}
    with fastsafe_open(filenames=by_rank, framework="pt", pg=pg, device="cpu", nogds=True, debug_log=False) as f:
        _read_all(f, files, "rank map")


def seq_one_file_per_call(pg, files):
    """ATOM's per-file loop: one fastsafe_open per file, tensors kept after each closes."""
    kept = {}
    for path in files:
        with fastsafe_open(filenames=[path], framework="pt", pg=pg, device="cpu", nogds=True) as f:
            kept.update({k: f.get_tensor(k) for k in f.keys()})
    ref = reference(tuple(files))
    assert sorted(kept) == sorted(ref)
    for k, t in kept.items():
        same(t, ref[k], k)


test_single_process, test_two_ranks = ranks.client_tests(__name__)
