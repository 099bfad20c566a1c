"""fastsafetensors.jax.load(..., transforms=...): every op alone and composed, on 1x8 / 2x4 / 4x2
meshes, row / column / mixed / replicated targets, bit-exact per shard against the same transform
done with NumPy on the full tensors that safetensors reads; bad transforms raise before reading."""

import numpy as np
import pytest

jax = pytest.importorskip("jax")
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

import fastsafetensors.jax as fj  # noqa: E402
from fastsafetensors.errors import ShardingMismatch, TensorNotFound, TransformError, UnsupportedDtype  # noqa: E402

from .helpers import RecordingBar, save  # noqa: E402

LAYERS = 8


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch = pytest.importorskip("torch")
    gen = torch.Generator().manual_seed(0)
    tensors = {}
    for i in range(LAYERS):
        tensors[f"w.{i}"] = torch.randn(64, 32, generator=gen)
        tensors[f"k.{i}"] = torch.randn(16, 32, generator=gen)
    tensors["h"] = torch.randn(8, 8, 32, generator=gen).to(torch.bfloat16)
    tensors["ids"] = torch.arange(64, dtype=torch.int32).reshape(8, 8)
    tensors["big"] = torch.randn(520, 200, generator=gen)  # replicated, its transpose is copied in tiles
    return save(tmp_path_factory.mktemp("transforms") / "model.safetensors", tensors)


@pytest.fixture(scope="module")
def ref(ckpt):
    return load_file(ckpt)


# name -> (transforms, {leaf: NumPy reference of the full leaf})
def _cases(r):
    stacked_fused = np.stack([np.concatenate([r[f"w.{i}"], r[f"k.{i}"]]).T.reshape(32, 10, 8) for i in range(LAYERS)])
    return {
        "rename": ([fj.rename(r"w\.(\d+)", r"renamed.\1")], {f"renamed.{i}": r[f"w.{i}"] for i in range(LAYERS)}),
        "transpose": ({"t": fj.transpose("w.0")}, {"t": r["w.0"].T}),
        "split_heads": ({"s": fj.reshape(fj.transpose("w.1"), (32, 8, 8))}, {"s": r["w.1"].T.reshape(32, 8, 8)}),
        "merge_heads": ({"m": fj.reshape("h", (64, 32))}, {"m": r["h"].reshape(64, 32)}),
        "concat0": ({"c": fj.concat(["w.0", "k.0", "k.1", "w.2"])},
                    {"c": np.concatenate([r["w.0"], r["k.0"], r["k.1"], r["w.2"]])}),
        "concat1": ({"c": fj.concat([fj.transpose("w.0"), fj.transpose("k.3")], axis=1)},
                    {"c": np.concatenate([r["w.0"].T, r["k.3"].T], axis=1)}),
        "stack": ({"st": fj.stack(r"w\.(\d+)")}, {"st": np.stack([r[f"w.{i}"] for i in range(LAYERS)])}),
        "slice": ({"sl": fj.slice_("w.4", 0, 16, 48)}, {"sl": r["w.4"][16:48]}),
        "astype": ({"a": fj.astype("w.5", "BF16")}, {"a": r["w.5"].astype(r["h"].dtype)}),
        "astype_twice": ({"a": fj.astype(fj.astype("w.5", "BF16"), np.float32)},
                         {"a": r["w.5"].astype(r["h"].dtype).astype(np.float32)}),  # the bf16 rounding stays
        "transpose_tiled": ({"t": fj.transpose("big")}, {"t": r["big"].T}),
        "composed": ({"f": fj.stack(r"w\.(\d+)", lambda i: fj.reshape(fj.transpose(fj.concat([f"w.{i}", f"k.{i}"])),
                                                                        (32, 10, 8)))},
                     {"f": stacked_fused}),
        "composed_inverse": ({"g": fj.transpose(fj.reshape(fj.slice_(fj.astype("h", np.float32), 1, 0, 8), (8, 256)))},
                             {"g": r["h"].astype(np.float32).reshape(8, 256).T}),
    }


MESHES = [(1, 8), (2, 4), (4, 2)]
SPECS = {"row": P(("x", "y")), "col": P(None, ("x", "y")), "mixed": P("x", "y"), "replicated": P()}


def _check_shards(out, want):
    assert set(out) == set(want)
    for name, arr in out.items():
        assert arr.shape == want[name].shape and arr.dtype == want[name].dtype, name
        for s in arr.addressable_shards:
            assert np.asarray(s.data).tobytes() == np.ascontiguousarray(want[name][s.index]).tobytes(), (name, s.index)


@pytest.mark.parametrize("case", ["rename", "transpose", "split_heads", "merge_heads", "concat0", "concat1", "stack",
                                  "slice", "astype", "astype_twice", "transpose_tiled", "composed",
                                  "composed_inverse"])
@pytest.mark.parametrize("mesh_shape", MESHES, ids=lambda m: f"{m[0]}x{m[1]}")
@pytest.mark.parametrize("spec", list(SPECS))
def test_op_bit_exact_per_shard(ckpt, ref, case, mesh_shape, spec):
    transforms, want = _cases(ref)[case]
    mesh = jax.make_mesh(mesh_shape, ("x", "y"))
    metrics = fj.JaxLoadMetrics()
    out = fj.load(ckpt, mesh=mesh, rules=[(".", SPECS[spec])], transforms=transforms, metrics=metrics)
    _check_shards(out, want)
    for arr in out.values():
        assert arr.sharding.spec == SPECS[spec]
    # One process holds every device: it reads each source byte its leaves need once per distinct box.
    assert 0 < metrics.bytes_read <= sum(w.nbytes for w in want.values()) * 2


def test_abstract_tree_sets_dtype_and_nested(ckpt, ref):
    mesh = jax.make_mesh((2, 4), ("x", "y"))
    s = NamedSharding(mesh, P(None, "y"))
    tree = {"layers": {"kernel": jax.ShapeDtypeStruct((LAYERS, 32, 64), jax.numpy.bfloat16, sharding=s)}}
    out = fj.load(ckpt, tree, nested=True,
                  transforms={"layers.kernel": fj.stack(r"w\.(\d+)", lambda i: fj.transpose(f"w.{i}"))})
    want = {"k": np.stack([ref[f"w.{i}"].T for i in range(LAYERS)]).astype(ref["h"].dtype)}
    _check_shards({"k": out["layers"]["kernel"]}, want)


def test_reads_only_what_the_leaves_need(ckpt, ref):
    metrics = fj.JaxLoadMetrics()
    out = fj.load(ckpt, transforms={"sl": fj.slice_("w.4", 0, 16, 48)}, metrics=metrics)
    assert metrics.bytes_read == ref["w.4"][16:48].nbytes
    _check_shards(out, {"sl": ref["w.4"][16:48]})


BAD = {
    "missing source": ({"x": fj.transpose("nope")}, TransformError, "source tensor `nope` is not in the checkpoint"),
    "concat shapes": ({"x": fj.concat(["w.0", fj.transpose("w.1")])}, TransformError,
                      "concat along axis 0 of shapes (64, 32) and (32, 64): they differ on axis 1"),
    "concat dtypes": ({"x": fj.concat(["w.0", fj.astype("w.1", "BF16")])}, TransformError, "convert with astype"),
    "reshape sizes": ({"x": fj.reshape("w.0", (7, 7))}, TransformError, "sizes differ"),
    "permutation": ({"x": fj.transpose("w.0", (0, 0))}, TransformError, "not a permutation"),
    "slice range": ({"x": fj.slice_("w.0", 1, 0, 40)}, TransformError, "out of range"),
    "overlapping writes": ([fj.rename(r"w\.(\d+)", "same")], TransformError, "written twice"),
    "stack gap": ({"x": fj.stack(r"w\.([0-3]|5)")}, TransformError, "no tensor for item(s) [4]"),
    "stack twice": ({"x": fj.stack(r"[wk]\.(\d+)")}, TransformError, "matches `k.0` and `w.0` for the same item 0"),
    "stack none": ({"x": fj.stack(r"q\.(\d+)")}, TransformError, "matches no tensor"),
    "rename none": ([fj.rename(r"q\.(\d+)", "x")], TransformError, "matches no tensor"),
    "mesh does not divide": ({"x": fj.slice_("w.0", 0, 0, 3)}, ShardingMismatch, "does not divide"),
    "64-bit": ({"x": fj.astype("w.0", np.float64)}, UnsupportedDtype, "jax_enable_x64 is off"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_transforms_raise_before_reading(ckpt, case):
    transforms, error, text = BAD[case]
    mesh = jax.make_mesh((1, 8), ("x", "y"))
    metrics = fj.JaxLoadMetrics()
    with pytest.raises(error) as info:
        fj.load(ckpt, mesh=mesh, rules=[(".", P("y"))], transforms=transforms, metrics=metrics)
    assert text in str(info.value)
    if error is TransformError and case not in ("overlapping writes", "rename none"):
        assert "target `" in str(info.value)  # names the leaf and its sources
    assert metrics.bytes_read == 0


def test_shape_against_tree_names_leaf_sources_and_axis(ckpt):
    s = NamedSharding(jax.make_mesh((2, 4), ("x", "y")), P())
    metrics = fj.JaxLoadMetrics()
    with pytest.raises(TransformError, match=r"target `t` \(from `w.0`\).*makes shape \(32, 64\).*declares "
                                             r"\(32, 60\) \(differ: axis \[1\]\)"):
        fj.load(ckpt, {"t": jax.ShapeDtypeStruct((32, 60), np.float32, sharding=s)},
                transforms={"t": fj.transpose("w.0")}, metrics=metrics)
    assert metrics.bytes_read == 0


def test_tree_and_transforms_must_name_the_same_leaves(ckpt):
    s = NamedSharding(jax.make_mesh((2, 4), ("x", "y")), P())
    with pytest.raises(TransformError, match=r"leaves without a transform \['u'\]"):
        fj.load(ckpt, {"u": jax.ShapeDtypeStruct((32, 64), np.float32, sharding=s)},
                transforms={"t": fj.transpose("w.0")})


def test_names_and_scatter_do_not_combine_with_transforms(ckpt):
    with pytest.raises(ValueError, match="names="):
        fj.load(ckpt, names=["w.0"], transforms={"t": fj.transpose("w.0")})
    with pytest.raises(ValueError, match="scatter"):
        fj.load(ckpt, strategy="scatter", transforms={"t": fj.transpose("w.0")})


def test_missing_source_is_not_tensor_not_found(ckpt):
    """A missing source is a TransformError naming the leaf, not a bare TensorNotFound."""
    with pytest.raises(TransformError) as info:
        fj.load(ckpt, transforms={"t": fj.src("absent")})
    assert not isinstance(info.value, TensorNotFound)


# Shard boundaries that cut heads: head_dim split over the devices, or a merged axis cut inside a
# head (5 rows of 8 per device; 20 of 32), each mapped back through the reshape in runs.
UNALIGNED = {
    "head_dim": (lambda r: ({"x": fj.reshape(fj.transpose("w.0"), (32, 8, 8))}, {"x": r["w.0"].T.reshape(32, 8, 8)}),
                 P(None, None, "y")),
    "head_dim_and_heads": (lambda r: ({"x": fj.reshape(fj.transpose("w.0"), (32, 8, 8))},
                                      {"x": r["w.0"].T.reshape(32, 8, 8)}), P(None, "x", "y")),
    "merged_cut_inside_heads": (lambda r: ({"x": fj.reshape(fj.slice_("h", 0, 0, 5), (40, 32))},
                                           {"x": r["h"][:5].reshape(40, 32)}), P(("x", "y"))),
    "merged_transposed": (lambda r: ({"x": fj.transpose(fj.reshape(fj.slice_("h", 1, 0, 5), (8, 160)))},
                                     {"x": r["h"][:, :5].reshape(8, 160).T}), P(("x", "y"))),
    "split_fused_cut": (lambda r: ({"x": fj.reshape(fj.transpose(fj.concat(["w.0", "k.0"])), (32, 5, 16))},
                                   {"x": np.concatenate([r["w.0"], r["k.0"]]).T.reshape(32, 5, 16)}),
                        P(None, None, ("x", "y"))),
}


@pytest.mark.parametrize("case", list(UNALIGNED))
@pytest.mark.parametrize("mesh_shape", MESHES, ids=lambda m: f"{m[0]}x{m[1]}")
def test_shards_that_cut_heads(ckpt, ref, case, mesh_shape):
    """Refused (TransformError) before the box mapping went through the reshape in runs."""
    make, spec = UNALIGNED[case]
    transforms, want = make(ref)
    out = fj.load(ckpt, mesh=jax.make_mesh(mesh_shape, ("x", "y")), rules=[(".", spec)], transforms=transforms)
    _check_shards(out, want)


@pytest.mark.parametrize("shape,perm", [((520, 200), (1, 0)), ((128, 128), (1, 0)), ((30, 7, 129), (2, 0, 1)),
                                        ((1, 70000), (1, 0)), ((3, 4), (1, 0)), ((6, 5, 4, 3), (3, 1, 0, 2))])
@pytest.mark.parametrize("dtype", [np.uint8, np.float16, np.float32, np.float64])
def test_copy_strided_matches_numpy(shape, perm, dtype):
    """The engine's strided copy puts a C-contiguous block where a transposed view of the
    destination says, tiled, on the reader's threads."""
    from fastsafetensors import _cpp
    from fastsafetensors._src.engine import get_reader
    from fastsafetensors.frameworks import get_framework

    src = (np.random.default_rng(1).standard_normal(shape) * 100).astype(dtype)
    nbytes = src.nbytes + 64
    a, b = _cpp.HostBuffer.allocate(nbytes), _cpp.HostBuffer.allocate(nbytes)
    view = lambda buf: get_framework("numpy").from_buffer(buf, 0, "U8", (nbytes,))  # noqa: E731
    view(a)[64:] = src.reshape(-1).view(np.uint8)
    out_shape = tuple(shape[p] for p in perm)  # the destination: C order of the transposed shape
    inverse = np.argsort(perm)
    strides = [int(np.prod(out_shape[inverse[d] + 1:])) for d in range(len(shape))]
    _cpp.copy_strided(get_reader(2), a, b, [(64, list(shape), 0, strides, src.itemsize)])
    got = view(b)[:src.nbytes].view(dtype).reshape(out_shape)
    assert np.array_equal(got, np.transpose(src, perm))
    with pytest.raises(ValueError, match="outside its destination"):
        _cpp.copy_strided(get_reader(2), a, b, [(64, list(shape), 65, strides, src.itemsize)])


def test_sources_read_in_bounded_groups(ckpt, ref, monkeypatch):
    """With a small staging buffer (O_DIRECT loads), every shard still comes out bit-exact, from several reads, and
    the engine's host memory never holds more than the shards and that buffer."""
    from fastsafetensors import _cpp
    from fastsafetensors._src.jax import transform_reads

    live = []
    real = transform_reads.read_into_host

    def spy(plan, **kw):
        out = real(plan, **kw)
        live.append(_cpp.testing.host_live_bytes())
        return out

    monkeypatch.setattr(transform_reads, "STAGING_BYTES", 3000, raising=False)
    monkeypatch.setattr(transform_reads, "read_into_host", spy)
    transforms, want = _cases(ref)["composed"]
    before = _cpp.testing.host_live_bytes()
    # O_DIRECT reads go through the staging buffer (read_strided reads through the page cache)
    out = fj.load(ckpt, mesh=jax.make_mesh((2, 4), ("x", "y")), rules=[(".", P("x", "y"))], transforms=transforms,
                  direct_io=True)
    _check_shards(out, want)
    assert len(live) > 4
    shards = {str(s.index): s.data.nbytes for s in out["f"].addressable_shards}
    assert max(live) - before <= sum(shards.values()) + 64 * len(shards) + 3000 + 64


@pytest.fixture(scope="module")
def narrow(tmp_path_factory):
    """1- and 2-byte tensors whose sizes are not multiples of a 64x64 tile or of the boxes below:
    column shards of their transposes are runs with gaps over the engine's max_gap (u8: 1125-byte
    runs 7875 apart) and under it (b16: 34-byte runs)."""
    pytest.importorskip("torch")
    from .helpers import random_tensor

    path = save(tmp_path_factory.mktemp("narrow") / "narrow.safetensors",
                {"u8": random_tensor("U8", (24, 9000), seed=1), "b16": random_tensor("BF16", (200, 136), seed=2),
                 "f16": random_tensor("F16", (8, 40, 24), seed=3)})
    return path, load_file(path)


NARROW = {
    "u8": lambda r: ({"t": fj.transpose("u8")}, {"t": r["u8"].T}),
    "b16": lambda r: ({"t": fj.transpose("b16")}, {"t": r["b16"].T}),
    "f16_perm": lambda r: ({"t": fj.transpose("f16", (2, 0, 1))}, {"t": np.transpose(r["f16"], (2, 0, 1))}),
    "f16_heads": lambda r: ({"t": fj.reshape(fj.transpose(fj.reshape("f16", (320, 24))), (24, 8, 40))},
                            {"t": r["f16"].reshape(320, 24).T.reshape(24, 8, 40)}),
}


@pytest.mark.parametrize("case", list(NARROW))
@pytest.mark.parametrize("spec", ["row", "col", "replicated"])
@pytest.mark.parametrize("box_bytes", [1000, 64 << 10])
def test_transposed_pieces_read_and_copied_in_boxes(narrow, monkeypatch, case, spec, box_bytes):
    """Transposed pieces go through the engine's one-pass read-and-copy (read_strided), in boxes
    of at most BOX_BYTES (1000: boxes of odd sizes, most of a tile's rows cut), in calls of a few
    boxes (the loop over calls), the shard bytes faulted in once for the load, bit-exact."""
    from fastsafetensors import _cpp
    from fastsafetensors._src.jax import transform_reads

    path, r = narrow
    calls, populated = [], []
    real_read, real_populate = _cpp.read_strided, _cpp.populate_strided

    def read_spy(reader, sources, ranges, copies, box, dst, **kw):
        calls.append((list(copies), box))
        return real_read(reader, sources, ranges, copies, box, dst, **kw)

    def populate_spy(reader, copies, box, dst):
        populated.append((list(copies), real_populate(reader, copies, box, dst)))
        return populated[-1][1]

    monkeypatch.setattr(transform_reads, "BOX_BYTES", box_bytes)
    monkeypatch.setattr(transform_reads, "_BATCH_BYTES", 3 * box_bytes)
    monkeypatch.setattr(transform_reads._cpp, "read_strided", read_spy)
    monkeypatch.setattr(transform_reads._cpp, "populate_strided", populate_spy)
    transforms, want = NARROW[case](r)
    metrics = fj.JaxLoadMetrics()
    out = fj.load(path, mesh=jax.make_mesh((2, 4), ("x", "y")), rules=[(".", SPECS[spec])], transforms=transforms,
                  metrics=metrics)
    _check_shards(out, want)
    assert calls and all(box == box_bytes and len(copies) <= 3 for copies, box in calls)
    if box_bytes == 1000:
        assert len(calls) > 4
    # One populate per load, over every copy any read_strided call makes, covering their bytes.
    assert len(populated) == 1 and populated[0][0] == [c for copies, _ in calls for c in copies]
    assert populated[0][1] >= sum(np.prod(c[1]) * c[4] for c in populated[0][0])
    assert metrics.bytes_read >= want["t"].nbytes // 2  # counted: the 2x4 mesh holds 4 distinct shards or 1


def test_read_strided_refuses_ranges_outside_their_box(narrow):
    from fastsafetensors import _cpp
    from fastsafetensors._src.engine import get_reader
    from fastsafetensors._src.files import read_file_header

    f = read_file_header(narrow[0])
    dst = _cpp.HostBuffer.allocate(4096)
    sources = [_cpp.ReadSource(f.path, f.header)]
    start = f.header.data_start
    copy = (0, [100], 0, [1], 1)
    for ranges, match in [([(0, 0, start, 101, 0)], "outside"), ([(0, 1, start, 10, 0), (0, 0, start, 10, 0)],
                                                                   "not grouped by box")]:
        rl = _cpp.RangeList()
        for file, box, offset, length, at in ranges:
            rl.append(_cpp.ReadRange(file, box, offset, length, at))
        with pytest.raises(ValueError, match=match):
            _cpp.read_strided(get_reader(2), sources, rl, [copy, copy], 100, dst)
    with pytest.raises(ValueError, match="outside its destination"):
        _cpp.read_strided(get_reader(2), sources, _cpp.RangeList(), [(0, [100], 4000, [1], 1)], 100, dst)
    with pytest.raises(ValueError, match="outside its destination"):
        _cpp.populate_strided(get_reader(2), [(0, [100], 4000, [1], 1)], 100, dst)

def test_shards_are_imported_without_a_copy(ckpt):
    """Replicas share one aligned host slot: JAX imports it instead of copying (it copies unaligned memory)."""
    # big enough (416 KB) that malloc maps it: such NumPy arrays start 16 bytes into a page
    out = fj.load(ckpt, mesh=jax.make_mesh((2, 4), ("x", "y")), rules=[(".", P())], transforms={"t": fj.transpose("big")})
    pointers = {s.data.unsafe_buffer_pointer() for s in out["t"].addressable_shards}
    assert len(pointers) == 1 and pointers.pop() % 64 == 0


def test_one_progress_bar_counts_every_shard_byte(ckpt, ref, monkeypatch):
    """progress=True: one bar for the load, over the bytes read (the shards', the converted one's
    at its source dtype), advanced by all three kinds of reads (straight into shards, read and copied in boxes, staged for a dtype change), closed at
    the end; the reads inside do not open bars of their own (one per 4 MiB staging group)."""
    from fastsafetensors._src import engine
    from fastsafetensors._src.jax import transform_reads

    bars = []

    def record(total, progress):
        bars.append(RecordingBar(total()) if progress else None)
        return bars[-1]

    monkeypatch.setattr(engine, "progress_bar", record)
    monkeypatch.setattr(transform_reads, "progress_bar", record)
    transforms = {"st": fj.stack(r"w\.(\d+)"), "t": fj.transpose("big"), "a": fj.astype("w.5", "BF16")}
    out = fj.load(ckpt, mesh=jax.make_mesh((2, 4), ("x", "y")), rules=[(".", P("x", "y"))], transforms=transforms,
                  progress=True)
    distinct = {(name, str(s.index)): s.data.nbytes for name, leaf in out.items() for s in leaf.addressable_shards}
    read = sum(n * (2 if name == "a" else 1) for (name, _), n in distinct.items())  # "a": F32 read, BF16 kept
    assert len(bars) == 1 and bars[0].closed
    assert bars[0].n == bars[0].total == read
