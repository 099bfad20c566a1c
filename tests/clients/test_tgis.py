"""The TGIS adapter's call sequence (upstream's ``examples/tgis_weight.py``): in one process and
over 2 gloo ranks, bit for bit against safetensors."""

from __future__ import annotations

import sys

import pytest

torch = pytest.importorskip("torch")

from fastsafetensors import SafeTensorsFileLoader, SingleGroup  # noqa: E402

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
        got = fb.get_multi_cols(names, dim)
        same(got, _joined([_block(ref[n], pg, dim) for n in names], dim), f"get_multi_cols {names} dim {dim}")
    fb.close()
    loader.close()


SEQUENCES = ranks.sequences(sys.modules[__name__])


@pytest.mark.parametrize("name", sorted(SEQUENCES))
def test_single_process(name):
    SEQUENCES[name](SingleGroup(), ranks.checkpoint())


@pytest.mark.timeout(ranks.tp_harness.GROUP_TIMEOUT_S + 60)
@pytest.mark.parametrize("name", sorted(SEQUENCES))
def test_two_ranks(name):
    ranks.assert_ranks("test_tgis", 2, name)
