"""Call sequences of the 0.3 loaders over URLs (run by tests/test_remote.py in a group of 2 gloo ranks):
the checkpoint of ``ranks.checkpoint()`` uploaded to bucket ``ranks`` of the S3 server that the
environment names (AWS_ENDPOINT and the credentials, as obstore reads them: no storage_options),
and again under ``fault/`` with ``fault/one-row.safetensors`` (tensor ``one_row``, one row) for
the sequence that replaces objects. The byte counts assume FASTSAFETENSORS_REMOTE_HEADER_KB small
enough that a header GET holds no tensor bytes (the test sets 8)."""

from __future__ import annotations

import os
from typing import List

import torch

from fastsafetensors import ParallelLoader, SafeTensorsFileLoader

from .ranks import reference, same

BUCKET = "ranks"


def urls(files: List[str]) -> List[str]:
    return [f"s3://{BUCKET}/{os.path.basename(f)}" for f in files]


def seq_get_tensor_and_sharded(pg, files):
    """Each rank GETs its objects; whole tensors are broadcast, blocks scattered."""
    ref = reference(tuple(files))
    world, rank = pg.size(), pg.rank()
    loader = SafeTensorsFileLoader(pg, "cpu")
    loader.add_filenames({r: urls(files)[r::world] for r in range(world)})
    fb = loader.copy_files_to_device()
    for name in ("q", "norm", "experts.3.w", "wq_f4"):
        same(fb.get_tensor(name), ref[name], name)
    rows = ref["experts.0.w"].shape[0] // world
    same(fb.get_sharded("experts.0.w", 0), ref["experts.0.w"][rank * rows:(rank + 1) * rows], "experts.0.w")
    fb.close()
    loader.close()


def seq_iterate_weights(pg, files):
    got = dict(ParallelLoader(pg, urls(files)).iterate_weights())
    ref = reference(tuple(files))
    assert sorted(got) == sorted(ref)
    for name, t in ref.items():
        same(got[name], t, name)


def _block(t, dim: int, rank: int, world: int):
    """Block ``rank`` of ``t`` along ``dim`` (the loaders' split rule is torch.tensor_split's)."""
    return torch.tensor_split(t, world, dim)[rank]


def _nbytes(t) -> int:
    return t.numel() * t.element_size()


def seq_own_slices_rows_and_columns(pg, files):
    """direct_read=None: each rank GETs its block of split tensors' rows (one range); a block along
    an inner dim is swapped from the other ranks' blocks of rows; whole tensors are GET once, by
    their owner, and broadcast. Each rank receives exactly its share of the bytes."""
    ref = reference(tuple(files))
    world, rank = pg.size(), pg.rank()
    loader = SafeTensorsFileLoader(pg, "cpu")
    loader.add_filenames({r: urls(files)[r::world] for r in range(world)})
    m = loader.metrics
    headers = m.remote_bytes
    fb = loader.copy_files_to_device()
    assert m.remote_bytes == headers, "the hybrid mode GETs nothing up front"
    experts = [f"experts.{i}.w" for i in range(4)]  # 256 x 512 bf16 each: rows of 1 KiB

    before = m.remote_bytes
    got = fb.as_dict({name: 0 for name in experts})
    for name in experts:
        same(got[name].get_raw(), _block(ref[name], 0, rank, world), name)
    assert m.remote_bytes - before == sum(_nbytes(ref[n]) for n in experts) // world

    # wq_f4: F4, two values a byte; rows5 (5 x 3): 3 and 2 rows, 2 and 1 columns
    cols = ["experts.0.w", "experts.3.w", "wq_f4", "o", "rows5"]
    before, requests, gap = m.remote_bytes, m.remote_requests, m.gap_bytes
    got = fb.as_dict({name: 1 for name in cols})
    for name in cols:
        same(got[name].get_raw(), _block(ref[name], 1, rank, world), name)
    # Its rows, in one GET a tensor at most (o and rows5 lie close: one GET, the bytes between counted)
    rows = sum(_nbytes(_block(ref[n], 0, rank, world)) for n in cols)
    assert m.remote_bytes - before == rows + m.gap_bytes - gap and m.gap_bytes - gap < 1024
    assert m.remote_requests - requests <= len(cols)

    qkv = fb.get_multi_cols(["q", "k", "v"], dim=0).get_raw()
    same(qkv, torch.cat([_block(ref[n], 0, rank, world) for n in "qkv"]), "qkv")
    before = m.remote_bytes
    same(fb.get_tensor("norm"), ref["norm"], "norm")  # owned by rank 0: GET there, broadcast
    assert m.remote_bytes - before == (_nbytes(ref["norm"]) if rank == 0 else 0)
    fb.close()
    loader.close()


def seq_direct_read_true(pg, files):
    """direct_read=True: every rank GETs what it returns, whole tensors too; nothing crosses the
    group. A block along an inner dim is one range per row: neighbours closer than
    FASTSAFETENSORS_REMOTE_GAP_KB share a GET, the other rank's columns between them counted."""
    ref = reference(tuple(files))
    world, rank = pg.size(), pg.rank()
    loader = SafeTensorsFileLoader(pg, "cpu", direct_read=True)
    loader.add_filenames({r: urls(files)[r::world] for r in range(world)})
    fb = loader.copy_files_to_device()
    m = loader.metrics
    before = m.remote_bytes
    for name in ("norm", "lm_head", "wq_f4"):
        same(fb.get_tensor(name), ref[name], name)
    assert m.remote_bytes - before == sum(_nbytes(ref[n]) for n in ("norm", "lm_head", "wq_f4"))
    same(fb.get_sharded("rows5", 0), ref["rows5"][:3] if rank == 0 else ref["rows5"][3:], "rows5")

    # Columns, a run of 512 bytes a row. With no gap allowed: exactly this rank's bytes, a GET a row.
    os.environ["FASTSAFETENSORS_REMOTE_GAP_KB"] = "0"
    try:
        before, requests = m.remote_bytes, m.remote_requests
        same(fb.get_sharded("experts.0.w", 1), _block(ref["experts.0.w"], 1, rank, world), "experts.0.w cols")
        assert m.remote_bytes - before == _nbytes(ref["experts.0.w"]) // world
        assert m.remote_requests - requests == ref["experts.0.w"].shape[0]
    finally:
        del os.environ["FASTSAFETENSORS_REMOTE_GAP_KB"]
    # With the default gap (64 KiB) the rows share one GET: the other rank's columns come along.
    before, gap = m.remote_bytes, m.gap_bytes
    same(fb.get_sharded("experts.1.w", 1), _block(ref["experts.1.w"], 1, rank, world), "experts.1.w cols")
    assert m.gap_bytes - gap == _nbytes(ref["experts.1.w"]) // world - 512
    assert m.remote_bytes - before == _nbytes(ref["experts.1.w"]) // world + m.gap_bytes - gap
    fb.close()
    loader.close()
    got = dict(ParallelLoader(pg, urls(files), direct_read=True).iterate_weights())
    assert sorted(got) == sorted(ref)
    for name, t in ref.items():
        same(got[name], t, name)


def seq_per_rank_filters(pg, files):
    """A tensor filter keeping different tensors per rank: each rank GETs only its own tensors."""
    ref = reference(tuple(files))
    world, rank = pg.size(), pg.rank()

    def keep(name):
        return name.startswith("experts") and int(name.split(".")[1]) % world == rank

    mine = [n for n in ref if keep(n)]
    loader = SafeTensorsFileLoader(pg, "cpu")
    loader.set_tensor_filter(keep)
    loader.add_filenames({r: urls(files)[r::world] for r in range(world)})
    fb = loader.copy_files_to_device()
    before = loader.metrics.remote_bytes
    for name in mine:
        same(fb.get_tensor(name), ref[name], name)
    assert loader.metrics.remote_bytes - before == sum(_nbytes(ref[n]) for n in mine)
    fb.close()
    loader.close()
    got = dict(ParallelLoader(pg, urls(files), tensor_filter=keep).iterate_weights())
    assert sorted(got) == sorted(mine)
    for name in mine:
        same(got[name], ref[name], name)


def _replace(key: str, by: str) -> None:
    """Puts the local file ``by`` over object ``key`` of the bucket (a new ETag)."""
    from tests.remote_servers import s3_client

    s3_client(os.environ["AWS_ENDPOINT"]).upload_file(by, BUCKET, key)


def seq_object_replaced_mid_load(pg, files):
    """An object replaced after the headers were read: the rank that GETs it raises
    RemoteObjectChangedError; the other finishes its own reads, or hears of it, within bounded time."""
    import time

    import pytest
    import torch.distributed as dist

    from fastsafetensors.errors import PeerRankError, RemoteObjectChangedError

    ref = reference(tuple(files))
    world, rank = pg.size(), pg.rank()
    fault = [f"s3://{BUCKET}/fault/{os.path.basename(f)}" for f in files]  # copies the test uploaded
    # Per-rank filters: rank 0 reads file 1's experts, rank 1 file 2's; only file 1 is replaced.
    loader = SafeTensorsFileLoader(pg, "cpu")
    loader.set_tensor_filter(lambda name: name in (("experts.0.w",), ("experts.2.w",))[rank])
    loader.add_filenames({r: fault[r::world] for r in range(world)})
    fb = loader.copy_files_to_device()
    dist.barrier()
    if rank == 0:
        _replace(f"fault/{os.path.basename(files[1])}", files[0])
    dist.barrier()
    start = time.monotonic()
    if rank == 0:
        with pytest.raises(RemoteObjectChangedError, match=fault[1]):
            fb.get_tensor("experts.0.w")
    else:
        same(fb.get_tensor("experts.2.w"), ref["experts.2.w"], "experts.2.w")
    assert time.monotonic() - start < 20
    fb.close()
    loader.close()
    dist.barrier()
    # The hybrid mode: a whole tensor GET by its owner (rank 0 owns file 2), and a block only
    # rank 0 has rows of (the fault's one-row tensor): rank 0 raises, rank 1 PeerRankError.
    loader = SafeTensorsFileLoader(pg, "cpu")
    loader.add_filenames({0: [fault[2], f"s3://{BUCKET}/fault/one-row.safetensors"], 1: [fault[3]]})
    fb = loader.copy_files_to_device()
    dist.barrier()
    if rank == 0:
        _replace(f"fault/{os.path.basename(files[2])}", files[0])
        _replace("fault/one-row.safetensors", files[0])
    dist.barrier()
    start = time.monotonic()
    for call in (lambda: fb.get_tensor("lm_head"), lambda: fb.get_sharded("one_row", 0)):
        with pytest.raises(RemoteObjectChangedError if rank == 0 else PeerRankError):
            call()
    assert time.monotonic() - start < 20
    fb.close()
    loader.close()


def seq_ranks_read_different_versions(pg, files):
    """An object replaced (same size, other bytes) between two ranks' header reads: each rank's GETs
    are pinned to the version it read, so the ranks refuse to go on, all of them, naming it."""
    import tempfile

    import pytest
    import torch.distributed as dist

    from fastsafetensors.errors import RemoteObjectChangedError

    rank = pg.rank()
    key = f"fault/{os.path.basename(files[3])}"
    by_rank = {0: [f"s3://{BUCKET}/fault/{os.path.basename(files[0])}"], 1: [f"s3://{BUCKET}/{key}"]}  # untouched so far
    loader = SafeTensorsFileLoader(pg, "cpu")
    if rank == 0:
        loader.add_filenames(by_rank)  # no collective: the ranks read the headers at different times
    dist.barrier()
    if rank == 0:
        with open(files[3], "rb") as f:
            data = bytearray(f.read())
        data[-1] ^= 0xFF
        with tempfile.NamedTemporaryFile(suffix=".safetensors") as other:
            other.write(data)
            other.flush()
            _replace(key, other.name)
    dist.barrier()
    if rank != 0:
        loader.add_filenames(by_rank)
    with pytest.raises(RemoteObjectChangedError, match="different versions") as caught:
        loader.copy_files_to_device()
    # the replaced object is the second added: the one named, not the first
    assert caught.value.filename == by_rank[1][0], caught.value
    assert by_rank[1][0] in str(caught.value) and by_rank[0][0] not in str(caught.value), caught.value
    loader.close()

