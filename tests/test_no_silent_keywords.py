"""Nothing silent in the arguments: `names="ab"` is one tensor name, unknown keywords of the 0.3
loader raise TypeError, and `sha256=` must name the files it checks."""

import hashlib
import logging

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import fastsafetensors
from fastsafetensors import SafeTensorsFileLoader, SingleGroup
from fastsafetensors.errors import TensorNotFound
from fastsafetensors.loader import IGNORED_KEYWORDS


@pytest.fixture
def ckpt(tmp_path):
    """Tensors named `a`, `b` and `ab`: a string iterated by character would load `a` and `b`."""
    rng = np.random.default_rng(5)
    path = str(tmp_path / "m.safetensors")
    save_file({"a": rng.standard_normal((3, 2)).astype(np.float32), "b": np.arange(5, dtype=np.int64),
               "ab": rng.standard_normal((4, 2)).astype(np.float32)}, path)
    return path


def _same(got, want):
    assert got.dtype == want.dtype and got.shape == want.shape and got.tobytes() == want.tobytes()


def test_load_names_string_is_one_name(ckpt):
    out = fastsafetensors.load(ckpt, names="ab")
    assert list(out) == ["ab"]
    _same(out["ab"], load_file(ckpt)["ab"])


def test_load_names_string_not_in_file_is_not_found(tmp_path, ckpt):
    with pytest.raises(TensorNotFound, match="`ba`"):
        fastsafetensors.load(ckpt, names="ba")


def test_jax_load_names_string_is_one_name(ckpt):
    jax = pytest.importorskip("jax")
    import fastsafetensors.jax as fjax

    out = fjax.load(ckpt, jax.devices()[0], names="ab")
    assert list(out) == ["ab"]
    _same(np.asarray(out["ab"]), load_file(ckpt)["ab"])


def test_get_multi_cols_names_string_is_one_name(ckpt):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file as torch_load

    loader = SafeTensorsFileLoader(SingleGroup(), "cpu", nogds=True)
    loader.add_filenames({0: [ckpt]})
    fb = loader.copy_files_to_device()
    got = fb.get_multi_cols("ab", 0).get_raw()
    assert torch.equal(got, torch_load(ckpt)["ab"])
    fb.close()
    loader.close()


def test_loader_unknown_keyword_raises_naming_it():
    with pytest.raises(TypeError, match="unexpected keyword argument\\(s\\): direct_raed, nogdss$"):
        SafeTensorsFileLoader(SingleGroup(), "cpu", nogdss=True, direct_raed=True)


def test_parallel_loader_unknown_keyword_raises_naming_it(ckpt):
    pytest.importorskip("torch")
    with pytest.raises(TypeError, match="tensor_filtre"):
        fastsafetensors.ParallelLoader(SingleGroup(), [ckpt], nogds=True, tensor_filtre=lambda n: True)


@pytest.mark.parametrize("keyword", sorted(IGNORED_KEYWORDS))
def test_loader_accepted_and_ignored_keyword_is_logged(ckpt, caplog, keyword):
    with caplog.at_level(logging.DEBUG, logger="fastsafetensors"):
        loader = SafeTensorsFileLoader(SingleGroup(), "cpu", nogds=True, **{keyword: 1024})
    assert f"{keyword}=1024 accepted and ignored" in caplog.text
    loader.add_filenames({0: [ckpt]})
    fb = loader.copy_files_to_device()
    want = load_file(ckpt)
    for name in want:
        _same(fb.get_tensor(name).numpy(), want[name])
    loader.close()


def test_docs_list_every_accepted_and_ignored_keyword():
    import os
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "torch.md")) as f:
        text = f.read()
    for keyword in IGNORED_KEYWORDS:
        assert f"`{keyword}`" in text


def test_empty_sha256_mapping_raises(ckpt):
    with pytest.raises(ValueError, match="sha256=\\{\\} names no file"):
        fastsafetensors.load(ckpt, sha256={})


def test_sha256_key_naming_no_file_raises(ckpt):
    digest = hashlib.sha256(open(ckpt, "rb").read()).hexdigest()
    with pytest.raises(ValueError, match="not part of this load: other.safetensors"):
        fastsafetensors.load(ckpt, sha256={ckpt: digest, "other.safetensors": digest})
    out = fastsafetensors.load(ckpt, sha256={ckpt: digest.upper()})
    _same(out["ab"], load_file(ckpt)["ab"])
