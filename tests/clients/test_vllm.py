"""vLLM's call sequences: ``ParallelLoader`` (main), and its expert-parallel loading with a
``tensor_filter``, ``all_local=True`` and ``pl.loader.copy_files_to_device`` wrapped to pass
``max_copy_block_size`` — in one process and over 2 gloo ranks, bit for bit against safetensors."""

from __future__ import annotations


import pytest

pytest.importorskip("torch")

from fastsafetensors import ParallelLoader, SafeTensorsFileLoader  # noqa: E402
from fastsafetensors.errors import ShardRequestError, TensorNotFound  # noqa: E402

from . import ranks  # noqa: E402
from .ranks import reference, same  # noqa: E402

EXPERT_BYTES = 256 * 512 * 2  # each experts.N.w (bf16)


def _my_experts(pg):
    """Expert-parallel ownership: rank r keeps experts r, r + n, ... (n: the world, at least 2, so
    one process drops some too) and every non-expert tensor."""
    rank, n = pg.rank(), max(2, pg.size())
    return lambda name: not name.startswith("experts.") or int(name.split(".")[1]) % n == rank


def _kept(files, keep):
    return sorted(n for n in reference(tuple(files)) if keep(n))


def _wrap_block_size(pl, block: int):
    """What vLLM does to pass its block size: wrap the loader's copy method, counting calls."""
    calls = []
    original = pl.loader.copy_files_to_device

    def copy_files_to_device(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, max_copy_block_size=block, **kwargs)

    pl.loader.copy_files_to_device = copy_files_to_device
    return calls


def _check_yielded(pl, files, keep, what):
    ref = reference(tuple(files))
    got = {}
    for name, t in pl.iterate_weights():
        assert name not in got, f"{what}: {name} yielded twice"
        got[name] = t
    assert sorted(got) == _kept(files, keep), f"{what}: yielded {sorted(got)}"
    for name, t in got.items():
        same(t, ref[name], f"{what} {name}")


def seq_main_parallel_loader(pg, files):
    """vLLM main: ParallelLoader(pg=, hf_weights_files=, queue_size=, use_tqdm_on_load=, device=, nogds=)."""
    pl = ParallelLoader(pg=pg, hf_weights_files=files, queue_size=0, use_tqdm_on_load=False, device="cpu", nogds=True)
    _check_yielded(pl, files, lambda n: True, "ParallelLoader")
    pl.close()


def seq_device_cpu_0(pg, files):
    """device=str(torch.device("cpu", 0)), i.e. "cpu:0", as a platform's current device prints."""
    import torch

    pl = ParallelLoader(pg=pg, hf_weights_files=files, queue_size=0, use_tqdm_on_load=False,
                        device=str(torch.device("cpu", 0)), nogds=True)
    _check_yielded(pl, files, lambda n: True, "ParallelLoader")
    pl.close()


def seq_expert_parallel_all_local(pg, files):
    """Each rank keeps its experts; all_local: every rank reads every file itself; the wrapped
    copy method is what reads each batch, with vLLM's block size."""
    keep = _my_experts(pg)
    pl = ParallelLoader(pg, files, tensor_filter=keep, all_local=True, max_threads=2, bbuf_size_kb=1024,
                        nogds=True, queue_size=-1, use_tqdm_on_load=False)
    calls = _wrap_block_size(pl, 64 * 1024)
    _check_yielded(pl, files, keep, "all_local")
    assert len(calls) == len(files), f"copy_files_to_device called {len(calls)} times for {len(files)} files"
    pl.close()


def seq_filter_in_group(pg, files):
    """Without all_local, a filter keeping different tensors per rank still yields each rank its own."""
    keep = _my_experts(pg)
    pl = ParallelLoader(pg, files, tensor_filter=keep, queue_size=1, use_tqdm_on_load=False, nogds=True)
    _check_yielded(pl, files, keep, "filter in group")


def seq_same_filter_scattered(pg, files):
    """A filter keeping the same tensors on every rank works when files are read by one rank each."""
    keep = lambda name: not name.startswith("experts.")  # noqa: E731
    pl = ParallelLoader(pg, files, tensor_filter=keep, direct_read=False, use_tqdm_on_load=False, nogds=True)
    _check_yielded(pl, files, keep, "same filter, scatter")


def seq_loader_filter_reads_only_kept(pg, files):
    """SafeTensorsFileLoader.set_tensor_filter: only kept tensors are read, listed and served."""
    keep = _my_experts(pg)
    world = pg.size()
    loader = SafeTensorsFileLoader(pg, "cpu", nogds=True)
    loader.set_tensor_filter(keep)
    loader.add_filenames({r: files[r::world] for r in range(world)})
    kept = _kept(files, keep)
    assert sorted(loader.get_keys()) == kept
    fb = loader.copy_files_to_device()
    assert sorted(fb.key_to_rank_lidx) == kept
    ref = reference(tuple(files))
    for name in kept:
        same(fb.get_tensor(name), ref[name], f"get_tensor {name}")
    dropped = [n for n in ref if n not in kept]
    assert dropped
    for name in dropped:
        with pytest.raises(TensorNotFound, match="filtered out"):
            fb.get_tensor(name)
        with pytest.raises(TensorNotFound, match="filtered out"):
            loader.get_shape(name)
    # The experts dropped here were not read.
    others = sum(1 for n in dropped if n.startswith("experts."))
    total = sum(v.numel() * v.element_size() for v in ref.values())
    assert fb.metrics.bytes_read <= total - others * EXPERT_BYTES, (fb.metrics.bytes_read, total)
    fb.close()
    loader.close()


def seq_different_filters_need_direct_reads(pg, files):
    """Different tensors per rank with direct_read=False: a clear error on every rank, no hang."""
    pl_args = dict(tensor_filter=_my_experts(pg), direct_read=False, use_tqdm_on_load=False, nogds=True)
    with pytest.raises(ShardRequestError, match="different tensors on different ranks"):
        ParallelLoader(pg, files, **pl_args)


def seq_memory_budgets(pg, files):
    """vLLM's open work: a device budget agreed by every rank, chunks allocated at their budget, a
    consumer that copies what it is given (accumulate_resident=False), a cap on each chunk."""
    pl = ParallelLoader(pg, files, device_memory_budget=4 * EXPERT_BYTES, max_batch_bytes=EXPERT_BYTES + 4096,
                        use_chunk_budget_as_allocation_size=True, accumulate_resident=False, queue_size=0,
                        use_tqdm_on_load=False, nogds=True)
    _check_yielded(pl, files, lambda n: True, "budgets")


def seq_budget_with_per_rank_filter(pg, files):
    """A budget with a filter keeping different experts per rank: ranks cut the same chunks."""
    keep = _my_experts(pg)
    pl = ParallelLoader(pg, files, tensor_filter=keep, max_batch_bytes=EXPERT_BYTES, resident_tensor=keep,
                        device_memory_budget=8 * EXPERT_BYTES, use_tqdm_on_load=False, nogds=True)
    _check_yielded(pl, files, keep, "budget and filter")


def seq_budget_infeasible_everywhere(pg, files):
    """A budget below the largest tensor: BudgetInfeasibleError on every rank, before any read."""
    from fastsafetensors.errors import BudgetInfeasibleError

    with pytest.raises(BudgetInfeasibleError, match="experts.0.w"):
        ParallelLoader(pg, files, max_batch_bytes=EXPERT_BYTES - 1, use_tqdm_on_load=False, nogds=True)


GROUP_ONLY = {"different_filters_need_direct_reads"}
test_single_process, test_two_ranks = ranks.client_tests(__name__, GROUP_ONLY)
