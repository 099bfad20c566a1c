"""One rank of a tensor-parallel test group: runs every scenario, reports "ok" or a traceback each.

Usage (by tp_harness): tp_worker.py RANK WORLD PORT FILES_JSON OUT_DIR. Every scenario compares
what the loader returns, bit for bit, with slices of ``safetensors.torch.load_file``'s tensors.
"""

from __future__ import annotations

import datetime
import gc
import json
import os
import shutil
import sys
import time
import traceback

import torch
import torch.distributed as dist
from safetensors.torch import load_file

import fastsafetensors
from fastsafetensors import ParallelLoader, SafeTensorsFileLoader, _cpp
from fastsafetensors.errors import (LoaderClosedError, PeerRankError, ReadError, ShardRequestError, TensorNotFound,
                                    TruncatedFileError)
from fastsafetensors.st_types import DType
from tests.helpers import assert_same_tensor as same

RANK, WORLD, PORT = (int(a) for a in sys.argv[1:4])
FILES = json.load(open(sys.argv[4]))
OUT = sys.argv[5]
REF = {name: t for f in FILES for name, t in load_file(f).items()}
MODES = {"scatter": False, "direct": True, "auto": None}
# GPU runs: FST_TP_DEVICE=cuda:0 (or "cuda:{rank}" with FST_TP_BACKEND=nccl, one GPU per rank)
DEVICE = os.environ.get("FST_TP_DEVICE", "cpu").format(rank=RANK)
BACKEND = os.environ.get("FST_TP_BACKEND", "gloo")


def block(name: str, dim: int) -> torch.Tensor:
    """The reference block of this rank (torch.tensor_split: 5 rows on 4 ranks are 2,1,1,1)."""
    t = REF[name]
    return t if dim == -1 else torch.tensor_split(t, WORLD, dim)[RANK]


def open_fb(direct: bool, files=FILES):
    loader = SafeTensorsFileLoader(dist.group.WORLD, device=DEVICE, nogds=True, direct_read=direct)
    loader.add_filenames({r: files[r::WORLD] for r in range(WORLD)})
    return loader, loader.copy_files_to_device()


def scenario_get_tensor():
    for mode, direct in MODES.items():
        loader, fb = open_fb(direct)
        keys = list(fb.key_to_rank_lidx)
        assert sorted(keys) == sorted(REF), "key_to_rank_lidx must hold every tensor"
        for name in keys:
            got = fb.get_tensor(name)
            assert got.device.type == torch.device(DEVICE).type, f"{mode} get_tensor {name} on {got.device}"
            same(got, REF[name], f"{mode} get_tensor {name}")
        fb.close()
        loader.close()


def scenario_get_sharded():
    """Every tensor along every dim: uneven (5 rows), with empty blocks (3 rows on 4), packed fp8, 0-d."""
    for mode, direct in MODES.items():
        for dim in (-1, 0, 1, 2):  # a fresh buffer per dim: a file's buffer goes once all its tensors were taken
            loader, fb = open_fb(direct)
            for name, t in REF.items():
                if dim < t.dim():
                    same(fb.get_sharded(name, dim), block(name, dim), f"{mode} get_sharded {name} dim {dim}")
            fb.close()


def _tp_dims():
    dims = {}
    for name, t in REF.items():
        if t.dim() < 2:
            dims[name] = -1
        else:
            dims[name] = 1 if ("o_proj" in name or "down_proj" in name or name in ("o", "cube")) else 0
    return dims


def scenario_as_dict():
    for mode, direct in MODES.items():
        loader, fb = open_fb(direct)
        dims = _tp_dims()
        got = fb.as_dict(dims)
        assert list(got) == list(dims), f"{mode}: as_dict keys"
        for name, dim in dims.items():
            same(got[name].get_raw(), block(name, dim), f"{mode} as_dict {name} dim {dim}")
        fb.close()


def scenario_as_dict_unpacked():
    """Every tensor in its own collective (the path large tensors take), blocks sent as views where they can be."""
    from fastsafetensors._src import distributed

    saved = distributed.PACK_BELOW
    distributed.PACK_BELOW = 0
    try:
        loader, fb = open_fb(False)
        dims = _tp_dims()
        got = fb.as_dict(dims)
        for name, dim in dims.items():
            same(got[name].get_raw(), block(name, dim), f"unpacked as_dict {name} dim {dim}")
        fb.close()
    finally:
        distributed.PACK_BELOW = saved


def scenario_multi_cols():
    mlp = [[f"model.layers.{i}.mlp.gate_proj.weight", f"model.layers.{i}.mlp.up_proj.weight"] for i in (0, 1)]
    fused = {0: [["q", "k", "v"], [f"model.layers.0.self_attn.{p}_proj.weight" for p in "qkv"], *mlp],
             1: [*mlp, ["embed", "embed"]]}
    for mode, direct in MODES.items():
        for dim in (0, 1):
            loader, fb = open_fb(direct)
            for names in fused[dim]:
                want = torch.cat([block(n, dim) for n in names], dim)
                same(fb.get_multi_cols(names, dim).get_raw(), want, f"{mode} get_multi_cols {names} dim {dim}")
            fb.close()


def scenario_push_tensor():
    for mode, direct in MODES.items():
        loader, fb = open_fb(direct)
        for dst in range(WORLD):
            for name in ("embed", "rows5", "fp8", "model.norm.weight", "scalar"):
                got = fb.push_tensor(name, dst)
                if RANK == dst:
                    same(got, REF[name], f"{mode} push_tensor {name} to {dst}")
                else:
                    assert got is None, f"{mode} push_tensor {name} to {dst}: rank {RANK} got a tensor"
        fb.close()


def scenario_dtype_and_metadata():
    for mode, direct in MODES.items():
        loader, fb = open_fb(direct)
        same(fb.get_tensor("norm", dtype=DType.F16), REF["norm"].to(torch.float16), f"{mode} dtype F16")
        same(fb.get_sharded("embed", 0, dtype="F32"), block("embed", 0).float(), f"{mode} sharded dtype F32")
        same(fb.get_tensor("rows3", dtype=DType.F16), REF["rows3"], f"{mode} integers keep their dtype")
        assert fb.get_shape("cube") == [2, 5, 3]
        assert fb.get_filename("rows5") == FILES[1]
        assert fb.key_to_rank_lidx["rows5"] == (1 % WORLD, 1 // WORLD)
        assert loader.get_shape("embed") == [10, 8] and set(loader.get_keys()) == set(REF)
        fb.close()
        loader.reset()
        loader.add_filenames({0: FILES[:1]})
        fb = loader.copy_files_to_device()
        assert sorted(fb.key_to_rank_lidx) == ["embed", "k", "o", "q", "v"], "reset() must forget earlier files"
        same(fb.get_sharded("o", 1), block("o", 1), f"{mode} after reset")
        fb.close()


def _expect(exc_type, fn, what):
    try:
        fn()
    except exc_type:
        return
    except Exception as exc:  # noqa: BLE001 - report what came instead
        raise AssertionError(f"{what}: raised {type(exc).__name__}: {exc}, want {exc_type.__name__}") from exc
    raise AssertionError(f"{what}: raised nothing, want {exc_type.__name__}")


def scenario_errors():
    """Every rank raises (no hang), and the group still works afterwards."""
    for mode, direct in MODES.items():
        loader, fb = open_fb(direct)
        _expect(TensorNotFound, lambda: fb.get_tensor("nope"), f"{mode} unknown name")
        _expect(TensorNotFound, lambda: fb.as_dict({"embed": 0, "nope": 0}), f"{mode} unknown name in as_dict")
        _expect(ShardRequestError, lambda: fb.get_sharded("embed", 2), f"{mode} dim past the rank")
        _expect(ShardRequestError, lambda: fb.get_sharded("embed", -2), f"{mode} negative dim")
        _expect(ShardRequestError, lambda: fb.get_sharded("scalar", 0), f"{mode} dim of a 0-d tensor")
        _expect(ShardRequestError, lambda: fb.get_multi_cols(["q", "o"], 0), f"{mode} multi_cols mismatch")
        _expect(ShardRequestError, lambda: fb.push_tensor("q", WORLD), f"{mode} push to a missing rank")
        _expect(ValueError, lambda: fb.get_tensor("q", dtype="F99"), f"{mode} unknown dtype")
        same(fb.get_sharded("rows5", 0), block("rows5", 0), f"{mode} group usable after errors")
        # hand out every tensor of part-1 once: its buffer is released, asking again fails everywhere
        part1 = ["rows5", "rows3", "scalar", "empty", "cube"]
        fb.as_dict({n: -1 for n in part1[1:]})
        _expect(LoaderClosedError, lambda: fb.get_tensor("rows5"), f"{mode} tensor after its buffer was released")
        same(fb.get_tensor("q"), REF["q"], f"{mode} other files unaffected")
        fb.close()
        fb.close()
        _expect(LoaderClosedError, lambda: fb.get_tensor("q"), f"{mode} after close")
        _expect(ShardRequestError, lambda: loader.add_filenames({WORLD: FILES[:1]}), f"{mode} rank out of range")


def scenario_read_error_on_one_rank():
    """A file truncated after the headers were read fails on its owner and on every other rank."""
    tmp = os.path.join(OUT, "trunc")
    if RANK == 0:
        os.makedirs(tmp, exist_ok=True)
        for f in FILES[:WORLD]:
            shutil.copy(f, tmp)
    dist.barrier()
    files = [os.path.join(tmp, os.path.basename(f)) for f in FILES[:WORLD]]
    loader = SafeTensorsFileLoader(dist.group.WORLD, device=DEVICE, nogds=True, direct_read=False)
    loader.add_filenames({r: [files[r]] for r in range(WORLD)})
    default = SafeTensorsFileLoader(dist.group.WORLD, device=DEVICE, nogds=True)  # hybrid mode
    default.add_filenames({r: [files[r]] for r in range(WORLD)})
    dist.barrier()
    if RANK == WORLD - 1:
        os.truncate(files[-1], os.path.getsize(files[-1]) - 8)
    dist.barrier()
    want = TruncatedFileError if RANK == WORLD - 1 else PeerRankError
    _expect(want, loader.copy_files_to_device, "copy_files_to_device with a truncated file")
    # default mode: the owner reads the whole tensor when asked, and its failure reaches every rank
    fb = default.copy_files_to_device()  # reads nothing yet
    frames = fastsafetensors.SafeTensorsMetadata.from_file(FILES[WORLD - 1]).tensors  # the untruncated original
    last = max(frames, key=lambda n: frames[n].data_offsets[1])  # its bytes include the cut ones
    _expect(want, lambda: fb.get_tensor(last), f"get_tensor({last}) from a truncated file")
    same(fb.get_tensor("embed"), REF["embed"], "the group still works after a failed read")
    _expect(ShardRequestError, _mismatched_maps, "different {rank: files} maps")


def _mismatched_maps():
    loader = SafeTensorsFileLoader(dist.group.WORLD, device=DEVICE, nogds=True)
    loader.add_filenames({0: FILES[:1]} if RANK == 0 else {0: FILES[1:2]})
    loader.copy_files_to_device()


def scenario_parallel_loader():
    for direct in (False, True, None):
        for queue_size, producers in ((-1, 1), (0, 1), (2, 2)):
            what = f"ParallelLoader direct={direct} queue_size={queue_size} producers={producers}"
            seen = []
            loader = ParallelLoader(dist.group.WORLD, FILES, max_concurrent_producers=producers,
                                    queue_size=queue_size, use_tqdm_on_load=(queue_size == 0), device=DEVICE,
                                    nogds=True, direct_read=direct)
            for name, t in loader.iterate_weights():
                same(t, REF[name], f"{what}: {name}")
                seen.append(name)
            assert sorted(seen) == sorted(REF) and len(seen) == len(set(seen)), f"{what}: not every tensor once"
            loader.close()


def scenario_parallel_loader_missing_file_on_one_rank():
    """A file only the last rank cannot open: it raises the read error, every other rank a
    PeerRankError (none is left waiting in the collective that agrees on the files)."""
    missing = os.path.join(OUT, "missing", os.path.basename(FILES[0]))
    files = [missing, *FILES[1:]] if RANK == WORLD - 1 else FILES
    try:
        ParallelLoader(dist.group.WORLD, files, use_tqdm_on_load=False, device=DEVICE, nogds=True)
    except ReadError as exc:
        assert RANK == WORLD - 1 and exc.filename == missing, repr(exc)
    except PeerRankError:
        assert RANK != WORLD - 1, "the failing rank raised PeerRankError, not its own error"
    else:
        raise AssertionError("ParallelLoader raised nothing")
    loader = ParallelLoader(dist.group.WORLD, FILES[:WORLD], use_tqdm_on_load=False, device=DEVICE, nogds=True)
    for name, t in loader.iterate_weights():
        same(t, REF[name], f"after the failure: {name}")
    loader.close()


def scenario_parallel_loader_close_frees_batches():
    gc.collect()
    before = _cpp.testing.host_live_bytes()
    loader = ParallelLoader(dist.group.WORLD, FILES, queue_size=2, max_concurrent_producers=2,
                            use_tqdm_on_load=False, device=DEVICE, nogds=True, direct_read=False)
    it = loader.iterate_weights()
    name, t = next(it)
    same(t, REF[name], "first tensor")
    del t
    loader.close()
    it.close()
    gc.collect()
    assert _cpp.testing.host_live_bytes() == before, f"{_cpp.testing.host_live_bytes() - before} bytes still held after close()"


def scenario_direct_read_bytes():
    """In direct mode a rank reads only its blocks of split tensors (plus the replicated ones)."""
    loader, fb = open_fb(True)
    dims = _tp_dims()
    start = loader.metrics.bytes_read
    got = fb.as_dict(dims)
    read = loader.metrics.bytes_read - start
    mine = sum(got[n].get_raw().numel() * got[n].get_raw().element_size() for n in dims)
    assert read == mine, f"direct mode read {read} bytes for {mine} bytes of blocks"
    split = sum(REF[n].numel() * REF[n].element_size() for n, d in dims.items() if d >= 0)
    replicated = sum(REF[n].numel() * REF[n].element_size() for n, d in dims.items() if d < 0)
    assert read <= split / WORLD + replicated + 64 * len(dims), (read, split, replicated)
    fb.close()


def scenario_compat_03_calls():
    """The calls inference servers make, spelled as in the 0.3 reference."""
    # an inference server's weight iterator: one file per rank per step, the loader reset between steps
    loader = SafeTensorsFileLoader(dist.group.WORLD, "cpu", nogds=True)
    seen = []
    for start in range(0, len(FILES), WORLD):
        loader.add_filenames({rank: [f] for rank, f in enumerate(FILES[start:start + WORLD])})
        fb = loader.copy_files_to_device()
        keys = list(fb.key_to_rank_lidx.keys())
        for k in keys:
            same(fb.get_tensor(k), REF[k], f"server loop {k}")
            seen.append(k)
        fb.close()
        loader.reset()
    loader.close()
    assert sorted(seen) == sorted(REF)
    loader = SafeTensorsFileLoader(dist.group.WORLD, "cpu", nogds=True, framework="pytorch")
    loader.add_filenames({r: FILES[r::WORLD] for r in range(WORLD)})
    fb = loader.copy_files_to_device(dtype=DType.AUTO, use_buf_register=True, max_copy_block_size=16 * 1024 ** 3)
    for k in fb.key_to_rank_lidx.keys():
        t = fb.get_tensor(k).clone().detach()
        same(t, REF[k], f"0.3 get_tensor {k}")
    fb.close()
    loader.close()
    loader = fastsafetensors.SafeTensorsFileLoader(dist.group.WORLD, device="cpu", nogds=True)
    loader.add_filenames({r: FILES[r::WORLD] for r in range(WORLD)})
    fb = loader.copy_files_to_device()
    same(fb.get_sharded("embed", 0, device="cpu", dtype=DType.AUTO), block("embed", 0), "0.3 get_sharded")
    same(fb.get_multi_cols(["q", "k", "v"], 0, device="cpu").get_raw(), torch.cat([block(n, 0) for n in "qkv"]),
         "0.3 cols")
    got = fb.push_tensor("norm", 0, device="cpu")
    assert (got is None) == (RANK != 0)
    fb.close()
    loader.close()
    with fastsafetensors.fastsafe_open(filenames=FILES, pg=dist.group.WORLD, nogds=True, device="cpu") as f:
        for key in f.get_keys():
            same(f.get_tensor(key).clone().detach(), REF[key], f"fastsafe_open(pg) {key}")


SCENARIOS = [v for k, v in sorted(globals().items()) if k.startswith("scenario_")]


def main() -> None:
    if DEVICE.startswith("cuda"):
        torch.cuda.set_device(torch.device(DEVICE))
    dist.init_process_group(BACKEND, init_method=f"tcp://127.0.0.1:{PORT}", rank=RANK, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=30))
    report = {}
    out = os.path.join(OUT, f"rank{RANK}.json")
    for fn in SCENARIOS:
        name = fn.__name__[len("scenario_"):]
        start = time.perf_counter()
        try:
            fn()
            report[name] = "ok"
            print(f"rank {RANK}: {name} ok in {time.perf_counter() - start:.2f}s", flush=True)
        except Exception:  # noqa: BLE001 - reported to the test
            report[name] = traceback.format_exc()
        with open(out + ".tmp", "w") as f:
            json.dump(report, f)
        os.replace(out + ".tmp", out)
        dist.barrier()  # a scenario failing on one rank must not shift the next one's collectives
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
