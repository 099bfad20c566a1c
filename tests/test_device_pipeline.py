"""The GPU reader's pipeline, run on the CPU through HostDevice (the same Device interface, with
copies on one thread per stream after a delay, so a slot reused too early shows as wrong bytes).

Every result is compared byte for byte with the reference reader (safetensors)."""

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import load_file, save_file  # noqa: E402

from fastsafetensors import _cpp, errors  # noqa: E402
from fastsafetensors._src.api import instantiate  # noqa: E402
from fastsafetensors._src.device_engine import read_into_device  # noqa: E402
from fastsafetensors._src.files import read_headers  # noqa: E402
from fastsafetensors.frameworks import get_framework  # noqa: E402
from fastsafetensors._src.plan import LoadPlan, plan_load  # noqa: E402
from fastsafetensors.st_types import Device  # noqa: E402

CUDA = Device.from_str("cuda")


def per_tensor_plan(plan: LoadPlan) -> LoadPlan:
    """The same tensors with one destination each, at offset 0: many more, smaller destinations than
    a plan's one per file, to drive the reader's slots. Buffer k is the k-th tensor of ``plan.tensors``."""
    ranges = _cpp.RangeList()
    sizes = []
    tensors = {}
    for name, loc in plan.tensors.items():
        k = len(sizes)
        info = loc.info
        if info.nbytes:
            start = plan.files[loc.file].header.data_start + info.begin
            ranges.append(_cpp.ReadRange(loc.file, k, start, info.nbytes, 0))
        sizes.append(info.nbytes)
        tensors[name] = loc._replace(buffer=k, offset=0)
    return LoadPlan(plan.files, ranges, sizes, tensors)


def _checkpoint(path, n_tensors=40, seed=0, max_elems=5000, prefix="t"):
    g = torch.Generator().manual_seed(seed)
    dtypes = [torch.float32, torch.float16, torch.bfloat16, torch.int8, torch.int64, torch.uint8, torch.bool]
    tensors = {}
    for i in range(n_tensors):
        dt = dtypes[i % len(dtypes)]
        n = int(torch.randint(0, max_elems, (1,), generator=g))
        if dt.is_floating_point:
            t = torch.randn(n, generator=g).to(dt)
        elif dt == torch.bool:
            t = torch.randint(0, 2, (n,), generator=g).bool()
        else:
            t = torch.randint(-100, 100, (n,), generator=g).to(dt)
        tensors[f"{prefix}{i:03d}"] = t.reshape(-1, 1) if i % 3 == 0 else t
    save_file(tensors, str(path))
    return str(path)


def _bytes_of(t):
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _buffer_bytes(buf, offset, n):
    if n == 0:
        return b""
    return np.from_dlpack(buf.view(offset, [n], 1, 8)).tobytes()


def _check(paths, plan, bufs):
    ref = {}
    for p in paths:
        ref.update(load_file(p))
    assert set(plan.tensors) == set(ref)
    for name, loc in plan.tensors.items():
        assert _buffer_bytes(bufs[loc.buffer], loc.offset, loc.info.nbytes) == _bytes_of(ref[name]), name


def _read(reader, plan, dev, **kw):
    bufs = [_cpp.DeviceBuffer.allocate(dev, n) for n in plan.buffer_sizes]
    stats = reader.read(plan.sources(), plan.ranges, [b.data_ptr for b in bufs], list(plan.buffer_sizes), **kw)
    return bufs, stats


@pytest.fixture
def ckpt(tmp_path):
    return [_checkpoint(tmp_path / f"m{i}.safetensors", seed=i, prefix=f"f{i}.") for i in range(2)]


@pytest.mark.parametrize("staging,threads", [(2 * 4096, 1), (3 * 2 * 4096, 3), (4 * 2 * 8192, 4)])
def test_bit_exact_over_many_slot_reuses(ckpt, staging, threads):
    dev = _cpp.testing.HostDevice(copy_delay_us=30)
    reader = _cpp.DeviceReader(dev, threads, staging, 0)
    plan = plan_load(read_headers(ckpt))
    assert plan.total_bytes > 10 * reader.slot_bytes * reader.staging_lanes  # many reuses per slot
    bufs, stats = _read(reader, plan, dev)
    _check(ckpt, plan, bufs)
    assert stats["staged_bytes"] == stats["bytes"] == plan.total_bytes
    assert 0 < dev.live_pinned_bytes <= min(staging, reader.staging_lanes * 2 * reader.slot_bytes)


def test_more_ranges_than_slots_per_tensor_destinations(tmp_path):
    path = _checkpoint(tmp_path / "many.safetensors", n_tensors=300, max_elems=300)
    dev = _cpp.testing.HostDevice(copy_delay_us=10)
    reader = _cpp.DeviceReader(dev, 2, 2 * 2 * 4096, 1)
    plan = per_tensor_plan(plan_load(read_headers([path])))
    assert len(plan.ranges) > 100
    bufs, stats = _read(reader, plan, dev)
    _check([path], plan, bufs)
    assert stats["bytes"] == plan.total_bytes


def test_page_cache_mapping_path_alone_and_with_staging(ckpt):
    dev = _cpp.testing.HostDevice(copy_delay_us=20)
    reader = _cpp.DeviceReader(dev, 2, 2 * 2 * 8192, 2)
    plan = plan_load(read_headers(ckpt))
    bufs, stats = _read(reader, plan, dev, stage_cached=False, map_group_bytes=64 << 10)
    _check(ckpt, plan, bufs)
    assert stats["mapping_disabled"] == ""
    assert stats["cached_files"] == 2 and stats["mapped_bytes"] == plan.total_bytes
    assert dev.registrations > 2 and dev.live_registered_bytes == 0
    for _ in range(3):  # both paths at once, meeting somewhere in the queue
        bufs, stats = _read(reader, plan, dev, map_group_bytes=32 << 10)
        _check(ckpt, plan, bufs)
        assert stats["mapped_bytes"] + stats["staged_bytes"] == plan.total_bytes
    assert dev.live_registered_bytes == 0


def test_uncached_files_are_not_mapped(ckpt):
    dev = _cpp.testing.HostDevice()
    reader = _cpp.DeviceReader(dev, 2, 1 << 16, 2)
    plan = plan_load(read_headers(ckpt))
    bufs, stats = _read(reader, plan, dev, warm_fraction=1.5)  # nothing counts as cached
    _check(ckpt, plan, bufs)
    assert stats["cached_files"] == 0 and stats["mapped_bytes"] == 0 and dev.registrations == 0


@pytest.mark.parametrize("nth", [1, 7, 60])
def test_copy_error_from_any_worker_propagates_and_reader_recovers(ckpt, nth):
    dev = _cpp.testing.HostDevice(copy_delay_us=20)
    reader = _cpp.DeviceReader(dev, 3, 3 * 2 * 4096, 1)
    plan = plan_load(read_headers(ckpt))
    dev.fail_copy_at(nth)
    with pytest.raises(errors.CudaError) as info:
        _read(reader, plan, dev)
    assert "injected failure" in str(info.value)
    assert any(p in str(info.value) for p in ckpt)  # names the file
    assert dev.live_registered_bytes == 0
    bufs, _ = _read(reader, plan, dev)
    _check(ckpt, plan, bufs)


def test_pinned_allocation_failure_then_success(ckpt):
    dev = _cpp.testing.HostDevice()
    reader = _cpp.DeviceReader(dev, 3, 3 * 2 * 4096, 0)
    dev.fail_pinned_alloc_at(4)
    plan = plan_load(read_headers(ckpt))
    with pytest.raises(errors.CudaError, match="pinned"):
        _read(reader, plan, dev)
    bufs, _ = _read(reader, plan, dev)
    _check(ckpt, plan, bufs)


@pytest.mark.parametrize("stage_cached", [True, False])
def test_short_read_names_file_and_offset(tmp_path, ckpt, stage_cached):
    """Also when the file is cached: bytes past its end are never DMA'd from the mapping."""
    dev = _cpp.testing.HostDevice()
    reader = _cpp.DeviceReader(dev, 2, 1 << 16, 2)
    size = os.path.getsize(ckpt[0])
    ranges = _cpp.RangeList()
    ranges.append(_cpp.ReadRange(0, 0, size - 100, 4096, 0))  # runs past the end of the file
    buf = _cpp.DeviceBuffer.allocate(dev, 4096)
    with pytest.raises(errors.TruncatedFileError) as info:
        reader.read([_cpp.ReadSource(ckpt[0], size)], ranges, [buf.data_ptr], [4096], stage_cached=stage_cached)
    assert ckpt[0] in str(info.value) and info.value.offset == size
    plan = plan_load(read_headers(ckpt))
    bufs, _ = _read(reader, plan, dev)
    _check(ckpt, plan, bufs)


def test_file_changed_after_header_is_refused(ckpt):
    plan = plan_load(read_headers(ckpt))
    with open(ckpt[1], "r+b") as f:
        f.truncate(os.path.getsize(ckpt[1]) - 10)
    dev = _cpp.testing.HostDevice()
    reader = _cpp.DeviceReader(dev, 2, 1 << 16, 1)
    with pytest.raises(errors.TruncatedFileError, match="m1.safetensors"):
        _read(reader, plan, dev)


def test_ranges_outside_destination_are_refused(ckpt):
    dev = _cpp.testing.HostDevice()
    reader = _cpp.DeviceReader(dev, 1, 1 << 16, 0)
    ranges = _cpp.RangeList()
    ranges.append(_cpp.ReadRange(0, 0, 0, 128, 0))
    buf = _cpp.DeviceBuffer.allocate(dev, 64)
    with pytest.raises(IndexError):
        reader.read([_cpp.ReadSource(ckpt[0], os.path.getsize(ckpt[0]))], ranges, [buf.data_ptr], [64])


def test_engine_buffers_through_frameworks_and_freed_with_last_tensor(ckpt):
    """read_into_device with engine-owned buffers, instantiated by the torch backend."""
    dev = _cpp.testing.HostDevice(copy_delay_us=5)
    plan = plan_load(read_headers(ckpt))
    fw = get_framework("torch")
    bufs = read_into_device(plan, None, CUDA, engine_device=dev, threads=3, staging_bytes=1 << 16)
    assert dev.live_device_bytes >= plan.total_bytes
    out = instantiate(plan, bufs, fw, device="cpu")
    ref = {}
    for p in ckpt:
        ref.update(load_file(p))
    for name, t in out.items():
        assert t.dtype == ref[name].dtype and t.shape == ref[name].shape
        assert _bytes_of(t) == _bytes_of(ref[name]), name
    del bufs, plan
    assert dev.live_device_bytes > 0  # the tensors keep their memory
    del out, t
    assert dev.live_device_bytes == 0


def test_numpy_refuses_gpu(ckpt):
    plan = plan_load(read_headers(ckpt))
    with pytest.raises(ValueError, match="host"):
        read_into_device(plan, get_framework("numpy"), CUDA, engine_device=_cpp.testing.HostDevice())


def test_cuda_request_without_cuda_says_what_is_missing():
    if _cpp.testing.cuda_device_count() > 0:
        pytest.skip("this machine has a GPU")
    with pytest.raises(errors.CudaError, match="cuda"):
        _cpp.cuda_device(0)


def test_first_error_cancels_the_other_lanes(tmp_path):
    """After one copy fails, the lanes stop taking blocks: far fewer copies than blocks happen."""
    path = str(tmp_path / "big.bin")
    data = os.urandom(4 << 20)
    with open(path, "wb") as f:
        f.write(data)
    dev = _cpp.testing.HostDevice(copy_delay_us=300)
    reader = _cpp.DeviceReader(dev, 4, 4 * 2 * 4096, 0)
    ranges = _cpp.RangeList()
    ranges.append(_cpp.ReadRange(0, 0, 0, len(data), 0))
    buf = _cpp.DeviceBuffer.allocate(dev, len(data))
    blocks = len(data) // reader.slot_bytes
    dev.fail_copy_at(1)
    before = dev.copies
    with pytest.raises(errors.CudaError):
        reader.read([_cpp.ReadSource(path, len(data))], ranges, [buf.data_ptr], [len(data)])
    assert dev.copies - before < blocks // 4
    reader.read([_cpp.ReadSource(path, len(data))], ranges, [buf.data_ptr], [len(data)])
    assert _buffer_bytes(buf, 0, len(data)) == data


@pytest.mark.parametrize("framework", ["numpy", "torch"])
def test_raw_gives_every_byte_of_every_dtype(ckpt, framework):
    dev = _cpp.testing.HostDevice()
    plan = plan_load(read_headers(ckpt))
    bufs = read_into_device(plan, None, CUDA, engine_device=dev, threads=2, staging_bytes=1 << 16)
    out = instantiate(plan, bufs, get_framework(framework), raw=True, device="cpu")
    ref = {}
    for p in ckpt:
        ref.update(load_file(p))
    for name, t in out.items():
        got = t.tobytes() if framework == "numpy" else _bytes_of(t)
        assert got == _bytes_of(ref[name]), name
