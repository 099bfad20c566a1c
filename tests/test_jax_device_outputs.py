"""JAX outputs of a GPU load, run on the CPU: one JAX allocation per load for all its files, each
file's output a 256-byte aligned, disjoint view of it that keeps it alive. The read goes through
the engine's HostDevice, whose copies only land in memory it allocated, so the allocation under
test is HostDevice memory imported into JAX; the carving itself also runs on jnp.zeros arrays."""

import gc
import weakref

import numpy as np
import pytest

jax = pytest.importorskip("jax")
torch = pytest.importorskip("torch")
from safetensors.torch import load_file, save_file  # noqa: E402

from fastsafetensors import _cpp  # noqa: E402
from fastsafetensors._src.api import instantiate  # noqa: E402
from fastsafetensors._src.device_engine import read_into_device  # noqa: E402
from fastsafetensors._src.dtypes import NATIVE, RAW_BYTES  # noqa: E402
from fastsafetensors._src.files import read_headers  # noqa: E402
from fastsafetensors.frameworks import Framework, get_framework  # noqa: E402
from fastsafetensors._src.frameworks import jax as jax_backend  # noqa: E402
from fastsafetensors._src.plan import plan_load  # noqa: E402
from fastsafetensors.st_types import Device  # noqa: E402

CPU, CUDA = Device.from_str("cpu"), Device.from_str("cuda")
_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int8, torch.uint8, torch.bool, torch.int32,
           torch.float8_e4m3fn]


def _checkpoints(tmp_path, n_files=3):
    """Files whose sizes are not multiples of 256, so each part's alignment matters."""
    g = torch.Generator().manual_seed(7)
    paths = []
    for f in range(n_files):
        tensors = {}
        for i, dt in enumerate(_DTYPES):
            n = int(torch.randint(1, 3000, (1,), generator=g))
            if dt == torch.bool:
                t = torch.randint(0, 2, (n,), generator=g).bool()
            elif dt.is_floating_point:
                t = torch.randn(n, generator=g).to(dt)
            else:
                t = torch.randint(0, 100, (n,), generator=g).to(dt)
            tensors[f"f{f}.t{i}"] = t.reshape(-1, 1) if i % 3 == 0 else t
        path = str(tmp_path / f"m{f}.safetensors")
        save_file(tensors, path)
        paths.append(path)
    return paths


def _bytes_of(t):
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _spans(outs, sizes):
    return sorted((o.data_ptr, o.data_ptr + n) for o, n in zip(outs, sizes) if n)


def _host_device_allocator(dev, calls, arrays):
    """Counts calls; gives HostDevice memory as a JAX CPU array (zero-copy DLPack import), so the
    engine's HostDevice copies may land in it and its live_device_bytes shows when it is freed."""
    def allocate(nbytes, jax_device):
        calls.append(nbytes)
        buf = _cpp.DeviceBuffer.allocate(dev, nbytes)
        arr = jax.dlpack.from_dlpack(buf.view(0, [nbytes], *RAW_BYTES))
        assert arr.unsafe_buffer_pointer() == buf.data_ptr
        arrays.append(weakref.ref(arr))
        return arr
    return allocate


def test_carved_outputs_are_aligned_disjoint_and_inside_one_allocation():
    sizes = [1000, 0, 4097, 256, 77, 1]
    calls, arrays = [], []

    def counting_zeros(nbytes, jax_device):
        calls.append(nbytes)
        arr = jax_backend.zeros_on(nbytes, jax_device)
        arrays.append(arr)
        return arr

    outs = jax_backend.carve_outputs(sizes, jax.devices("cpu")[0], counting_zeros)
    assert len(calls) == 1 and len(outs) == len(sizes)
    base, total = arrays[0].unsafe_buffer_pointer(), calls[0]
    assert [o.size for o in outs] == sizes
    for o in outs:
        assert (o.data_ptr - base) % 256 == 0
        assert base <= o.data_ptr and o.data_ptr + o.size <= base + total
    spans = _spans(outs, sizes)
    assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:]))
    assert total - sum(-(-n // 256) * 256 for n in sizes) < 256  # one size class above the parts


def test_outputs_keep_the_one_array_alive_until_the_last_tensor_goes():
    fw = get_framework("jax")
    arrays = []

    def keep(nbytes, jax_device):
        arr = jax_backend.zeros_on(nbytes, jax_device)
        arrays.append(weakref.ref(arr))
        return arr

    outs = jax_backend.carve_outputs([64, 4096, 128], jax.devices("cpu")[0], keep)
    tensors = [fw.from_buffer(o, 0, "F32", (o.size // 4,)) for o in outs]
    for t, o in zip(tensors, outs):
        assert t.unsafe_buffer_pointer() == o.data_ptr  # a view, not a copy
    del outs, t, o
    gc.collect()
    for _ in range(len(tensors)):
        assert arrays[0]() is not None
        tensors.pop()
        gc.collect()
    assert arrays[0]() is None


def test_size_classes_bound_the_waste_and_the_number_of_compiles():
    sizes = [0, 1, 255, 256, 257, 1000, 4097, (1 << 20) + 1, (3 << 30) + 5, 10 ** 11]
    for n in sizes:
        c = jax_backend.size_class(n)
        assert c >= max(n, 1) and c % 256 == 0
        assert c - n <= max(256, min(n / 8, 64 << 20)), n
    classes = [jax_backend.size_class(n) for n in range((1 << 29) + 1, (1 << 30) + 1, 1 << 20)]
    assert classes == sorted(classes) and len(set(classes)) <= 8
    assert jax_backend.size_class((40 << 30) + 1) - ((40 << 30) + 1) < 64 << 20


def test_load_through_the_engine_makes_one_allocation_bit_exact_and_freed_with_the_last_tensor(
        tmp_path, monkeypatch):
    paths = _checkpoints(tmp_path)
    dev, calls, arrays = _cpp.testing.HostDevice(copy_delay_us=5), [], []
    monkeypatch.setattr(jax_backend, "zeros_on", _host_device_allocator(dev, calls, arrays))
    plan = plan_load(read_headers(paths))
    fw = get_framework("jax")
    outs = read_into_device(plan, fw, CPU, engine_device=dev, threads=3, staging_bytes=1 << 16)
    assert len(calls) == 1 and len(outs) == len(paths) == len(plan.buffer_sizes)
    assert dev.live_device_bytes == calls[0] >= sum(plan.buffer_sizes)
    assert all(o.data_ptr % 256 == outs[0].data_ptr % 256 for o in outs)
    spans = _spans(outs, plan.buffer_sizes)
    assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:]))

    out = instantiate(plan, outs, fw, device="cpu")
    ref = {}
    for p in paths:
        ref.update(load_file(p))
    assert set(out) == set(ref)
    for name, t in out.items():
        assert tuple(t.shape) == tuple(ref[name].shape), name
        assert np.asarray(t).tobytes() == _bytes_of(ref[name]), name
        loc = plan.tensors[name]
        if loc.dtype in NATIVE:
            assert t.unsafe_buffer_pointer() == outs[loc.buffer].data_ptr + loc.offset, name

    keep = next(n for n in out if plan.tensors[n].dtype == "F32")
    last = out.pop(keep)
    del outs, out, t
    gc.collect()
    assert arrays[0]() is not None and dev.live_device_bytes == calls[0]
    assert np.asarray(last).tobytes() == _bytes_of(ref[keep])
    del last
    gc.collect()
    assert arrays[0]() is None and dev.live_device_bytes == 0


class _CountingFramework(Framework):
    """The base hook: one device_bytes call per planned buffer (what torch and CuPy keep)."""

    name = "counting"

    def __init__(self, overlap=False):
        self.calls, self.overlap = [], overlap

    def from_buffer(self, buffer, offset, dtype, shape, raw=False):
        raise AssertionError("these tests read the buffers themselves")

    def convert(self, tensor, dtype):
        raise AssertionError("these tests read the buffers themselves")

    def device_bytes(self, nbytes, device, engine_device):
        self.calls.append(nbytes)
        return super().device_bytes(nbytes, device, engine_device)

    def device_outputs(self, sizes, device, engine_device):
        outs = super().device_outputs(sizes, device, engine_device)
        return [outs[0]] * len(outs) if self.overlap else outs


def test_default_hook_allocates_one_buffer_per_file(tmp_path):
    paths = _checkpoints(tmp_path, n_files=2)
    plan = plan_load(read_headers(paths))
    fw = _CountingFramework()
    outs = read_into_device(plan, fw, CUDA, engine_device=_cpp.testing.HostDevice(), threads=2, staging_bytes=1 << 16)
    assert fw.calls == list(plan.buffer_sizes)
    ref = {}
    for p in paths:
        ref.update(load_file(p))
    for name, loc in plan.tensors.items():
        got = np.from_dlpack(outs[loc.buffer].view(loc.offset, [loc.info.nbytes], *RAW_BYTES)).tobytes()
        assert got == _bytes_of(ref[name]), name


def test_overlapping_outputs_are_refused(tmp_path):
    plan = plan_load(read_headers(_checkpoints(tmp_path, n_files=2)))
    with pytest.raises(RuntimeError, match="overlapping"):
        read_into_device(plan, _CountingFramework(overlap=True), CUDA, engine_device=_cpp.testing.HostDevice())
