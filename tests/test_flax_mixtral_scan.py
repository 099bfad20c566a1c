"""examples/flax_mixtral_scan.py: a scanned Flax Mixtral with stacked experts (a stack over layers of a
stack over experts), loaded by transforms from a transformers checkpoint, against transformers."""

import os
import sys

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("flax")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples"))
import flax_mixtral_scan  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("mixtral_scan")
    torch.manual_seed(2)
    config = transformers.MixtralConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                                        vocab_size=256, max_position_embeddings=128)
    model = transformers.MixtralForCausalLM(config).eval()
    model.save_pretrained(str(path), max_shard_size="200KB")
    return str(path), model


def test_mixtral_stacked_experts_forward_matches_transformers(checkpoint):
    path, torch_model = checkpoint
    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
    params = flax_mixtral_scan.load_params(path, mesh, fused_qkv=True)
    model = flax_mixtral_scan.MixtralScan(flax_mixtral_scan.MixtralShape.from_pretrained(path), fused_qkv=True)
    ids = np.array([[1, 17, 42, 99, 3, 250, 7, 8, 64, 5]], dtype=np.int32)

    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids))["params"]
    assert jax.tree.structure(params) == jax.tree.structure(abstract)
    for (where, got), want in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(abstract)):
        assert (got.shape, got.dtype) == (want.shape, want.dtype), where
    moe = params["layers"]["moe"]
    assert moe["gate_up"].shape == (2, 4, 64, 2, 96)
    assert moe["gate_up"].sharding == NamedSharding(mesh, P(None, "model"))
    # expert 3 of layer 1: its w1 and w3 stacked, (in, out)
    from safetensors.numpy import load_file  # the files as written (transformers fuses experts in memory only)

    sd = {k: v for f in os.listdir(path) if f.endswith(".safetensors") for k, v in load_file(os.path.join(path, f)).items()}
    want = np.stack([sd[f"model.layers.1.block_sparse_moe.experts.3.{n}.weight"].T for n in ("w1", "w3")], 1)
    assert np.asarray(moe["gate_up"][1, 3]).tobytes() == want.tobytes()

    logits = np.asarray(jax.jit(model.apply)({"params": params}, ids))
    with torch.no_grad():
        reference = torch_model(torch.from_numpy(ids.astype(np.int64))).logits.numpy()
    np.testing.assert_allclose(logits, reference, rtol=1e-4, atol=1e-4)
