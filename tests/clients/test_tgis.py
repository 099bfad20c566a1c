"""The TGIS adapter's call sequence (upstream's ``examples/tgis_weight.py``): in one process and
over 2 gloo ranks, bit for bit against safetensors."""

from __future__ import annotations


import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fastsafetensors import SafeTensorsFileLoader  # noqa: E402

from . import ranks  # noqa: E402
from .ranks import reference, same  # noqa: E402


def _block(t, pg, dim):
    """This rank's block along ``dim`` (torch.tensor_split: the first size % world ranks get one more)."""
    return torch.tensor_split(t, pg.size(), dim)[pg.rank()]


def _joined(blocks, dim):
    """torch.cat of blocks; fp4 blocks joined as bytes (torch.cat has no fp4 kernel beyond dim 0)."""
    kind = blocks[0].dtype
    return torch.cat([b.view(torch.uint8) for b in blocks], dim).view(kind)


def _open(pg, files):
    world = pg.size()
    loader = SafeTensorsFileLoader(pg, "cpu", nogds=True)
    loader.add_filenames({r: files[r::world] for r in range(world)})
    return loader, loader.copy_files_to_device()


def seq_multi_cols_f4(pg, files):
    """get_multi_cols of fp4 (float4_e2m1fn_x2) tensors, fused along rows and along columns."""
    ref = reference(tuple(files))
    loader, fb = _open(pg, files)
    for names, dim in ((["wq_f4", "wk_f4", "wv_f4"], 0), (["wq_f4", "wo_f4"], 1)):
        got = fb.get_multi_cols(names, dim).get_raw()
        same(got, _joined([_block(ref[n], pg, dim) for n in names], dim), f"get_multi_cols {names} dim {dim}")
    fb.close()
    loader.close()


def _adapter_loader(pg, files, dtype, device=torch.device("cpu")):  # noqa: B008 (TGIS's own signature)
    """FastWeights.__init__: files round-robin by base name, the bounce buffer split over ranks."""
    import os

    loader = SafeTensorsFileLoader(pg, str(device), bbuf_size_kb=16384 // pg.size(), max_threads=2,
                                   nogds=True, debug_log=False)
    by_rank = {r: [] for r in range(pg.size())}
    for k, f in enumerate(sorted(files, key=os.path.basename)):
        by_rank[k % pg.size()].append(f)
    loader.add_filenames(by_rank)
    fb = loader.copy_files_to_device(dtype, max_copy_block_size=max(os.path.getsize(f) for f in files))
    return loader, fb


def seq_adapter_torch_dtypes(pg, files):
    """The connector passes torch dtypes (torch.float16) to copy_files_to_device and the getters."""
    ref = reference(tuple(files))
    half = {n: (t.to(torch.float16) if t.dtype in (torch.bfloat16, torch.float32) else t) for n, t in ref.items()}
    loader, fb = _adapter_loader(pg, files, torch.float16)
    st_device = loader.device
    assert sorted(loader.get_keys()) == sorted(ref)
    same(fb.get_tensor("q", device=st_device, dtype=torch.float16), half["q"], "get_tensor(torch.float16)")
    same(fb.get_tensor("norm"), half["norm"], "get_tensor: copy_files_to_device's torch dtype applies")
    same(fb.get_tensor("ids", device=st_device, dtype=torch.float16), ref["ids"], "integers are not converted")
    same(fb.get_sharded("o", 1, device=st_device, dtype=torch.bfloat16), _block(ref["o"], pg, 1).to(torch.bfloat16),
         "get_sharded(torch.bfloat16)")
    got = fb.push_tensor("rows5", 0, device=st_device, dtype=torch.float16)
    assert (got is None) == (pg.rank() != 0)
    if got is not None:
        same(got, half["rows5"], "push_tensor(torch.float16)")
    fused = fb.get_multi_cols(["q", "k", "v"], 0, device=st_device, dtype=torch.float16).get_raw()
    same(fused, torch.cat([_block(half[n], pg, 0) for n in "qkv"]), "get_multi_cols(torch.float16)")
    # NumPy dtypes are taken as well.
    same(fb.get_tensor("lm_head", dtype=np.dtype("float64")), ref["lm_head"].to(torch.float64), "np.dtype")
    fb.close()
    loader.close()


def seq_bad_dtype_raises_at_the_call(pg, files):
    """A dtype that is none raises at the call that got it, naming the valid names (on every rank)."""
    with pytest.raises(ValueError, match="unknown dtype 'float17'.*F16.*float16"):
        _adapter_loader(pg, files, "float17")
    loader, fb = _adapter_loader(pg, files, torch.float16)
    for call in (lambda: fb.get_tensor("q", dtype=torch.qint8), lambda: fb.get_sharded("o", 0, dtype=torch.qint8),
                 lambda: fb.push_tensor("q", 0, dtype=torch.qint8),
                 lambda: fb.get_multi_cols(["q", "k"], 0, dtype=torch.qint8),
                 lambda: fb.get_tensor_wrapped("q", dtype=torch.qint8)):
        with pytest.raises(ValueError, match="unknown dtype torch.qint8.*BF16"):
            call()
    same(fb.get_tensor("q"), reference(tuple(files))["q"].to(torch.float16), "the buffer still works after")
    fb.close()
    loader.close()


def seq_adapter_sequence(pg, files):
    """FastWeights as upstream's example writes it: its imports, the loader's device and pg, then
    get_filename, get_shape, get_tensor, push_tensor, get_sharded and get_multi_cols(...).get_raw()."""
    from fastsafetensors.common import get_device_numa_node
    from fastsafetensors.frameworks import TensorBase
    from fastsafetensors.st_types import DType

    device = torch.device("cpu", 0)  # str(device) is "cpu:0"
    assert get_device_numa_node(device.index) is None  # no CUDA device 0 here
    ref = reference(tuple(files))
    loader, fb = _adapter_loader(pg, files, DType.BF16, device)
    st_device, st_pg = loader.device, loader.pg
    assert st_device.as_str() == "cpu:0"
    assert st_pg.size() == pg.size() and st_pg.rank() == pg.rank()
    routing = {key: True for key in loader.get_keys()}
    assert sorted(routing) == sorted(ref)
    bf16 = {n: (t.to(torch.bfloat16) if t.dtype in (torch.float16, torch.float32) else t) for n, t in ref.items()}
    for name in ("q", "o", "norm", "ids", "router"):
        assert fb.get_filename(name) in files
        assert fb.get_shape(name) == loader.get_shape(name) == list(ref[name].shape)  # lists, as upstream
        same(fb.get_tensor(name, device=st_device, dtype=DType.BF16), bf16[name], f"get_tensor {name}")
    got = fb.push_tensor("rows5", 0, device=st_device, dtype=DType.BF16)
    assert not isinstance(got, TensorBase), "push_tensor returns the tensor itself, as upstream does"
    if got is not None:
        same(got, bf16["rows5"], "push_tensor")
    assert (got is None) == (pg.rank() != 0)
    same(fb.get_sharded("o", 1, device=st_device, dtype=DType.BF16), _block(bf16["o"], pg, 1), "get_sharded")
    fused = fb.get_multi_cols(["q", "k", "v"], 0, device=st_device, dtype=DType.BF16)
    assert isinstance(fused, TensorBase) and fused.dtype is DType.BF16 and fused.device.as_str() == "cpu:0"
    same(fused.get_raw(), torch.cat([_block(bf16[n], pg, 0) for n in "qkv"]), "get_multi_cols(...).get_raw()")
    fb.close()
    loader.close()


def seq_wrapped_getters(pg, files):
    """get_tensor_wrapped / get_sharded_wrapped / as_dict values are TensorBase (as upstream);
    .clone().detach().get_raw() is the tensor."""
    from fastsafetensors import fastsafe_open
    from fastsafetensors.frameworks import TensorBase

    ref = reference(tuple(files))
    loader, fb = _open(pg, files)
    t = fb.get_tensor_wrapped("q")
    assert isinstance(t, TensorBase) and t.dtype.value == "BF16"
    same(t.clone().detach().get_raw(), ref["q"], "get_tensor_wrapped")
    same(fb.get_sharded_wrapped("o", 0).get_raw(), _block(ref["o"], pg, 0), "get_sharded_wrapped")
    got = fb.as_dict({"rows5": 0, "norm": -1})
    assert all(isinstance(v, TensorBase) for v in got.values())
    same(got["rows5"].get_raw(), _block(ref["rows5"], pg, 0), "as_dict rows5")
    same(got["norm"].get_raw(), ref["norm"], "as_dict norm")
    fb.close()
    loader.close()
    with fastsafe_open({r: files[r::pg.size()] for r in range(pg.size())}, pg=pg, nogds=True) as f:
        same(f.get_tensor_wrapped("lm_head").get_raw(), ref["lm_head"], "fastsafe_open.get_tensor_wrapped")
        same(f.get_tensor("router"), ref["router"], "fastsafe_open.get_tensor")


def test_device_numa_node(monkeypatch, tmp_path):
    """get_device_numa_node(index): the node sysfs gives for the device's PCI bus id, else None."""
    from fastsafetensors import _cpp
    from fastsafetensors._src import device_engine
    from fastsafetensors.common import get_device_numa_node

    bus = "0000:3b:00.0"
    dev = _cpp.testing.HostDevice()
    dev.set_pci_bus_id(bus)
    monkeypatch.setattr(device_engine, "cuda_device", lambda index=0: dev)
    node_file = tmp_path / "bus" / "pci" / "devices" / bus / "numa_node"
    node_file.parent.mkdir(parents=True)
    node_file.write_text("1\n")
    assert get_device_numa_node(0, sysfs_root=str(tmp_path)) == 1
    node_file.write_text("-1\n")  # what sysfs says on machines of one node
    assert get_device_numa_node(0, sysfs_root=str(tmp_path)) is None
    assert get_device_numa_node(None) is None


test_single_process, test_two_ranks = ranks.client_tests(__name__)
