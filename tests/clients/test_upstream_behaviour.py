"""The public behaviour upstream fastsafetensors' own unit tests check, restated here.

Upstream's suite (run through tools/upstream_tests/, table in docs/compat-upstream.md) mixes public
calls with its internals; these are its public cases in our words: device strings, the loader's
getters and dtype conversion, fastsafe_open's forms, sub-byte dtypes, get_multi_cols across files,
shards, push_tensor and F4 along the last dimension over a group, and the memory a load leaves
behind. Every tensor is compared bit for bit against ``safetensors``.
"""

from __future__ import annotations

import gc

import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import load_file, save_file  # noqa: E402

from fastsafetensors import SafeTensorsFileLoader, SingleGroup, _cpp, fastsafe_open  # noqa: E402
from fastsafetensors.st_types import Device, DeviceType, DType  # noqa: E402

from . import ranks  # noqa: E402
from .ranks import reference, same  # noqa: E402


def _block(t, pg, dim):
    """This rank's block along ``dim`` (our split rule: torch.tensor_split)."""
    return torch.tensor_split(t, pg.size(), dim)[pg.rank()]


def _bytes_block(t, pg, dim):
    """The block of a one-byte-per-element view (fp4 pairs), split as bytes and viewed back."""
    return _block(t.view(torch.uint8), pg, dim).view(t.dtype)


def _live_bytes() -> int:
    gc.collect()
    return _cpp.testing.host_live_bytes()


def _load(pg, files):
    """Upstream's pattern: every file added under rank 0, the others get what they need from it."""
    loader = SafeTensorsFileLoader(pg, "cpu", nogds=True, debug_log=True)
    loader.add_filenames({0: files})
    return loader, loader.copy_files_to_device()


def seq_shards_push_and_multi_cols(pg, files):
    """as_dict with row / column / no split, then reset(), push_tensor and get_multi_cols."""
    ref = reference(tuple(files[:1]))
    before = _live_bytes()
    loader, fb = _load(pg, files[:1])
    dims = {name: -1 for name in loader.get_keys()}
    dims.update(q=0, k=0, o=1, rows5=0)
    shards = {name: t.get_raw() for name, t in fb.as_dict(dims).items()}
    for name, dim in dims.items():
        same(shards[name], ref[name] if dim < 0 else _block(ref[name], pg, dim), f"as_dict {name} dim {dim}")
    fb.close()
    loader.reset()

    loader.add_filenames({0: files[:1]})
    fb = loader.copy_files_to_device()
    pushed = None
    if pg.size() > 1:
        pushed = fb.push_tensor("norm", 1)
        assert (pushed is not None) == (pg.rank() == 1), f"push_tensor to rank 1 on rank {pg.rank()}"
        if pushed is not None:
            same(pushed, ref["norm"], "push_tensor norm")
    rows = fb.get_multi_cols(["q", "k"], 0).get_raw()
    same(rows, torch.cat([_block(ref["q"], pg, 0), _block(ref["k"], pg, 0)], 0), "get_multi_cols dim 0")
    cols = fb.get_multi_cols(["k", "v"], 1).get_raw()
    same(cols, torch.cat([_block(ref["k"], pg, 1), _block(ref["v"], pg, 1)], 1), "get_multi_cols dim 1")
    fb.close()
    loader.close()

    # Upstream frees the loader's memory at close(); here tensors stay valid after it and their
    # buffers go with the last of them.
    same(shards["q"], _block(ref["q"], pg, 0), "as_dict q after close()")
    del shards, rows, cols, pushed
    assert _live_bytes() == before, "engine memory left after close() and dropping every tensor"


def seq_f4_along_last_dim(pg, files):
    """F4 shards along the packed dimension: logical shape [8, 16] is [8, 8] fp4 pairs in torch."""
    ref = reference(tuple(files[3:4]))
    loader, fb = _load(pg, files[3:4])
    assert loader.get_shape("wq_f4") == [8, 16]
    got = fb.as_dict({"wq_f4": 1, "wo_f4": 1})
    for name in ("wq_f4", "wo_f4"):
        same(got[name].get_raw(), _bytes_block(ref[name], pg, 1), f"as_dict {name} dim 1")
    fb.close()
    loader.close()


def seq_f4_and_e8m0_whole_and_pushed(pg, files):
    """F4 and F8_E8M0 tensors whole on every rank, and pushed to one rank."""
    ref = reference(tuple(files[3:4]))
    loader, fb = _load(pg, files[3:4])
    for name in ("wq_f4", "scale_e8m0"):
        same(fb.get_tensor_wrapped(name).get_raw(), ref[name], f"get_tensor_wrapped {name}")
    if pg.size() > 1:
        for name in ("wk_f4", "scale_e8m0"):
            pushed = fb.push_tensor(name, 1)
            assert (pushed is not None) == (pg.rank() == 1), f"push_tensor {name} on rank {pg.rank()}"
            if pushed is not None:
                same(pushed, ref[name], f"push_tensor {name}")
    fb.close()
    loader.close()


test_single_process, test_two_ranks = ranks.client_tests(__name__)


def test_device_strings():
    """Upstream's messages, which callers match: the type, then the index as written."""
    with pytest.raises(ValueError, match="Unknown device type: aaaa"):
        Device.from_str("aaaa:0")
    with pytest.raises(ValueError, match="Unknown device type: aaa"):
        Device.from_str("aaa")
    with pytest.raises(ValueError, match="Invalid index: -xxx"):
        Device.from_str("cpu:-xxx")
    assert Device.from_str("cuda:4") == Device(DeviceType.CUDA, 4)
    assert Device(DeviceType.CPU, None).as_str() == "cpu"


def _gpt2_like(path):
    """A small GPT-2-shaped F32 file, as upstream's tests generate one."""
    tensors = {}
    for layer in range(3):
        base = float(layer * 1000)
        tensors[f"h.{layer}.mlp.c_proj.weight"] = torch.arange(128.0).reshape(8, 16) + base
        tensors[f"h.{layer}.attn.c_proj.bias"] = torch.arange(8.0) + base + 300
    save_file(tensors, str(path), metadata={"fst": "tiny-gpt2"})
    return str(path)


@pytest.mark.parametrize("dtype", [DType.F16, torch.float16], ids=["DType", "torch"])
def test_loader_converts_and_names(tmp_path, dtype):
    """copy_files_to_device(dtype=...) with upstream's keywords; get_filename / get_shape as lists."""
    path = _gpt2_like(tmp_path / "gpt2.safetensors")
    want = {k: v.to(torch.float16) for k, v in load_file(path).items()}
    loader = SafeTensorsFileLoader(pg=SingleGroup(), device="cpu", framework="pytorch", nogds=True, debug_log=True)
    loader.add_filenames({0: [path]})
    fb = loader.copy_files_to_device(dtype=dtype, use_buf_register=True, max_copy_block_size=256 * 1024 * 1024)
    for name, t in want.items():
        same(fb.get_tensor_wrapped(name).get_raw(), t, name)
        assert fb.get_filename(name) == path
        assert fb.get_shape(name) == loader.get_shape(name) == list(t.shape)
    fb.close()
    loader.close()


def test_fastsafe_open_forms(tmp_path):
    """A list, one path and {rank: files}; metadata() per file; get_tensor gives torch tensors."""
    path = _gpt2_like(tmp_path / "gpt2.safetensors")
    want = load_file(path)
    with fastsafe_open([path], device="cpu", nogds=True, debug_log=True, framework="pytorch") as f:
        for name in f.keys():
            same(f.get_tensor_wrapped(name).get_raw(), want[name], name)
    with fastsafe_open(path, device="cpu", nogds=True, framework="pytorch") as f:
        assert f.metadata() == {path: {"fst": "tiny-gpt2"}}
    with fastsafe_open({0: [path]}, device="cpu", nogds=True, framework="pytorch") as f:
        assert sorted(f.keys()) == sorted(want)
        for name in f.keys():
            same(f.get_tensor(name), want[name], name)


@pytest.mark.parametrize("kind", ["int8", "float8_e5m2", "float8_e4m3fn", "float8_e8m0fnu", "float4_e2m1fn_x2"])
def test_one_byte_and_packed_dtypes(tmp_path, kind):
    """Round trips of I8, the fp8 kinds and F4 (two values a byte) through fastsafe_open."""
    raw = torch.arange(128, dtype=torch.uint8).reshape(8, 16)
    path = str(tmp_path / f"{kind}.safetensors")
    save_file({"a": raw.view(getattr(torch, kind))}, path, metadata={"fst": "sample"})
    with fastsafe_open(filenames=[path], nogds=True, device="cpu", framework="pytorch") as f:
        got = f.get_tensor_wrapped("a").clone().detach().get_raw()
    same(got, load_file(path)["a"], kind)


def test_multi_cols_across_files_and_partial_as_dict(tmp_path):
    """get_multi_cols over tensors of two files; as_dict of part of a file; close() then dropping
    the tensors leaves no engine memory behind."""
    g = torch.Generator().manual_seed(3)
    a0, b0, b1 = (torch.randn(4, 8, generator=g) for _ in range(3))
    file_a, file_b = str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")
    save_file({"a0": a0}, file_a)
    save_file({"b0": b0, "b1": b1}, file_b)
    before = _live_bytes()
    loader = SafeTensorsFileLoader(SingleGroup(), "cpu", nogds=True, framework="pytorch")
    loader.add_filenames({0: [file_a, file_b]})
    fb = loader.copy_files_to_device()
    same(fb.get_multi_cols(["a0", "b0"], dim=0).get_raw(), torch.cat([a0, b0]), "a0 + b0")
    same(fb.get_multi_cols(["b1"], dim=0).get_raw(), b1, "b1")
    part = fb.as_dict({"a0": -1})
    assert list(part) == ["a0"]
    same(part["a0"].get_raw(), a0, "as_dict a0")
    fb.close()
    loader.close()
    same(part["a0"].get_raw(), a0, "as_dict a0 after close()")
    del part
    assert _live_bytes() == before
