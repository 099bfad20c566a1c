"""SGLang's call sequence: per batch of ``world`` files, ``SafeTensorsFileLoader(pg, device)`` with no
keywords, ``add_filenames({i: [file]})``, ``copy_files_to_device()``, ``get_tensor`` of every key of
``key_to_rank_lidx``, then ``loader.close()`` only (SGLang never closes the buffer) — in one process
and over 2 gloo ranks, bit for bit against safetensors, tensors checked after the loader is closed."""

from __future__ import annotations


import pytest

pytest.importorskip("torch")

from fastsafetensors import SafeTensorsFileLoader  # noqa: E402

from . import ranks  # noqa: E402
from .ranks import reference, same  # noqa: E402


def _weights(pg, files, device="cpu"):
    """SGLang's fastsafetensors_weights_iterator (its device is cuda:{rank}; here the CPU)."""
    world = pg.size()
    for batch in [files[i:i + world] for i in range(0, len(files), world)]:
        loader = SafeTensorsFileLoader(pg, device)
        loader.add_filenames({i: [f] for i, f in enumerate(batch)})
        try:
            fb = loader.copy_files_to_device()
            for k in list(fb.key_to_rank_lidx.keys()):
                yield k, fb.get_tensor(k)
        finally:
            loader.close()


def seq_weights_iterator(pg, files):
    ref = reference(tuple(files))
    got = {}
    for k, t in _weights(pg, files):
        assert k not in got, f"{k} yielded twice"
        got[k] = t
    assert sorted(got) == sorted(ref)
    for k, t in got.items():  # every loader is closed by now: tensors own their memory
        same(t, ref[k], k)


def seq_one_file_per_rank_batches(pg, files):
    """A checkpoint of fewer files than ranks in the last batch (3 files on 2 ranks: 2, then 1)."""
    files = files[:3]
    ref = reference(tuple(files))
    got = dict(_weights(pg, files))
    assert sorted(got) == sorted(ref)
    for k, t in got.items():
        same(t, ref[k], k)


test_single_process, test_two_ranks = ranks.client_tests(__name__)
