"""The fastsafetensors 0.3 calls, spelled exactly as ../shared/reference/api-0.3.md documents them.

Code written for the 0.3 package must run unchanged: same names, same keyword arguments, same
meanings. Every tensor is compared bit for bit with safetensors' own reader. The multi-process
calls (a torch.distributed process group) run in the 2-rank group of tp_harness.
"""


import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import load_file, save_file  # noqa: E402

import fastsafetensors  # noqa: E402
from fastsafetensors import ParallelLoader, SafeTensorsFileLoader, fastsafe_open  # noqa: E402
from fastsafetensors.common import SafeTensorsMetadata, SingleGroup, TensorFrame  # noqa: E402
from fastsafetensors.st_types import Device, DeviceType, DType  # noqa: E402


def _bytes(t):
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _same(got, want):
    assert got.dtype == want.dtype and tuple(got.shape) == tuple(want.shape)
    assert _bytes(got) == _bytes(want)


@pytest.fixture
def files(tmp_path):
    g = torch.Generator().manual_seed(3)
    parts = [{"a.weight": torch.randn(6, 4, generator=g).to(torch.bfloat16), "a.bias": torch.randn(6, generator=g)},
             {"b.weight": torch.randn(5, 3, generator=g), "b.idx": torch.arange(7, dtype=torch.int64),
              "b.q": torch.randn(4, 3, generator=g)}]
    paths = []
    for i, tensors in enumerate(parts):
        paths.append(str(tmp_path / f"model-{i}.safetensors"))
        save_file(tensors, paths[-1], metadata={"format": "pt"})
    return paths


def _reference(paths):
    return {k: v for p in paths for k, v in load_file(p).items()}


def test_single_group():
    pg = SingleGroup()
    assert pg.size() == 1 and pg.rank() == 0


@pytest.mark.parametrize("pg", [None, SingleGroup()], ids=["None", "SingleGroup"])
def test_loader_calls_as_documented(files, pg):
    ref = _reference(files)
    loader = SafeTensorsFileLoader(pg, device="cpu", bbuf_size_kb=16 * 1024, max_threads=16, nogds=False,
                                   set_numa=True, disable_cache=True, debug_log=False, framework="pytorch")
    loader.add_filenames({0: files})
    assert sorted(loader.get_keys()) == sorted(ref)
    assert tuple(loader.get_shape("b.weight")) == (5, 3)
    fb = loader.copy_files_to_device(dtype=DType.AUTO, use_buf_register=True, max_copy_block_size=16 * 1024 ** 3)
    assert sorted(fb.key_to_rank_lidx) == sorted(ref)
    for key in fb.key_to_rank_lidx.keys():
        _same(fb.get_tensor(key, device=None, dtype=DType.AUTO), ref[key])
    assert fb.get_filename("b.idx") == files[1]
    assert tuple(fb.get_shape("a.weight")) == (6, 4)
    # one process: rank 0 of 1 owns every block
    _same(fb.get_sharded("a.weight", 0, device=None, dtype=DType.AUTO), ref["a.weight"])
    _same(fb.get_sharded("a.weight", -1), ref["a.weight"])
    _same(fb.get_multi_cols(["b.weight", "b.q"], 0, device=None, dtype=DType.AUTO).get_raw(),
          torch.cat([ref["b.weight"], ref["b.q"]], 0))
    _same(fb.push_tensor("b.idx", 0, device=None, dtype=DType.AUTO), ref["b.idx"])
    got = fb.as_dict({"a.weight": 0, "a.bias": -1})
    _same(got["a.weight"].get_raw(), ref["a.weight"])
    _same(got["a.bias"].get_raw(), ref["a.bias"])
    kept = fb.get_tensor("a.bias")
    fb.close()
    fb.close()  # twice is fine
    _same(kept, ref["a.bias"])  # **fix**: tensors outlive close()
    loader.reset()
    loader.add_filenames({0: files[:1]})
    assert sorted(loader.get_keys()) == ["a.bias", "a.weight"]
    loader.close()
    loader.close()


def test_copy_files_to_device_dtype_converts_floats(files):
    ref = _reference(files)
    loader = SafeTensorsFileLoader(SingleGroup(), "cpu", nogds=True)
    loader.add_filenames({0: files})
    fb = loader.copy_files_to_device(dtype=DType.F16)
    _same(fb.get_tensor("a.weight"), ref["a.weight"].to(torch.float16))
    _same(fb.get_tensor("b.idx"), ref["b.idx"])  # not a floating tensor: unchanged
    fb.close()
    loader.close()


def test_fastsafe_open_seed_example(files):
    ref = _reference(files)
    seen = {}
    for f in files:
        with fastsafe_open(filenames=[f], nogds=True, device="cpu", debug_log=True) as f:
            for key in f.get_keys():
                t = f.get_tensor(key).clone().detach()
                seen[key] = t
    assert sorted(seen) == sorted(ref)
    for key, t in seen.items():
        _same(t, ref[key])


def test_fastsafe_open_full_signature(files):
    with fastsafe_open(files, framework="pt", pg=None, device="cpu", nogds=False, debug_log=False,
                       max_copy_block_size=16 * 1024 ** 3) as f:
        assert sorted(f.keys()) == sorted(f.get_keys()) == sorted(_reference(files))
        assert f.metadata() == {path: {"format": "pt"} for path in files}  # upstream's {filename: metadata}
        _same(f.get_tensor("b.q"), load_file(files[1])["b.q"])


def test_parallel_loader_as_documented(files):
    ref = _reference(files)
    loader = ParallelLoader(None, files, max_concurrent_producers=1, queue_size=0, use_tqdm_on_load=True,
                            device="cpu", bbuf_size_kb=16 * 1024, max_threads=16, nogds=False, set_numa=True,
                            debug_log=False, framework="pytorch")
    got = {}
    for name, tensor in loader.iterate_weights():
        assert name not in got
        got[name] = tensor
    loader.close()
    assert sorted(got) == sorted(ref)
    for name, t in got.items():
        _same(t, ref[name])


def test_types_callers_import(files):
    assert DType.AUTO.value == "auto"
    for name in ("BOOL", "U8", "I8", "I16", "F16", "BF16", "I32", "F32", "I64", "F64", "F8_E5M2", "F8_E4M3"):
        assert DType(name).value == name == str(DType[name])
    assert Device.from_str("cuda:1") == Device(DeviceType.CUDA, 1)
    assert Device.from_str("cpu").type is DeviceType.CPU and str(Device.from_str("cuda")) == "cuda"
    meta = SafeTensorsMetadata.from_file(files[0])
    frame = meta.tensors["a.weight"]
    assert isinstance(frame, TensorFrame) and frame.dtype == DType.BF16 and tuple(frame.shape) == (6, 4)
    assert meta.metadata == {"format": "pt"} and meta.src == files[0]
    assert fastsafetensors._cpp is not None and hasattr(fastsafetensors._cpp, "read_header")


def test_header_errors_are_named(tmp_path):
    path = tmp_path / "short.safetensors"
    path.write_bytes(b"\x01\x02\x03")
    loader = SafeTensorsFileLoader(None, nogds=True)
    with pytest.raises(fastsafetensors.errors.HeaderTooSmall) as info:
        loader.add_filenames({0: [str(path)]})
    assert str(path) in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error path of a machine without CUDA")
def test_failed_gds_setup_is_a_runtime_error_naming_gds():
    # One inference server catches exactly `RuntimeError` containing "gds" and retries with nogds=True.
    with pytest.raises(RuntimeError, match="gds"):
        SafeTensorsFileLoader(None, device="cuda", nogds=False)
    with pytest.raises(RuntimeError, match="gds"):
        ParallelLoader(None, [], device="cuda:0", nogds=False)
    with pytest.raises(RuntimeError) as info:
        SafeTensorsFileLoader(None, device="cuda", nogds=True)
    assert "gds" not in str(info.value)


def test_process_group_calls_as_documented():
    """SafeTensorsFileLoader(pg) with a torch.distributed group: 2 gloo ranks, see tp_worker.py."""
    pytest.importorskip("transformers")
    from . import tp_harness

    tp_harness.assert_scenario(2, "compat_03_calls")
