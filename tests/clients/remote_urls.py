"""Call sequences of the 0.3 loaders over URLs (run by tests/test_remote.py in a group of 2 gloo ranks):
the checkpoint of ``ranks.checkpoint()`` uploaded to bucket ``ranks`` of the S3 server that the
environment names (AWS_ENDPOINT and the credentials, as obstore reads them: no storage_options)."""

from __future__ import annotations

import os
from typing import List

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


def seq_direct_reads_refuse_urls(pg, files):
    """Reads by path on every rank cannot reach an object: refused, naming what to use."""
    import pytest

    from fastsafetensors.errors import UnsupportedURLError

    by_rank = {r: urls(files)[r::pg.size()] for r in range(pg.size())}
    loader = SafeTensorsFileLoader(pg, "cpu", direct_read=True)
    loader.add_filenames(by_rank)
    with pytest.raises(UnsupportedURLError, match="direct_read=False"):
        loader.copy_files_to_device()
    loader.close()
    loader = SafeTensorsFileLoader(pg, "cpu")  # different tensors per rank: each would read its own
    loader.set_tensor_filter(lambda name: name.startswith("experts") == (pg.rank() == 0))
    loader.add_filenames(by_rank)
    with pytest.raises(UnsupportedURLError, match="same filter on every rank"):
        loader.copy_files_to_device()
    loader.close()
