"""The GPU path on a real GPU: every dtype bit-exact on torch, JAX and CuPy against safetensors'
reader, memory returned, truncation raises, each read path (staging, page-cache DMA, cuFile)
delivers the same bytes. Skipped without a CUDA device."""

import gc
import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # leave GPU memory to torch and CuPy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import load_file, save_file  # noqa: E402

import fastsafetensors  # noqa: E402
from fastsafetensors import _cpp, errors  # noqa: E402
from fastsafetensors._src import device_engine  # noqa: E402
from fastsafetensors._src.files import read_headers  # noqa: E402
from fastsafetensors._src.plan import plan_load  # noqa: E402


def _gpu_available() -> bool:
    try:
        device_engine.cuda_device(0)
        return torch.cuda.is_available()
    except errors.CudaError:
        return False


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not _gpu_available(), reason="needs a CUDA GPU")]

_TORCH_TYPES = ["float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool",
                "float8_e4m3fn", "float8_e5m2", "uint16", "uint32", "uint64", "complex64"]
TORCH_TYPES = [getattr(torch, n) for n in _TORCH_TYPES if hasattr(torch, n)]


def _make(dt, shape, g):
    if dt == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    if dt.is_floating_point or dt.is_complex:
        return torch.randn(shape, generator=g, dtype=torch.float32).to(dt)
    if dt in (torch.uint8,) or str(dt).startswith("torch.uint"):
        return torch.randint(0, 200, shape, generator=g).to(dt)
    return torch.randint(-1000, 1000, shape, generator=g).to(dt)


def _bytes(t):
    t = t.detach().cpu().contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpu")
    g = torch.Generator().manual_seed(0)
    paths = []
    for f in range(2):
        tensors = {}
        for i, dt in enumerate(TORCH_TYPES):
            shape = [(3, 5), (257,), (64, 33), (1, 1, 7), ()][(i + f) % 5]
            tensors[f"f{f}.{str(dt)[6:]}"] = _make(dt, shape, g)
        tensors[f"f{f}.big"] = torch.randn(1 << 20, generator=g)  # several staging slots
        tensors[f"f{f}.empty"] = torch.zeros(0, 4)
        p = str(d / f"m{f}.safetensors")
        save_file(tensors, p)
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def ref(ckpt):
    out = {}
    for p in ckpt:
        out.update(load_file(p))
    return out


def test_torch_every_dtype_bit_exact_zero_copy(ckpt, ref):
    out = fastsafetensors.load(ckpt, framework="torch", device="cuda:0")
    assert set(out) == set(ref)
    for name, t in out.items():
        assert t.is_cuda and t.dtype == ref[name].dtype and tuple(t.shape) == tuple(ref[name].shape), name
        assert _bytes(t) == _bytes(ref[name]), name
    # Tensors of one file view one allocation of torch's caching allocator.
    storages = {out[n].untyped_storage().data_ptr() for n in out if n.startswith("f0.") and out[n].numel()}
    assert len(storages) == 1


@pytest.mark.parametrize("mapping", ["0", "1", "only"])
def test_each_read_path_delivers_the_same_bytes(ckpt, ref, monkeypatch, mapping):
    monkeypatch.setenv("FASTSAFETENSORS_MAPPING", mapping)
    out = fastsafetensors.load(ckpt, framework="torch", device="cuda")
    for name, t in out.items():
        assert _bytes(t) == _bytes(ref[name]), name


def test_page_cache_dma_is_used_when_cached(ckpt):
    dev = device_engine.cuda_device(0)
    reader = _cpp.DeviceReader(dev, 4, 4 << 20, 2)
    plan = plan_load(read_headers(ckpt))
    bufs = [_cpp.DeviceBuffer.allocate(dev, n) for n in plan.buffer_sizes]
    stats = reader.read(plan.sources(), plan.ranges, [b.data_ptr for b in bufs], list(plan.buffer_sizes),
                        stage_cached=False, map_group_bytes=1 << 20)
    print("mapping-only stats:", stats)
    assert stats["mapping_disabled"] == "", stats["mapping_disabled"]
    assert stats["mapped_bytes"] == plan.total_bytes


def test_gds_paths_or_clean_fallback(ckpt, ref, monkeypatch):
    status = _cpp.gds_status()
    print("gds:", status)
    monkeypatch.setenv("FASTSAFETENSORS_GDS", "direct")
    try:
        loader = fastsafetensors.SafeTensorsFileLoader(fastsafetensors.SingleGroup(), "cuda:0", nogds=False)
        loader.add_filenames({0: ckpt})
        fb = loader.copy_files_to_device()
    except RuntimeError as exc:  # a failed GDS set-up must say "gds" so callers can retry
        assert "gds" in str(exc).lower()
        pytest.skip(f"GDS unavailable here: {exc}")
    for name in fb.get_keys():
        assert _bytes(fb.get_tensor(name)) == _bytes(ref[name]), name
    if status["available"]:
        dev = device_engine.cuda_device(0)
        reader = _cpp.DeviceReader(dev, 4, 4 << 20, 0)
        plan = plan_load(read_headers(ckpt))
        bufs = [_cpp.DeviceBuffer.allocate(dev, n) for n in plan.buffer_sizes]
        stats = reader.read(plan.sources(), plan.ranges, [b.data_ptr for b in bufs], list(plan.buffer_sizes),
                            gds="direct", gds_register_bytes=1 << 20)
        assert stats["gds_bytes"] == plan.total_bytes
        for name, loc in plan.tensors.items():
            t = torch.from_dlpack(bufs[loc.buffer].view(loc.offset, [loc.info.nbytes], 1, 8)) if loc.info.nbytes else None
            assert t is None or _bytes(t) == _bytes(ref[name]), name


def test_jax_every_dtype_bit_exact_from_one_allocation(ckpt, ref, monkeypatch):
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    from fastsafetensors._src.dtypes import NATIVE
    from fastsafetensors._src.frameworks import jax as jax_backend

    allocs = []

    def counting_zeros(nbytes, dev):
        allocs.append(jax_backend.zeros_on(nbytes, dev))
        return allocs[-1]

    monkeypatch.setattr(jax_backend, "zeros_on", counting_zeros)
    out = fastsafetensors.load(ckpt, framework="jax", device="cuda:0")
    assert len(allocs) == 1  # all files' outputs view one JAX array
    start = allocs[0].unsafe_buffer_pointer()
    end = start + allocs[0].nbytes
    for p in ckpt:
        for info in read_headers([p])[0].infos:
            if info.dtype not in jax_backend.JAX_DTYPES:
                continue
            a = out[info.name]
            assert "cuda" in str(a.devices()).lower() or "gpu" in str(a.devices()).lower()
            got = np.asarray(a).reshape(-1).view(np.uint8).tobytes() if a.size else b""
            assert got == _bytes(ref[info.name]), info.name
            if info.dtype in NATIVE and a.size:  # zero-copy: the tensor lies in the one array
                assert start <= a.unsafe_buffer_pointer() < end, info.name


def test_jax_sharded_api_reads_straight_into_the_gpu(ckpt, ref):
    """fastsafetensors.jax.load to a GPU: whole tensors go through the device engine (no host
    copy of the data, no device_put), bit-exact, on the GPU."""
    jax = pytest.importorskip("jax")
    import fastsafetensors.jax as fj
    from fastsafetensors._src.frameworks import jax as jax_backend

    gpu = jax.local_devices(backend="gpu")[0]
    m = fj.JaxLoadMetrics()
    with jax.enable_x64(True):
        names = [i.name for p in ckpt for i in read_headers([p])[0].infos if i.dtype in jax_backend.JAX_DTYPES]
        out = fj.load(ckpt, gpu, names=names, metrics=m)
        for name in names:
            a = out[name]
            assert a.devices() == {gpu}
            got = np.asarray(a).reshape(-1).view(np.uint8).tobytes() if a.size else b""
            assert got == _bytes(ref[name]), name
    assert m.bytes_per_path["staged"] == m.bytes_read > 0


def test_cupy_bit_exact_and_raw_bytes(ckpt, ref):
    cupy = pytest.importorskip("cupy")
    from fastsafetensors._src.frameworks.cupy import CUPY_DTYPES

    headers = read_headers(ckpt)
    names = [i.name for h in headers for i in h.infos if i.dtype in CUPY_DTYPES]
    out = fastsafetensors.load(ckpt, framework="cupy", device="cuda:0", names=names)
    for name in names:
        assert isinstance(out[name], cupy.ndarray)
        got = cupy.asnumpy(out[name]).reshape(-1).view(np.uint8).tobytes() if out[name].size else b""
        assert got == _bytes(ref[name]), name
    lacking = [n for n in ref if n.endswith(("bfloat16", "float8_e4m3fn", "float8_e5m2"))]
    raw = fastsafetensors.load(ckpt, framework="cupy", device="cuda:0", names=lacking, raw=True)
    for name in lacking:
        assert raw[name].dtype == cupy.uint8
        assert cupy.asnumpy(raw[name]).tobytes() == _bytes(ref[name]), name


def test_device_dtype_conversion(ckpt, ref):
    names = [n for n in ref if n.endswith(("bfloat16", "float16", "big"))]
    out = fastsafetensors.load(ckpt, framework="torch", device="cuda:0", names=names, dtype="F32")
    for name in names:
        assert out[name].is_cuda and out[name].dtype == torch.float32
        assert torch.equal(out[name].cpu(), ref[name].to(torch.float32)), name


def test_engine_buffers_export_zero_copy_and_free(ckpt, ref):
    dev = device_engine.cuda_device(0)
    plan = plan_load(read_headers(ckpt))
    bufs = device_engine.read_into_device(plan, None, fastsafetensors.Device.from_str("cuda:0"))
    loc = plan.tensors["f0.big"]
    t = torch.from_dlpack(bufs[loc.buffer].view(loc.offset, [1 << 20], 2, 32))
    assert t.is_cuda and t.data_ptr() == bufs[loc.buffer].data_ptr + loc.offset
    assert _bytes(t) == _bytes(ref["f0.big"])
    assert dev.dl_device == (2, 0)


@pytest.mark.parametrize("path", [{"use_mapping": False}, {"stage_cached": False, "map_group_bytes": 1 << 20}])
def test_column_shards_as_2d_copies(tmp_path, path):
    """cudaMemcpy2DAsync from the staging slots and from registered page-cache groups: column shards
    of a bf16 and a U8 matrix (rows at uneven offsets, across 256 KiB slots) bit for bit."""
    g = torch.Generator().manual_seed(1)
    p = str(tmp_path / "cols.safetensors")
    tensors = {"pad": _make(torch.uint8, (5,), g), "bf16": _make(torch.bfloat16, (2048, 1024), g),
               "u8": _make(torch.uint8, (3000, 777), g)}
    save_file(tensors, p)
    files = read_headers([p])
    header = files[0].header
    names = [t.name for t in header.tensors]
    dev = device_engine.cuda_device(0)
    reader = _cpp.DeviceReader(dev, 2, 2 * 2 * (256 << 10), 1)
    for name, (start, stop) in {"bf16": ((0, 384), (2048, 512)), "u8": ((0, 101), (3000, 198))}.items():
        ranges = _cpp.RangeList()
        _cpp.plan_boxes(header, names.index(name), 0, [(list(start), list(stop), 0, 0)], ranges)
        nbytes = sum(r.length for r in ranges)
        buf = _cpp.DeviceBuffer.allocate(dev, nbytes)
        reader.read([_cpp.ReadSource(f.path, f.header) for f in files], ranges, [buf.data_ptr], [nbytes], **path)
        got = torch.from_dlpack(buf.view(0, [nbytes], 1, 8))
        assert _bytes(got) == _bytes(tensors[name][start[0]:stop[0], start[1]:stop[1]]), name


def test_memory_returned_after_outputs_dropped(ckpt):
    fastsafetensors.load(ckpt, framework="torch", device="cuda:0")  # warm up the reader
    gc.collect()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    out = fastsafetensors.load(ckpt, framework="torch", device="cuda:0")
    assert torch.cuda.memory_allocated() > before
    del out
    gc.collect()
    assert torch.cuda.memory_allocated() == before


def test_truncated_file_raises(tmp_path):
    p = str(tmp_path / "t.safetensors")
    save_file({"a": torch.randn(1 << 18), "b": torch.randn(1 << 18)}, p)
    files = read_headers([p])
    with open(p, "r+b") as f:
        f.truncate(os.path.getsize(p) - 4096)
    with pytest.raises(errors.TruncatedFileError, match="t.safetensors"):
        fastsafetensors._src.api.load_files(files, "torch", device="cuda:0")
    # A read running past the end of the file (it shrank after it was opened) names the offset.
    dev = device_engine.cuda_device(0)
    reader = _cpp.DeviceReader(dev, 2, 1 << 20, 0)
    size = os.path.getsize(p)
    ranges = _cpp.RangeList()
    ranges.append(_cpp.ReadRange(0, 0, size - 100, 8192, 0))
    buf = _cpp.DeviceBuffer.allocate(dev, 8192)
    with pytest.raises(errors.TruncatedFileError) as info:
        reader.read([_cpp.ReadSource(p, size)], ranges, [buf.data_ptr], [8192])
    assert info.value.offset == size
