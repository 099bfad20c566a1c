"""The fastsafetensors 0.3 API, single process, called as its users call it
(shared/reference/api-0.3.md); every tensor compared with the reference reader."""

from __future__ import annotations

import json
import struct

import jax
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from fastsafetensors import FilesBufferOnDevice, SafeTensorsFileLoader, SingleGroup, errors, fastsafe_open
from fastsafetensors.common import SafeTensorsMetadata, TensorFrame
from fastsafetensors._src.dtypes import BITS
from fastsafetensors.st_types import Device, DeviceType, DType

from .helpers import assert_exact, assert_same_values, random_tensor, save, tensor_bytes

FRAMEWORK_NAMES = ["pt", "pytorch", "torch", "numpy", "np", "jax"]


@pytest.fixture(autouse=True)
def x64():
    """The test files hold int64 tensors, which JAX keeps only with x64."""
    with jax.enable_x64(True):
        yield


def _reference(paths):
    ref = {}
    for p in paths:
        ref.update(load_file(p))
    return ref


def _is_array_of(framework: str, t) -> bool:
    if framework in ("pt", "pytorch", "torch"):
        return isinstance(t, torch.Tensor)
    if framework in ("numpy", "np"):
        return isinstance(t, np.ndarray)
    return isinstance(t, jax.Array)


def _header_keys(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return [k for k in json.loads(f.read(n)) if k != "__metadata__"]


@pytest.mark.parametrize("framework", FRAMEWORK_NAMES)
def test_loader_copy_files_to_device(multi_files, framework):
    loader = SafeTensorsFileLoader(SingleGroup(), device="cpu", framework=framework)
    loader.add_filenames({0: multi_files})
    ref = _reference(multi_files)
    assert loader.get_keys() == [k for p in multi_files for k in _header_keys(p)]
    for name, r in ref.items():
        assert loader.get_shape(name) == list(r.shape)  # a list, as upstream returns it
    fb = loader.copy_files_to_device()
    assert isinstance(fb, FilesBufferOnDevice)
    out = {name: fb.get_tensor(name) for name in ref}
    assert all(_is_array_of(framework, t) for t in out.values())
    assert_exact(out, ref)
    for k, p in enumerate(multi_files):
        for name in load_file(p):
            assert fb.get_filename(name) == p
            assert fb.get_shape(name) == list(ref[name].shape)
            assert fb.key_to_rank_lidx[name] == (0, k)
    assert set(fb.key_to_rank_lidx) == set(ref)
    fb.close()
    loader.close()


@pytest.mark.filterwarnings("ignore:.*encountered in cast:RuntimeWarning")  # random bits overflow F16
@pytest.mark.parametrize("framework", ["pt", "numpy", "jax"])
def test_copy_files_to_device_with_dtype(multi_files, framework):
    loader = SafeTensorsFileLoader(SingleGroup(), device="cpu", framework=framework)
    loader.add_filenames({0: multi_files})
    fb = loader.copy_files_to_device(dtype=DType.F16)
    for name, r in _reference(multi_files).items():
        t = fb.get_tensor(name)
        if r.is_floating_point():
            want = r.to(torch.float16)
            assert "float16" in str(t.dtype) and "b" not in str(t.dtype).replace("float16", ""), name
            assert_same_values(t, want, name)
        else:
            assert tensor_bytes(t) == tensor_bytes(r), name
    loader.close()


def test_get_tensor_dtype_and_device_arguments(multi_files):
    loader = SafeTensorsFileLoader(SingleGroup(), device="cpu", framework="pt")
    loader.add_filenames({0: multi_files[:1]})
    fb = loader.copy_files_to_device()
    ref = load_file(multi_files[0])
    t = fb.get_tensor("layer0.w", device="cpu", dtype=DType.BF16)
    assert t.dtype == torch.bfloat16
    assert_same_values(t, ref["layer0.w"].to(torch.bfloat16))
    # A per-call dtype does not change what later plain calls return.
    assert tensor_bytes(fb.get_tensor("layer0.w")) == tensor_bytes(ref["layer0.w"])
    assert fb.get_tensor("layer0.w", dtype=DType.AUTO).dtype == torch.float32
    assert tensor_bytes(fb.get_sharded("layer0.w", 0)) == tensor_bytes(ref["layer0.w"])  # one rank: all of it
    with pytest.raises(errors.TensorNotFound):
        fb.get_tensor("nope")
    loader.close()


def test_loader_reset_and_reuse(multi_files):
    loader = SafeTensorsFileLoader(SingleGroup(), device="cpu", framework="numpy")
    loader.add_filenames({0: multi_files[:1]})
    first = loader.copy_files_to_device()
    assert_exact({n: first.get_tensor(n) for n in load_file(multi_files[0])}, multi_files[0])
    loader.reset()
    assert loader.get_keys() == []
    loader.add_filenames({0: multi_files[1:]})
    assert set(loader.get_keys()) == set(_reference(multi_files[1:]))
    second = loader.copy_files_to_device()
    assert_exact({n: second.get_tensor(n) for n in second.key_to_rank_lidx}, _reference(multi_files[1:]))
    # The first buffer is independent of the reset.
    assert_exact({n: first.get_tensor(n) for n in load_file(multi_files[0])}, multi_files[0])
    with pytest.raises(errors.TensorNotFound):
        loader.get_shape("layer0.w")
    loader.close()


def test_loader_default_arguments_and_keywords(multi_files):
    # Arguments 0.3 callers pass; they are accepted whether or not they matter on the CPU.
    loader = SafeTensorsFileLoader(SingleGroup(), device="cpu", bbuf_size_kb=1024, max_threads=2, nogds=True,
                                   set_numa=False, disable_cache=False, debug_log=False, framework="pytorch")
    loader.add_filenames({0: multi_files})
    fb = loader.copy_files_to_device(dtype=DType.AUTO, use_buf_register=False, max_copy_block_size=4096)
    assert_exact({n: fb.get_tensor(n) for n in fb.key_to_rank_lidx}, _reference(multi_files))
    loader.close()
    default = SafeTensorsFileLoader(None)  # pg None is one process; framework defaults to pytorch
    default.add_filenames({0: multi_files[:1]})
    assert isinstance(default.copy_files_to_device().get_tensor("layer0.w"), torch.Tensor)
    default.close()


def test_fastsafe_open_seed_example(dtype_file):
    ref = load_file(dtype_file)
    seen = {}
    with fastsafe_open(filenames=[dtype_file], nogds=True, device="cpu", debug_log=True) as f:
        for key in f.get_keys():
            t = f.get_tensor(key).clone().detach()
            seen[key] = t
    assert list(seen) == _header_keys(dtype_file)
    assert_exact(seen, ref)


@pytest.mark.parametrize("framework", ["pt", "numpy", "jax"])
def test_fastsafe_open_keys_and_metadata(multi_files, tmp_path, framework):
    meta_file = save(tmp_path / "meta.safetensors", {"x": random_tensor("F32", (3,), 9)},
                     metadata={"format": "pt", "note": "ünï"})
    files = [multi_files[0], meta_file]
    with fastsafe_open(files, framework=framework, device="cpu", nogds=True) as f:
        assert f.keys() == f.get_keys() == [k for p in files for k in _header_keys(p)]
        with safe_open(meta_file, "pt") as ref, safe_open(multi_files[0], "pt") as ref0:
            # {filename: metadata}, as upstream returns it
            assert f.metadata() == {multi_files[0]: ref0.metadata(), meta_file: ref.metadata()}
        assert_exact({k: f.get_tensor(k) for k in f.keys()}, _reference(files))


def test_fastsafe_open_single_path_rank_map_and_pg(multi_files):
    with fastsafe_open(multi_files[0], framework="pt", pg=SingleGroup()) as f:
        assert_exact({k: f.get_tensor(k) for k in f.keys()}, multi_files[0])
    with fastsafe_open({0: multi_files}, framework="pt") as f:  # 0.3 also takes a rank-file map
        assert_exact({k: f.get_tensor(k) for k in f.keys()}, _reference(multi_files))


def test_fastsafe_open_rejects_bad_files(tmp_path, raw_file):
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"\x01\x00")
    with pytest.raises(errors.HeaderTooSmall, match="short.safetensors"):
        fastsafe_open([str(short)], nogds=True)
    with pytest.raises(errors.MetadataIncompleteBuffer):
        fastsafe_open([raw_file({"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}, b"ab")])


def test_st_types():
    assert Device.from_str("cpu") == Device(DeviceType.CPU)
    assert Device.from_str("cuda:1") == Device(DeviceType.CUDA, 1)
    assert Device.from_str("cuda").type is DeviceType.CUDA and Device.from_str("cuda").index is None
    assert str(Device.from_str("cuda:3")) == "cuda:3" and str(Device.from_str("cpu")) == "cpu"
    assert Device.from_str("cpu:0").is_cpu and Device.from_str("cpu:0").as_str() == "cpu:0"  # upstream takes it
    assert Device.from_str("cuda:3").as_str() == "cuda:3" and Device.from_str("cpu").as_str() == "cpu"
    for bad, message in (("tpu", "Unknown device type: tpu"), ("cuda:x", "Invalid index"), ("cpu:1", "Invalid index")):
        with pytest.raises(ValueError, match=message):
            Device.from_str(bad)
    # DType values are the header spellings (plus AUTO), so DType(header_dtype) works.
    for name in BITS:
        assert DType(name).value == name
    assert DType.AUTO.value == "auto"
    assert DType.F16.is_float and DType.BF16.is_float and DType.F8_E4M3.is_float and not DType.I32.is_float


def test_safetensors_metadata_from_file(dtype_file):
    meta = SafeTensorsMetadata.from_file(dtype_file)
    with open(dtype_file, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        size = f.seek(0, 2)
    assert meta.src == dtype_file
    assert meta.header_length == 8 + n  # where the data section starts, as 0.3 callers use it
    assert meta.size_bytes == size
    assert meta.metadata == header.pop("__metadata__")
    assert list(meta.tensors) == list(header)
    raw = open(dtype_file, "rb").read()
    ref = load_file(dtype_file)
    for name, entry in header.items():
        frame = meta.tensors[name]
        assert isinstance(frame, TensorFrame)
        assert frame.dtype == DType(entry["dtype"]) and frame.dtype.value == entry["dtype"]
        assert list(frame.shape) == entry["shape"]
        assert list(frame.data_offsets) == entry["data_offsets"]
        begin, end = frame.data_offsets
        assert frame.nbytes == end - begin
        # header_length + data_offsets address the tensor's bytes in the file.
        assert raw[meta.header_length + begin: meta.header_length + end] == tensor_bytes(ref[name])
    assert SafeTensorsMetadata.from_file(dtype_file, framework=None).tensors == meta.tensors


def test_safetensors_metadata_rejects(raw_file):
    with pytest.raises(errors.InvalidOffset):
        SafeTensorsMetadata.from_file(raw_file({"w": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}},
                                               b"ab"))
