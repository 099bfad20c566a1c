"""Memory budgets of ParallelLoader (upstream 0.4's max_batch_bytes, device_memory_budget,
use_chunk_budget_as_allocation_size, accumulate_resident, resident_tensor, BudgetInfeasibleError):
the engine's live host bytes (_cpp.testing.host_live_bytes) measured at every yield, and the device engine's
live device bytes on a HostDevice after every allocation, stay within the budget, every tensor equal
to safetensors' bytes; infeasible budgets raise before anything is read."""

from __future__ import annotations

import gc
import logging

import pytest

torch = pytest.importorskip("torch")

from fastsafetensors import ParallelLoader, _cpp  # noqa: E402
from fastsafetensors._src import device_engine  # noqa: E402
from fastsafetensors._src.budget import plan_units  # noqa: E402
from fastsafetensors._src.plan import align_up  # noqa: E402
from fastsafetensors._src.dtypes import RAW_BYTES  # noqa: E402
from fastsafetensors.errors import BudgetInfeasibleError, FastSafeTensorsError  # noqa: E402
from fastsafetensors._src.frameworks.torch import TorchFramework  # noqa: E402

from .clients import ranks  # noqa: E402
from .clients.ranks import reference, same  # noqa: E402

EXPERT = 256 * 512 * 2  # bytes of each experts.N.w, the largest tensors
TOTAL = sum(align_up(t.numel() * t.element_size()) for t in reference(tuple(ranks.checkpoint())).values())


def _load(keep=lambda name: True, **kwargs):
    """Iterates a ParallelLoader (serial reads), keeping the tensors ``keep`` accepts; returns them
    and the most engine host bytes alive beyond what was alive before, at any yield."""
    files = ranks.checkpoint()
    ref = reference(tuple(files))
    gc.collect()
    base = _cpp.testing.host_live_bytes()
    pl = ParallelLoader(None, files, queue_size=kwargs.pop("queue_size", -1), use_tqdm_on_load=False, **kwargs)
    kept, peak, seen = {}, 0, set()
    for name, t in pl.iterate_weights():
        peak = max(peak, _cpp.testing.host_live_bytes() - base)
        same(t, ref[name], name)
        seen.add(name)
        if keep(name):
            kept[name] = t
        del t
    assert seen == set(ref)
    return kept, peak


def test_without_a_budget_a_whole_file_is_alive():
    # What the budgets below bound: unbudgeted, a file of two experts is one buffer.
    _, peak = _load(keep=lambda name: False)
    assert peak >= 2 * EXPERT


def test_max_batch_bytes_bounds_what_is_alive():
    _, peak = _load(keep=lambda name: False, max_batch_bytes=EXPERT + 4096)
    assert EXPERT <= peak <= EXPERT + 4096


def test_allocation_at_the_budget():
    budget = EXPERT + 4096
    _, peak = _load(keep=lambda name: False, max_batch_bytes=budget, use_chunk_budget_as_allocation_size=True)
    assert peak == budget  # each unit's buffer is allocated at the budget, never more


def test_device_budget_counts_resident_tensors():
    # Every tensor kept: the budget must hold them all, and the load stays within it.
    kept, peak = _load(device_memory_budget=TOTAL)
    assert len(kept) == len(reference(tuple(ranks.checkpoint())))
    assert peak <= TOTAL


def test_resident_predicate():
    """Only the experts stay: the budget charges them, not the rest, which is freed once yielded."""
    experts = lambda name: name.startswith("experts.")  # noqa: E731
    budget = 4 * EXPERT + 1024  # the 4 kept experts, plus units of at most 1 KiB once they are all kept
    assert TOTAL > budget
    kept, peak = _load(keep=experts, device_memory_budget=budget, resident_tensor=experts)
    assert sorted(kept) == [f"experts.{i}.w" for i in range(4)]
    assert peak <= budget
    # accumulate_resident=True (the default) charges everything: the same budget cannot hold it all.
    with pytest.raises(BudgetInfeasibleError):
        _load(device_memory_budget=budget)


def test_infeasible_raises_before_any_read(monkeypatch):
    import fastsafetensors.loader as loader_module

    def no_reads(*args, **kwargs):
        raise AssertionError("nothing may be read for an infeasible budget")

    monkeypatch.setattr(loader_module, "read_into_host", no_reads)
    with pytest.raises(BudgetInfeasibleError, match=r"experts.0.w` \(262144 bytes\) does not fit max_batch_bytes=1000") \
            as info:
        ParallelLoader(None, ranks.checkpoint(), max_batch_bytes=1000)
    assert isinstance(info.value, (FastSafeTensorsError, ValueError))
    assert info.value.tensor == "experts.0.w" and info.value.filename.endswith("model-00001-of-00004.safetensors")
    with pytest.raises(BudgetInfeasibleError, match="device_memory_budget=100000") as info:
        ParallelLoader(None, ranks.checkpoint(), device_memory_budget=100_000)
    assert info.value.required > 100_000


def test_a_filtered_out_tensor_does_not_make_it_infeasible():
    keep = lambda name: not name.startswith("experts.")  # noqa: E731
    pl = ParallelLoader(None, ranks.checkpoint(), tensor_filter=keep, max_batch_bytes=4096, use_tqdm_on_load=False)
    assert sorted(n for n, _ in pl.iterate_weights()) == sorted(n for n in reference(tuple(ranks.checkpoint()))
                                                                if keep(n))


def test_queue_size_is_lowered_to_fit(caplog):
    # Non-resident, a unit of one expert: 3 units alive at once (queue_size=1) need 3 experts.
    budget = 2 * EXPERT + 4096
    with caplog.at_level(logging.WARNING, logger="fastsafetensors"):
        _, peak = _load(keep=lambda name: False, device_memory_budget=budget, accumulate_resident=False, queue_size=1)
    assert "instead of 2 to fit device_memory_budget" in caplog.text
    assert peak <= budget


@pytest.mark.parametrize("kwargs, match", [
    ({"max_batch_bytes": 0}, "max_batch_bytes must be a positive"),
    ({"device_memory_budget": True}, "device_memory_budget must be a positive"),
    ({"use_chunk_budget_as_allocation_size": True}, "needs max_batch_bytes or device_memory_budget"),
    ({"resident_tensor": lambda n: True, "accumulate_resident": False}, "not both"),
])
def test_bad_budget_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ParallelLoader(None, ranks.checkpoint(), **kwargs)


def test_units_never_mix_resident_and_transient_tensors():
    batch = [("a", 100, "f"), ("b", 100, "f"), ("c", 100, "f"), ("d", 100, "f")]
    units = plan_units([batch], 1, max_batch_bytes=1000, resident=lambda n: n in ("a", "b", "d"))
    assert [sorted(u.names) for u in units] == [["a", "b"], ["c"], ["d"]]
    assert [u.resident for u in units] == [True, False, True]


class _HostDeviceTorch(TorchFramework):
    """torch with its "GPU" outputs in HostDevice memory (CPU tensors through DLPack), so the device
    engine runs on the CPU; after every allocation it records the device bytes alive, which is the
    exact peak (nothing else raises them)."""

    def __init__(self, dev):
        super().__init__()
        self.dev, self.peak = dev, 0

    def gpu_unavailable(self):
        return ""

    def device_bytes(self, nbytes, device, engine_device):
        n = max(nbytes, 1)
        out = torch.from_dlpack(_cpp.DeviceBuffer.allocate(engine_device, n).view(0, [n], *RAW_BYTES))
        self.peak = max(self.peak, self.dev.live_device_bytes)
        return out

    def device_ready(self, outs):
        pass

    def to_device(self, tensor, device):
        return tensor


def _device_load(monkeypatch, keep=lambda name: False, **kwargs):
    """A ParallelLoader to "cuda" through the device engine on a HostDevice, keeping the tensors ``keep``
    accepts: the most device bytes alive at once, every tensor compared with safetensors' bytes."""
    dev = _cpp.testing.HostDevice(copy_delay_us=5)
    monkeypatch.setattr(device_engine, "cuda_device", lambda index=0: dev)
    fw = _HostDeviceTorch(dev)
    files = ranks.checkpoint()
    ref = reference(tuple(files))
    pl = ParallelLoader(None, files, device="cuda", framework=fw, nogds=True, use_tqdm_on_load=False,
                        bbuf_size_kb=64, **kwargs)
    seen, kept = set(), []
    for name, t in pl.iterate_weights():
        same(t, ref[name], name)
        seen.add(name)
        if keep(name):
            kept.append((name, t))
        del t
    assert seen == set(ref)
    for name, kept_tensor in kept:  # still their bytes once the load is done: no later read reused their memory
        same(kept_tensor, ref[name], name)
    kept = kept_tensor = None
    gc.collect()
    assert dev.live_device_bytes == 0
    return fw.peak


@pytest.mark.parametrize("queue_size, alive", [(-1, 1), (0, 2)])
def test_device_budget_bounds_the_device_engine_allocations(monkeypatch, queue_size, alive):
    # Room for one expert per unit alive (serial: the unit consumed; queue_size=0: and one read ahead).
    budget = alive * EXPERT + 4096
    assert _device_load(monkeypatch, queue_size=queue_size) > budget  # unbudgeted: whole files of two experts
    peak = _device_load(monkeypatch, queue_size=queue_size, device_memory_budget=budget, accumulate_resident=False)
    assert EXPERT <= peak <= budget


def test_device_budget_counts_the_kept_tensors(monkeypatch):
    experts = lambda name: name.startswith("experts.")  # noqa: E731
    budget = 4 * EXPERT + 1024  # the 4 kept experts, plus units of at most 1 KiB once they are all kept
    peak = _device_load(monkeypatch, keep=experts, device_memory_budget=budget, resident_tensor=experts)
    assert 4 * EXPERT <= peak <= budget
