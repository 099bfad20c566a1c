"""examples/flax_llama.py: a Flax Llama fed by fastsafetensors.jax from a transformers checkpoint,
against the same model fed by safetensors.flax and against the transformers model itself."""

import os
import sys

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("flax")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402
from safetensors.flax import load_file  # noqa: E402

import fastsafetensors.jax as fj  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples"))
import flax_llama  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      intermediate_size=128, vocab_size=256, max_position_embeddings=128)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(str(path))
    return str(path), model


def test_flax_llama_forward_matches_reference_loaders(checkpoint):
    path, torch_model = checkpoint
    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
    ours = flax_llama.load_params(path, mesh)
    theirs = flax_llama.to_flax_params(fj.nest(load_file(os.path.join(path, "model.safetensors"))))

    # Rules placed every tensor; values are the reference's, bit for bit.
    q = ours["model"]["layers"]["1"]["self_attn"]["q_proj"]["weight"]
    assert q.sharding == NamedSharding(mesh, P("model", None))
    assert ours["model"]["norm"]["weight"].sharding == NamedSharding(mesh, P())
    flat_ours = jax.tree_util.tree_leaves_with_path(ours)
    flat_theirs = dict(jax.tree_util.tree_leaves_with_path(theirs))
    assert len(flat_ours) == len(flat_theirs) == 2 + 9 * 2 + 1
    for key, leaf in flat_ours:
        assert np.asarray(leaf).tobytes() == np.asarray(flat_theirs[key]).tobytes(), key

    model = flax_llama.LlamaForCausalLM(flax_llama.LlamaShape.from_pretrained(path))
    ids = np.array([[1, 17, 42, 99, 3, 250, 7, 8]], dtype=np.int32)
    logits = np.asarray(jax.jit(model.apply)({"params": ours}, ids))
    expected = np.asarray(jax.jit(model.apply)({"params": theirs}, ids))
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        reference = torch_model(torch.from_numpy(ids.astype(np.int64))).logits.numpy()
    np.testing.assert_allclose(logits, reference, rtol=1e-4, atol=1e-4)
