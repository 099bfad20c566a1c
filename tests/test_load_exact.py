"""Loaded tensors equal the reference reader's bit for bit, in every framework, without copies."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import fastsafetensors
from fastsafetensors import errors
from fastsafetensors._src.files import read_file_header
from fastsafetensors._src.api import instantiate
from fastsafetensors._src.engine import read_into_host
from fastsafetensors.frameworks import get_framework
from fastsafetensors.metrics import LoadMetrics
from fastsafetensors._src.plan import plan_load

from .helpers import ALL_DTYPES, TORCH_OF, assert_exact, assert_same_values, data_ptr, entry, random_tensor, save, tensor_bytes

FRAMEWORKS = ["numpy", "torch", "jax"]
# Dtypes a framework has no type for (F4 packs two values a byte; NumPy and JAX store one).
LACKS = {"numpy": {"F4"}, "torch": set(), "jax": {"F4"}}
X64_DTYPES = {"I64", "U64", "F64"}
# The type name NumPy (with ml_dtypes) and JAX give each dtype.
ARRAY_TYPE_NAME = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "U16": "uint16", "I32": "int32",
    "U32": "uint32", "I64": "int64", "U64": "uint64", "F16": "float16", "BF16": "bfloat16", "F32": "float32",
    "F64": "float64", "C64": "complex64", "F8_E5M2": "float8_e5m2", "F8_E4M3": "float8_e4m3fn",
    "F8_E8M0": "float8_e8m0fnu", "F8_E4M3FNUZ": "float8_e4m3fnuz", "F8_E5M2FNUZ": "float8_e5m2fnuz",
}


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _type_name(t) -> str:
    return str(t.dtype)


def _expected_type(fw: str, dtype: str) -> str:
    return str(TORCH_OF[dtype]) if fw == "torch" else ARRAY_TYPE_NAME[dtype]


# --- every dtype -------------------------------------------------------------------------------

@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_every_dtype_bit_exact(dtype_file, fw, x64):
    ref = load_file(dtype_file)
    supported = [n for n in ref if n[2:] not in LACKS[fw]]
    out = fastsafetensors.load(dtype_file, framework=fw, names=supported)
    assert set(out) == set(supported)
    assert_exact(out, {n: ref[n] for n in supported})
    for dtype in ALL_DTYPES:
        if dtype not in LACKS[fw]:
            assert _type_name(out[f"t_{dtype}"]) == _expected_type(fw, dtype), dtype


@pytest.mark.parametrize("fw,dtype", [(fw, d) for fw in FRAMEWORKS for d in sorted(LACKS[fw])])
def test_missing_dtype_is_a_clear_error(dtype_file, fw, dtype, x64):
    name = f"t_{dtype}"
    with pytest.raises(errors.UnsupportedDtype) as exc_info:
        fastsafetensors.load(dtype_file, framework=fw, names=[name])
    message = str(exc_info.value)
    assert dtype in message and "raw=True" in message
    assert dtype_file in message and f"`{name}`" in message
    raw = fastsafetensors.load(dtype_file, framework=fw, names=[name], raw=True)[name]
    assert tensor_bytes(raw) == tensor_bytes(load_file(dtype_file)[name])


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_raw_returns_exact_bytes(dtype_file, fw, x64):
    ref = load_file(dtype_file)
    out = fastsafetensors.load(dtype_file, framework=fw, raw=True)
    assert set(out) == set(ref)
    for name, r in ref.items():
        assert _type_name(out[name]) == ("torch.uint8" if fw == "torch" else "uint8")
        assert tensor_bytes(out[name]) == tensor_bytes(r), name


def test_header_dtypes_match_writer(dtype_file):
    """The file really holds every dtype (guards the fixture itself)."""
    header = read_file_header(dtype_file)
    dtypes = {t.dtype for t in header.infos}
    assert set(ALL_DTYPES) <= dtypes
    assert header.tensors["t_F4"].shape == (3, 8)
    assert header.metadata == {"format": "pt", "writer": "tests"}


# --- JAX and 64-bit types ----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", sorted(X64_DTYPES))
def test_jax_64bit_needs_x64(dtype_file, dtype):
    assert not jax.config.jax_enable_x64
    name = f"t_{dtype}"
    with pytest.raises(errors.UnsupportedDtype) as exc_info:
        fastsafetensors.load(dtype_file, framework="jax", names=[name])
    assert "jax_enable_x64" in str(exc_info.value) and "raw=True" in str(exc_info.value)
    raw = fastsafetensors.load(dtype_file, framework="jax", names=[name], raw=True)[name]
    assert tensor_bytes(raw) == tensor_bytes(load_file(dtype_file)[name])


def test_jax_conversion_to_64bit_needs_x64(multi_files):
    with pytest.raises(errors.UnsupportedDtype, match="jax_enable_x64"):
        fastsafetensors.load(multi_files[0], framework="jax", names=["layer0.w"], dtype="F64")


@pytest.mark.parametrize("dtype", sorted(X64_DTYPES))
def test_jax_64bit_with_x64(dtype_file, dtype, x64):
    name = f"t_{dtype}"
    t = fastsafetensors.load(dtype_file, framework="jax", names=[name])[name]
    assert str(t.dtype) == ARRAY_TYPE_NAME[dtype]
    assert tensor_bytes(t) == tensor_bytes(load_file(dtype_file)[name])


def test_jax_64bit_with_global_x64_config(dtype_file):
    jax.config.update("jax_enable_x64", True)
    try:
        t = fastsafetensors.load(dtype_file, framework="jax", names=["scalar_i64"])["scalar_i64"]
    finally:
        jax.config.update("jax_enable_x64", False)
    assert str(t.dtype) == "int64" and int(t) == -(2**40) - 7


# --- valid edge cases --------------------------------------------------------------------------

@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_empty_header(raw_file, fw):
    assert fastsafetensors.load(raw_file("{}"), framework=fw) == {}
    assert fastsafetensors.load(raw_file("{}", pad_to=8), framework=fw) == {}


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_metadata_only_header(raw_file, fw):
    path = raw_file({"__metadata__": {"a": "1", "ü": "ß"}})
    assert fastsafetensors.load(path, framework=fw) == {}
    assert read_file_header(path).metadata == {"a": "1", "ü": "ß"}
    assert read_file_header(raw_file({"__metadata__": None})).tensors == {}


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_zero_size_tensors_and_scalars(raw_file, fw, x64):
    data = bytes(range(2)) + bytes(range(10, 13)) + np.float64(2.5).tobytes()
    header = {"a": entry("U8", [2], 0, 2), "z": entry("F32", [0, 3], 2, 2), "z2": entry("I64", [4, 0], 2, 2),
              "b": entry("U8", [3], 2, 5), "s": entry("F64", [], 5, 13), "z3": entry("F16", [0], 13, 13)}
    path = raw_file(header, data)
    out = fastsafetensors.load(path, framework=fw)
    assert_exact(out, path)
    assert tuple(out["z"].shape) == (0, 3) and tuple(out["s"].shape) == ()
    assert float(out["s"]) == 2.5


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_odd_offsets_and_any_key_order(raw_file, fw, x64):
    # Header length 1 mod 8 and tensors at odd data offsets: nothing in the file is aligned.
    rng = np.random.default_rng(5)
    parts = [("u", "U8", [3]), ("f", "F32", [2, 3]), ("d", "F64", [3]), ("h", "I16", [5]), ("c", "C64", [2])]
    header, data = {}, b""
    for name, dtype, shape in parts:
        n = int(np.prod(shape)) * torch.empty(0, dtype=TORCH_OF[dtype]).element_size()
        header[name] = entry(dtype, shape, len(data), len(data) + n)
        data += rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    reordered = {k: header[k] for k in ["h", "c", "u", "d", "f"]}
    text = json.dumps(reordered, separators=(",", ":"))
    text += " " * ((1 - len(text)) % 8)
    path = raw_file(text, data)
    assert read_file_header(path).header.data_start % 2 == 1
    out = fastsafetensors.load(path, framework=fw)
    assert_exact(out, path)
    assert list(read_file_header(path).tensors) == ["h", "c", "u", "d", "f"]
    for t in out.values():
        assert data_ptr(t) % 64 == 0


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_non_ascii_names(tmp_path, fw):
    tensors = {"权重.ü": random_tensor("F32", (4,), 1), "😀/emoji": random_tensor("U8", (3,), 2),
               "tab\tand\"quote": random_tensor("I16", (2,), 3)}
    path = save(tmp_path / "names.safetensors", tensors)
    out = fastsafetensors.load(path, framework=fw)
    assert_exact(out, path)


def test_escaped_names(raw_file):
    path = raw_file('{"\\u00fc\\ud83d\\ude00\\n":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"x")
    out = fastsafetensors.load(path, framework="numpy")
    assert list(out) == ["ü😀\n"] and out["ü😀\n"].tobytes() == b"x"
    assert_exact(out, path)


def _reference_of(paths):
    ref = {}
    for p in paths:
        ref.update(load_file(p))
    return ref


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_multi_file_list(multi_files, fw, x64):
    out = fastsafetensors.load(multi_files, framework=fw)
    assert_exact(out, _reference_of(multi_files))


def test_directory(multi_files):
    out = fastsafetensors.load(os.path.dirname(multi_files[0]), framework="torch")
    assert_exact(out, _reference_of(multi_files))


def _index_dir(tmp_path, multi_files, weight_map):
    d = tmp_path / "ckpt"
    d.mkdir()
    for p in multi_files:
        os.symlink(p, d / os.path.basename(p))
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return d


def test_index_json(multi_files, tmp_path):
    weight_map = {name: os.path.basename(p) for p in multi_files for name in load_file(p)}
    d = _index_dir(tmp_path, multi_files, weight_map)
    ref = _reference_of(multi_files)
    assert_exact(fastsafetensors.load(d / "model.safetensors.index.json", framework="torch"), ref)
    assert_exact(fastsafetensors.load(str(d), framework="numpy"), ref)  # the index found in the directory


def test_index_naming_a_tensor_the_file_lacks(tmp_path, multi_files):
    weight_map = {name: os.path.basename(p) for p in multi_files for name in load_file(p)}
    weight_map["ghost.weight"] = os.path.basename(multi_files[1])
    d = _index_dir(tmp_path, multi_files, weight_map)
    with pytest.raises(errors.TensorNotFound) as exc_info:
        fastsafetensors.load(d / "model.safetensors.index.json", framework="numpy")
    assert "ghost.weight" in str(exc_info.value) and os.path.basename(multi_files[1]) in str(exc_info.value)


def test_index_missing_a_tensor_the_file_holds(tmp_path, multi_files):
    weight_map = {name: os.path.basename(p) for p in multi_files for name in load_file(p)}
    del weight_map["layer2.b"]
    d = _index_dir(tmp_path, multi_files, weight_map)
    with pytest.raises(errors.IndexMismatch) as exc_info:
        fastsafetensors.load(d, framework="numpy")
    assert "layer2.b" in str(exc_info.value)


def test_tensor_in_two_files_is_an_error(tmp_path, multi_files):
    copy = save(tmp_path / "dup.safetensors", {"layer0.w": random_tensor("F32", (2,), 0)})
    with pytest.raises(errors.DuplicateTensorName, match="layer0.w"):
        fastsafetensors.load([multi_files[0], copy], framework="numpy")


@pytest.mark.parametrize("how", ["dir", "index", "files"])
def test_transformers_checkpoint(llama_dir, how):
    shards = sorted(os.path.join(llama_dir, f) for f in os.listdir(llama_dir) if f.endswith(".safetensors"))
    source = {"dir": llama_dir, "index": os.path.join(llama_dir, "model.safetensors.index.json"),
              "files": shards}[how]
    out = fastsafetensors.load(source, framework="torch")
    ref = _reference_of(shards)
    assert len(ref) == 2 * 9 + 3  # 9 weights per layer, embeddings, final norm, lm_head
    assert_exact(out, ref)


# --- subsets and conversion --------------------------------------------------------------------

@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_names_subset(llama_dir, fw):
    ref = _reference_of(os.path.join(llama_dir, f) for f in os.listdir(llama_dir) if f.endswith(".safetensors"))
    names = sorted(ref)[::4]
    metrics = LoadMetrics()
    out = fastsafetensors.load(llama_dir, framework=fw, names=names, metrics=metrics)
    assert sorted(out) == names
    assert_exact(out, {n: ref[n] for n in names})
    # Only the selected tensors' bytes were read.
    assert metrics.bytes_read == sum(ref[n].numel() * ref[n].element_size() for n in names)


def test_names_unknown(multi_files):
    with pytest.raises(errors.TensorNotFound, match="nope"):
        fastsafetensors.load(multi_files, framework="numpy", names=["layer0.w", "nope"])


@pytest.mark.filterwarnings("ignore:.*encountered in cast:RuntimeWarning")  # random bits overflow F16
@pytest.mark.parametrize("fw", FRAMEWORKS)
@pytest.mark.parametrize("target", ["F16", "BF16", "F32"])
def test_dtype_conversion(multi_files, fw, target, x64):
    ref = _reference_of(multi_files)
    out = fastsafetensors.load(multi_files, framework=fw, dtype=target)
    for name, r in ref.items():
        if r.is_floating_point():
            assert _type_name(out[name]) == _expected_type(fw, target), name
            assert_same_values(out[name], r.to(TORCH_OF[target]), name)
        else:  # integers are never converted
            assert tensor_bytes(out[name]) == tensor_bytes(r) and _type_name(out[name]) == _expected_type(fw, "I64")


@pytest.mark.filterwarnings("ignore:.*encountered in cast:RuntimeWarning")  # random F64 bits overflow F32
@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_dtype_conversion_of_every_dtype(dtype_file, fw, x64):
    """Every float dtype the framework has converts to F32 as torch converts it; F4 cannot be
    converted (its values are packed) and says so; integers are left alone."""
    ref = load_file(dtype_file)
    names = [n for n in ref if n != "t_F4"]
    out = fastsafetensors.load(dtype_file, framework=fw, names=names, dtype="F32")
    for name in names:
        r = ref[name]
        if r.is_floating_point():
            assert _type_name(out[name]) == _expected_type(fw, "F32"), name
            assert_same_values(out[name], r.to(torch.float32), name)
        else:
            assert tensor_bytes(out[name]) == tensor_bytes(r), name
    with pytest.raises(errors.UnsupportedDtype, match="t_F4"):
        fastsafetensors.load(dtype_file, framework=fw, names=["t_F4"], dtype="F32")


# --- zero copy and alignment ---------------------------------------------------------------------

def _copies(fw: str, dtype: str) -> bool:
    """JAX imports fp8 as bytes and bitcasts them: a new array by design."""
    return fw == "jax" and dtype.startswith("F8")


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_zero_copy_views_of_engine_buffer(dtype_file, fw, x64):
    files = [read_file_header(dtype_file)]
    names = [t.name for t in files[0].infos if t.dtype not in LACKS[fw]]
    plan = plan_load(files, names)
    buffers = read_into_host(plan)
    out = instantiate(plan, buffers, get_framework(fw))
    assert_exact(out, {n: r for n, r in load_file(dtype_file).items() if n in out})
    checked = 0
    for name, loc in plan.tensors.items():
        address = buffers[loc.buffer].data_ptr + loc.offset
        assert address % 64 == 0, name
        if loc.info.nbytes and not _copies(fw, loc.dtype):
            assert data_ptr(out[name]) == address, name
            checked += 1
    assert checked >= 14


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_load_returns_views_of_one_buffer(llama_dir, fw):
    """Through the public call: tensors of one file sit at the planned distances in one buffer."""
    shard = sorted(f for f in os.listdir(llama_dir) if f.endswith(".safetensors"))[0]
    path = os.path.join(llama_dir, shard)
    out = fastsafetensors.load(path, framework=fw)
    plan = plan_load([read_file_header(path)])
    first = next(iter(plan.tensors))
    for name, loc in plan.tensors.items():
        assert data_ptr(out[name]) % 64 == 0
        assert data_ptr(out[name]) - data_ptr(out[first]) == loc.offset - plan.tensors[first].offset, name


@pytest.mark.parametrize("dtype", [torch.float16, np.float16, "float16", "f16"])
def test_load_takes_framework_dtypes(multi_files, dtype):
    """load(dtype=) takes a torch or NumPy dtype (or its name) like the safetensors name "F16"."""
    out = fastsafetensors.load(multi_files[0], framework="torch", dtype=dtype)
    ref = load_file(multi_files[0])
    for name, t in ref.items():
        want = t.to(torch.float16) if t.is_floating_point() else t
        assert out[name].dtype == want.dtype and tensor_bytes(out[name]) == tensor_bytes(want), name


def test_load_bad_dtype_lists_valid_names(multi_files):
    with pytest.raises(ValueError, match=r"unknown dtype torch\.qint8: .*BF16.*bfloat16"):
        fastsafetensors.load(multi_files[0], framework="torch", dtype=torch.qint8)
