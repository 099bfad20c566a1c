"""fastsafetensors.jax on GPUs, run on the CPU: shards whose runs in the file are evenly spaced (one
run, or a run per row: column shards, 2-D boxes, last-axis shards) are read by the device engine
straight into one JAX allocation per device, rows as 2D copies. Here the engine's HostDevice stands in
for the GPUs (its copies land only in memory it allocated, imported into JAX as device 0's), so the
whole route runs: planning per device, the device reader, views, assembly; the other devices get
a copy of their views, which on a GPU are already on their device."""

import gc

import numpy as np
import pytest

jax = pytest.importorskip("jax")
torch = pytest.importorskip("torch")
from jax.sharding import PartitionSpec as P  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import fastsafetensors.jax as fj  # noqa: E402
from fastsafetensors import _cpp  # noqa: E402
from fastsafetensors._src.jax import gpu_reads  # noqa: E402
from fastsafetensors._src.dtypes import NATIVE  # noqa: E402
from fastsafetensors._src.frameworks import jax as jax_backend  # noqa: E402
from fastsafetensors.st_types import Device  # noqa: E402

from .test_jax_device_outputs import _host_device_allocator  # noqa: E402
from .test_jax_sharding import ST_OF_TORCH, assert_shards_match, random_tensor, reference  # noqa: E402

DTYPES = [dt for dt, st in ST_OF_TORCH.items() if st not in ("I64", "U64", "F64")]
ST_OF_TORCH_NAME = {"cols": "BF16", "scalar": "F32", "norm": "F16"}  # tensor name -> its dtype


@pytest.fixture
def engine(monkeypatch):
    """CPU devices take the GPU route through one HostDevice; returns (allocation sizes, device)."""
    dev, calls, arrays = _cpp.testing.HostDevice(), [], []
    monkeypatch.setattr(gpu_reads, "PLATFORMS", frozenset({"cpu"}))
    monkeypatch.setattr(gpu_reads, "engine_for", lambda d: (Device.from_str("cpu"), dev))
    monkeypatch.setattr(jax_backend, "zeros_on", _host_device_allocator(dev, calls, arrays))
    return calls, dev


@pytest.fixture
def ckpt(tmp_path):
    gen = torch.Generator().manual_seed(3)
    tensors = {f"w.{i}": random_tensor((16, 24), dt, gen) for i, dt in enumerate(DTYPES)}
    ST_OF_TORCH_NAME.update({f"w.{i}": ST_OF_TORCH[dt] for i, dt in enumerate(DTYPES)})
    tensors.update({"cols": random_tensor((8, 40), torch.bfloat16, gen), "scalar": random_tensor((), torch.float32, gen),
                    "norm": random_tensor((24,), torch.float16, gen)})
    path = tmp_path / "m.safetensors"
    save_file(tensors, str(path))
    return path, reference(path)


@pytest.mark.parametrize("box,want", [
    (((0, 16), (0, 24)), True),   # whole
    (((4, 8), (0, 24)), True),    # rows
    (((3, 4), (5, 9)), True),     # part of one row
    (((0, 16), (0, 12)), False),  # columns: a run per row
])
def test_contiguous_boxes(box, want):
    assert gpu_reads._contiguous(box, (16, 24)) is want


@pytest.mark.parametrize("box,shape,want", [
    (((0, 16), (0, 12)), (16, 24), True),            # columns: a run per row, evenly spaced
    (((4, 9), (3, 11)), (16, 24), True),             # a 2-D box
    (((0, 4), (0, 8), (4, 8)), (4, 8, 16), True),    # last axis of a 3-D tensor
    (((0, 4), (2, 6), (0, 16)), (4, 8, 16), True),   # middle axis: a run per outer index
    (((1, 2), (2, 6), (4, 8)), (4, 8, 16), True),    # one outer index, two inner axes cut
    (((0, 4), (2, 6), (4, 8)), (4, 8, 16), False),   # two inner axes cut: the spacing changes
    (((0, 16), (0, 24)), (16, 24), True),            # whole
    ((), (), True),                                  # scalar
])
def test_regular_boxes(box, shape, want):
    assert gpu_reads._regular(box, shape) is want


def test_one_device_every_dtype_in_one_allocation(engine, ckpt):
    calls, dev = engine
    path, ref = ckpt
    m = fj.JaxLoadMetrics()
    out = fj.load(path, jax.devices()[0], metrics=m)
    assert set(out) == set(ref)
    for name, arr in out.items():
        assert_shards_match(arr, ref[name])
    assert len(calls) == 1  # one allocation for every tensor of the load
    assert m.bytes_per_path.get("staged", 0) == m.bytes_read == sum(a.nbytes for a in ref.values())
    # Zero-copy: arrays of native dtypes are views of the engine-filled allocation (fp8 is bitcast).
    native = [a for n, a in out.items() if a.nbytes and ST_OF_TORCH_NAME[n] in NATIVE]
    base = min(a.unsafe_buffer_pointer() for a in native)
    assert len(native) > 8 and all(base <= a.unsafe_buffer_pointer() < base + calls[0] for a in native)
    del out, native, arr
    gc.collect()
    assert dev.live_device_bytes == 0  # the last view gone, the allocation is freed


def test_rows_columns_and_replicas_through_the_device_engine(engine, ckpt):
    calls, dev = engine
    path, ref = ckpt
    mesh = jax.make_mesh((2, 4), ("x", "y"))
    rules = [(r"^w\.", P("x", None)), ("cols", P(None, ("x", "y")))]
    m = fj.JaxLoadMetrics()
    out = fj.load(path, mesh=mesh, rules=rules, metrics=m)
    for name, arr in out.items():
        assert_shards_match(arr, ref[name])
    assert len(calls) == 8  # one allocation per device
    # Every device read its own row shards, replicas and column shard through the device engine
    # (the column-sharded tensor 1/8 per device, read once); nothing through host memory.
    rows = sum(a.nbytes for n, a in ref.items() if n.startswith("w.")) // 2 * 8  # half on each of 8
    replicated = (ref["scalar"].nbytes + ref["norm"].nbytes) * 8
    assert m.bytes_per_path["staged"] == m.bytes_read == rows + replicated + ref["cols"].nbytes
    # The 8 rows of each column shard are one 2D copy: at most one copy per tensor per device.
    assert dev.copies <= 8 * len(ref)


def test_column_and_last_axis_shards_across_staging_slots(engine, tmp_path, monkeypatch):
    """Rows crossing 256 KiB staging slots (1 MiB of staging, 2 lanes), at uneven offsets, in bf16
    and U8: bit for bit, no host read, a few 2D copies for thousands of rows."""
    _, dev = engine
    monkeypatch.setenv("FASTSAFETENSORS_STAGING_MB", "1")
    gen = torch.Generator().manual_seed(7)
    path = tmp_path / "wide.safetensors"
    save_file({"pad": random_tensor((5,), torch.uint8, gen), "bf16": random_tensor((512, 1024), torch.bfloat16, gen),
               "u8": random_tensor((1000, 776), torch.uint8, gen),
               "cube": random_tensor((4, 128, 512), torch.bfloat16, gen)}, str(path))
    ref = reference(path)
    mesh = jax.make_mesh((8,), ("x",))
    rules = [("bf16", P(None, "x")), ("u8", P(None, "x")), ("cube", P(None, None, "x")), ("pad", P())]
    m = fj.JaxLoadMetrics()
    out = fj.load(path, mesh=mesh, rules=rules, metrics=m, threads=2)
    for name, arr in out.items():
        assert_shards_match(arr, ref[name])
    assert m.bytes_per_path["staged"] == m.bytes_read == sum(a.nbytes for a in ref.values()) + 7 * ref["pad"].nbytes
    runs = 8 * (512 + 1000 + 4 * 128)  # a run per row of each shard
    assert dev.copies * 20 < runs


def test_wide_dtypes_narrowed_on_the_host(engine, tmp_path):
    calls, _ = engine
    path = tmp_path / "wide.safetensors"
    save_file({"f": torch.arange(12, dtype=torch.float64).reshape(3, 4) / 3}, str(path))
    out = fj.load(path, jax.devices()[0], dtype=np.float32)
    assert calls == [] and out["f"].dtype == np.float32
    np.testing.assert_array_equal(np.asarray(out["f"]), (np.arange(12).reshape(3, 4) / 3).astype(np.float32))
