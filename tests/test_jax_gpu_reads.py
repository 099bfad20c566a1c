"""fastsafetensors.jax on GPUs, run on the CPU: shards that are one run in the file are read by the
device engine straight into one JAX allocation per device. Here the engine's HostDevice stands in
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


def test_rows_and_replicas_per_device_columns_through_host(engine, ckpt):
    calls, _ = engine
    path, ref = ckpt
    mesh = jax.make_mesh((2, 4), ("x", "y"))
    rules = [(r"^w\.", P("x", None)), ("cols", P(None, ("x", "y")))]
    m = fj.JaxLoadMetrics()
    out = fj.load(path, mesh=mesh, rules=rules, metrics=m)
    for name, arr in out.items():
        assert_shards_match(arr, ref[name])
    assert len(calls) == 8  # one allocation per device
    # Row shards and replicas went through the device engine, each device reading its own;
    # the column-sharded tensor through host memory (1/8 of it per device, read once).
    rows = sum(a.nbytes for n, a in ref.items() if n.startswith("w.")) // 2 * 8  # half on each of 8
    replicated = (ref["scalar"].nbytes + ref["norm"].nbytes) * 8
    assert m.bytes_per_path["staged"] == rows + replicated
    assert m.bytes_read == rows + replicated + ref["cols"].nbytes


def test_wide_dtypes_narrowed_on_the_host(engine, tmp_path):
    calls, _ = engine
    path = tmp_path / "wide.safetensors"
    save_file({"f": torch.arange(12, dtype=torch.float64).reshape(3, 4) / 3}, str(path))
    out = fj.load(path, jax.devices()[0], dtype=np.float32)
    assert calls == [] and out["f"].dtype == np.float32
    np.testing.assert_array_equal(np.asarray(out["f"]), (np.arange(12).reshape(3, 4) / 3).astype(np.float32))
