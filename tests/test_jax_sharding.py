"""fastsafetensors.jax: sharded loads on 8 CPU devices (tests/conftest.py sets XLA_FLAGS), checked
shard by shard against the reference reader."""

import gc

import numpy as np
import pytest

jax = pytest.importorskip("jax")
torch = pytest.importorskip("torch")
from jax.sharding import NamedSharding, PartitionSpec as P, SingleDeviceSharding  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import fastsafetensors  # noqa: E402
import fastsafetensors.jax as fj  # noqa: E402
from fastsafetensors import _cpp  # noqa: E402
from fastsafetensors._src.jax import placement  # noqa: E402
from fastsafetensors._src.jax.shard_plan import plan_shards  # noqa: E402
from fastsafetensors.errors import ShardingMismatch, TensorNotFound, UnsupportedDtype  # noqa: E402
from fastsafetensors._src.frameworks.numpy import NUMPY_DTYPES  # noqa: E402

ST_OF_TORCH = {
    torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16", torch.uint16: "U16",
    torch.float16: "F16", torch.bfloat16: "BF16", torch.int32: "I32", torch.uint32: "U32", torch.float32: "F32",
    torch.int64: "I64", torch.uint64: "U64", torch.float64: "F64", torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2", torch.float8_e8m0fnu: "F8_E8M0",
}


def reference(path):
    """Every tensor as read by safetensors, as a NumPy array of the dtype we map it to."""
    out = {}
    for name, t in load_file(str(path)).items():
        raw = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        out[name] = np.frombuffer(raw, dtype=NUMPY_DTYPES[ST_OF_TORCH[t.dtype]]).reshape(tuple(t.shape))
    return out


def random_tensor(shape, dtype, gen):
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=gen).bool()
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=gen) * 4).to(dtype)
    info = torch.iinfo(dtype)
    lo, hi = max(info.min, -(2 ** 40)), min(info.max, 2 ** 40)
    return torch.randint(lo, hi, shape, generator=gen, dtype=torch.int64).to(dtype)


def assert_shards_match(arr, ref):
    """Each addressable shard equals the reference sliced by that shard's index, bit for bit."""
    assert arr.shape == ref.shape
    assert arr.dtype == ref.dtype
    for shard in arr.addressable_shards:
        got = np.asarray(shard.data)
        assert got.tobytes() == np.ascontiguousarray(ref[shard.index]).tobytes(), shard.device


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A small Llama-shaped checkpoint in two files with an index written by safetensors."""
    gen = torch.Generator().manual_seed(0)
    d = tmp_path_factory.mktemp("ckpt")
    a = {"model.embed.weight": torch.randn(64, 32, generator=gen),
         "model.layers.0.q.weight": torch.randn(32, 32, generator=gen).to(torch.bfloat16),
         "model.layers.0.norm.weight": torch.randn(32, generator=gen)}
    b = {"model.layers.1.q.weight": torch.randn(32, 32, generator=gen).to(torch.bfloat16),
         "model.layers.1.mlp.weight": torch.randn(16, 64, 8, generator=gen).to(torch.float16),
         "lm_head.weight": torch.randn(64, 32, generator=gen),
         "model.layers.1.odd.bias": torch.randn(6, generator=gen)}
    save_file(a, str(d / "model-00001-of-00002.safetensors"))
    save_file(b, str(d / "model-00002-of-00002.safetensors"))
    import json

    weight_map = {**{k: "model-00001-of-00002.safetensors" for k in a},
                  **{k: "model-00002-of-00002.safetensors" for k in b}}
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    ref = {**reference(d / "model-00001-of-00002.safetensors"), **reference(d / "model-00002-of-00002.safetensors")}
    return d, ref


def test_eight_devices():
    assert len(jax.devices()) == 8, "tests/conftest.py must set XLA_FLAGS before jax is imported"


@pytest.mark.parametrize("dtype", list(ST_OF_TORCH))
def test_every_dtype_bit_exact(tmp_path, dtype):
    gen = torch.Generator().manual_seed(1)
    path = tmp_path / "d.safetensors"
    save_file({"rows": random_tensor((16, 24), dtype, gen), "cols": random_tensor((8, 40), dtype, gen),
               "scalar": random_tensor((), dtype, gen)}, str(path))
    ref = reference(path)
    mesh = jax.make_mesh((2, 4), ("x", "y"))
    rules = [("rows", P("x", "y")), ("cols", P(None, ("x", "y")))]
    wide = ST_OF_TORCH[dtype] in ("I64", "U64", "F64")
    if wide:
        with pytest.raises(UnsupportedDtype, match="jax_enable_x64"):
            fj.load(path, mesh=mesh, rules=rules)
        with jax.enable_x64(True):
            out = fj.load(path, mesh=mesh, rules=rules)
            for name, arr in out.items():
                assert_shards_match(arr, ref[name])
        return
    for strategy in ("per_device", "scatter"):
        out = fj.load(path, mesh=mesh, rules=rules, strategy=strategy)
        assert set(out) == set(ref)
        for name, arr in out.items():
            assert_shards_match(arr, ref[name])


def test_wide_dtype_converted_when_asked(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"f": torch.randn(8, 8, dtype=torch.float64)}, str(path))
    out = fj.load(path, jax.devices()[0], dtype="F32")
    assert out["f"].dtype == np.float32
    assert np.asarray(out["f"]).tobytes() == reference(path)["f"].astype(np.float32).tobytes()


SPECS = {"rows": P("a"), "cols": P(None, "b"), "both": P("a", "b"), "replicated": P()}


@pytest.mark.parametrize("mesh_shape", [(1, 8), (2, 4), (4, 2)])
@pytest.mark.parametrize("kind", list(SPECS))
def test_meshes_and_rules(ckpt, mesh_shape, kind):
    d, ref = ckpt
    mesh = jax.make_mesh(mesh_shape, ("a", "b"))
    # 2-D weights follow the rule under test; the rest shows first-match-wins and the replicated default.
    rules = [(r"norm", P()), (r"\.weight$", SPECS[kind])]
    names = [n for n in ref if ref[n].ndim == 2]
    m = fj.JaxLoadMetrics()
    out = fj.load(d, mesh=mesh, rules=rules, names=names, metrics=m)
    assert set(out) == set(names)
    for name in names:
        assert out[name].sharding == NamedSharding(mesh, SPECS[kind])
        assert_shards_match(out[name], ref[name])
    # One process holds every device: every byte read exactly once, however often replicated.
    assert m.bytes_read == sum(ref[n].nbytes for n in names)
    assert sum(m.bytes_per_device.values()) == sum(
        s.data.nbytes for n in names for s in out[n].addressable_shards)


def test_zero_copy_and_replicas_share_host_memory(ckpt):
    d, ref = ckpt
    mesh = jax.make_mesh((2, 4), ("a", "b"))
    gc.collect()  # arrays of earlier tests must not be freed while this one counts
    before = _cpp.testing.host_live_bytes()
    out = fj.load(d, mesh=mesh, rules=[(r"embed", P("a")), (r"lm_head", P(None, "b"))],
                  names=["model.embed.weight", "lm_head.weight"], strategy="per_device")
    held = _cpp.testing.host_live_bytes() - before
    # The arrays live in the engine's buffers (no copy): one slot per distinct shard.
    assert ref["model.embed.weight"].nbytes + ref["lm_head.weight"].nbytes <= held
    embed = out["model.embed.weight"]
    ptrs = {}
    for s in embed.addressable_shards:
        p = s.data.unsafe_buffer_pointer()
        assert p % 64 == 0
        ptrs.setdefault(tuple((i.start, i.stop) for i in s.index), set()).add(p)
    # Replicas along mesh axis b read one host slot: four devices, one pointer per distinct index.
    assert len(ptrs) == 2 and all(len(p) == 1 for p in ptrs.values())
    del out, embed, s
    gc.collect()
    assert _cpp.testing.host_live_bytes() == before


def test_column_shards_are_few_vectored_reads(ckpt):
    d, ref = ckpt
    files = fastsafetensors._src.files.open_checkpoint(d)
    mesh = jax.make_mesh((1, 8), ("a", "b"))
    rules = [(r"embed", P(None, "b")), (r"lm_head", P("b"))]
    names = ["model.embed.weight", "lm_head.weight"]
    targets = placement.targets(files, placement.Placer(None, mesh, rules), names, None)
    sp = plan_shards(files, targets, {t.name: placement.shard_boxes(t, files[t.file]) for t in targets})
    # Columns: 8 shards x 64 rows of 16-byte runs, listed in file order; rows: one run per shard.
    offsets = [r.file_offset for r in sp.plan.ranges]
    assert 8 * 64 < len(offsets) <= 8 * 64 + 8  # row shards in neighbouring slots may join
    assert offsets[:8 * 64] == sorted(offsets[:8 * 64])
    m = fj.JaxLoadMetrics()
    out = fj.load(d, mesh=mesh, rules=rules, names=names, metrics=m)
    for name in names:
        assert_shards_match(out[name], ref[name])
    assert m.strategy == "auto" and m.tensors_per_strategy == {"per_device": 2, "scatter": 0}
    # Every run of a tensor lands straight in its shard's slot: one vectored read per tensor at most.
    assert 1 <= m.read_calls <= 2
    assert m.bytes_read == ref["model.embed.weight"].nbytes + ref["lm_head.weight"].nbytes


def test_placement_forms(ckpt):
    d, ref = ckpt
    dev = jax.devices()[3]
    mesh = jax.make_mesh((2, 4), ("a", "b"))
    one = fj.load(d, dev, names=["lm_head.weight"])["lm_head.weight"]
    assert one.sharding == SingleDeviceSharding(dev)
    assert_shards_match(one, ref["lm_head.weight"])
    mapping = {"lm_head.weight": NamedSharding(mesh, P("a", "b")), "model.layers.0.norm.weight": dev}
    out = fj.load(d, mapping)
    assert set(out) == set(mapping)
    assert out["lm_head.weight"].sharding == mapping["lm_head.weight"]
    for name in mapping:
        assert_shards_match(out[name], ref[name])
    # A pytree of shardings and devices places the tensors its dotted paths name.
    tree = {"lm_head": {"weight": mapping["lm_head.weight"]}, "model": {"layers": [{"norm": {"weight": dev}}]}}
    out = fj.load(d, tree, nested=True)
    assert out["model"]["layers"]["0"]["norm"]["weight"].sharding == SingleDeviceSharding(dev)
    assert_shards_match(out["lm_head"]["weight"], ref["lm_head.weight"])


def test_abstract_pytree_sets_sharding_dtype_and_nesting(ckpt):
    d, ref = ckpt
    mesh = jax.make_mesh((2, 4), ("a", "b"))
    s = NamedSharding(mesh, P(None, "b"))
    abstract = {"model": {"layers": [{"q": {"weight": jax.ShapeDtypeStruct((32, 32), jax.numpy.float32, sharding=s)}}]},
                "lm_head": {"weight": jax.ShapeDtypeStruct((64, 32), jax.numpy.float32, sharding=s)}}
    out = fj.load(d, abstract, nested=True)
    q = out["model"]["layers"]["0"]["q"]["weight"]
    assert q.dtype == np.float32 and q.sharding == s  # BF16 on disk, converted on the devices
    assert_shards_match(q, ref["model.layers.0.q.weight"].astype(np.float32))
    assert_shards_match(out["lm_head"]["weight"], ref["lm_head.weight"])
    bad = {"lm_head": {"weight": jax.ShapeDtypeStruct((32, 64), jax.numpy.float32, sharding=s)}}
    with pytest.raises(ShardingMismatch, match="lm_head.weight"):
        fj.load(d, bad)


def test_dtype_conversion_on_devices_keeps_sharding(ckpt):
    d, ref = ckpt
    mesh = jax.make_mesh((4, 2), ("a", "b"))
    out = fj.load(d, mesh=mesh, rules=[(".", P("a"))], dtype="BF16", names=["lm_head.weight", "model.layers.1.mlp.weight"])
    for name, arr in out.items():
        assert arr.dtype == jax.numpy.bfloat16
        assert arr.sharding == NamedSharding(mesh, P("a"))
        assert_shards_match(arr, ref[name].astype(jax.numpy.bfloat16))


def test_indivisible_shape_named_before_any_read(ckpt):
    d, _ = ckpt
    mesh = jax.make_mesh((2, 4), ("a", "b"))
    m = fj.JaxLoadMetrics()
    with pytest.raises(ShardingMismatch) as err:
        fj.load(d, mesh=mesh, rules=[(r"odd", P("b"))], metrics=m)
    msg = str(err.value)
    assert "model.layers.1.odd.bias" in msg and "axis 0" in msg and "mesh axis b" in msg
    assert m.bytes_read == 0 and "read" not in m.seconds
    with pytest.raises(ShardingMismatch, match="odd.bias.*axis 0.*mesh axis axb"):
        fj.load(d, mesh=mesh, rules=[(r"odd", P(("a", "b")))], names=["model.layers.1.odd.bias"], strategy="scatter")
    with pytest.raises(ShardingMismatch, match="rank 1"):
        fj.load(d, mesh=mesh, rules=[(r"norm", P("a", "b"))], names=["model.layers.0.norm.weight"])
    fj.load(d, mesh=mesh, rules=[(r"odd", P("a"))], names=["model.layers.1.odd.bias"])  # 6 over 2: fine


def test_missing_tensor_named(ckpt):
    d, _ = ckpt
    with pytest.raises(TensorNotFound, match="model.layers.7.q.weight"):
        fj.load(d, {"model.layers.7.q.weight": jax.devices()[0]})
    with pytest.raises(TensorNotFound, match="nope"):
        fj.load(d, names=["nope"])


def test_names_read_only_their_bytes(ckpt):
    d, ref = ckpt
    m = fj.JaxLoadMetrics()
    out = fj.load(d, names=["model.layers.0.norm.weight"], metrics=m)
    assert m.bytes_read == ref["model.layers.0.norm.weight"].nbytes
    assert list(m.bytes_per_file.values()) == [m.bytes_read]
    assert_shards_match(out["model.layers.0.norm.weight"], ref["model.layers.0.norm.weight"])


def test_scatter_matches_per_device(ckpt):
    d, ref = ckpt
    mesh = jax.make_mesh((2, 4), ("a", "b"))
    rules = [(r"mlp", P("a", None, "b")), (r"q\.", P(None, "b")), (r"embed|lm_head", P("b", "a"))]
    m = fj.JaxLoadMetrics()
    out = fj.load(d, mesh=mesh, rules=rules, strategy="scatter", metrics=m)
    assert m.strategy == "scatter" and m.tensors_per_strategy == {"per_device": 0, "scatter": len(ref)}
    assert m.bytes_read == sum(r.nbytes for r in ref.values())
    for name, arr in out.items():
        assert_shards_match(arr, ref[name])


def test_nest_rejects_collisions():
    assert fj.nest({"a.b.0.c": 1, "a.d": 2}) == {"a": {"b": {"0": {"c": 1}}, "d": 2}}
    with pytest.raises(ValueError, match="a.b"):
        fj.nest({"a.b": 1, "a.b.c": 2})


def test_v03_api_framework_jax_returns_jax_arrays(ckpt):
    d, ref = ckpt
    path = str(d / "model-00002-of-00002.safetensors")
    with fastsafetensors.fastsafe_open(path, framework="jax") as f:
        for name in f.keys():
            t = f.get_tensor(name)
            assert isinstance(t, jax.Array)
            assert np.asarray(t).tobytes() == ref[name].tobytes()


def test_bytes_per_process_is_kept_and_merged(tmp_path):
    """A load sets this process's entry; entries a caller adds for other processes stay."""
    path = tmp_path / "m.safetensors"
    save_file({"w": torch.arange(64, dtype=torch.float32).reshape(8, 8)}, str(path))
    m = fj.JaxLoadMetrics()
    fj.load(path, jax.devices()[0], metrics=m)
    assert m.bytes_per_process == {0: m.bytes_read} and m.bytes_read == 256
    m.bytes_per_process[1] = 7  # another process's count, gathered by the caller
    fj.load(path, jax.devices()[0], metrics=m)
    assert m.bytes_per_process == {0: 512, 1: 7}
