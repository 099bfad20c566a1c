"""examples/flax_llama_scan.py: a scanned Flax Llama in its own layout (heads split, q/k/v fused or
not, gate/up stacked, layers stacked), loaded by transforms from a transformers checkpoint and
compared against the transformers model itself."""

import os
import sys

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("flax")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

import fastsafetensors.jax as fj  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples"))
import flax_llama_scan  # noqa: E402
from flax_llama import LlamaShape  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama_scan")
    torch.manual_seed(1)
    config = transformers.LlamaConfig(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                      intermediate_size=128, vocab_size=256, max_position_embeddings=128)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(str(path), max_shard_size="200KB")  # several files and an index
    return str(path), model


@pytest.mark.parametrize("fused_qkv", [False, True], ids=["qkv_split", "qkv_fused"])
def test_scan_llama_forward_matches_transformers(checkpoint, fused_qkv):
    path, torch_model = checkpoint
    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
    metrics = fj.JaxLoadMetrics()
    params = flax_llama_scan.load_params(path, mesh, fused_qkv=fused_qkv, metrics=metrics)
    model = flax_llama_scan.LlamaScan(LlamaShape.from_pretrained(path), fused_qkv=fused_qkv)
    ids = np.array([[1, 17, 42, 99, 3, 250, 7, 8]], dtype=np.int32)

    # The loaded tree is exactly the model's own (names, shapes, dtypes), placed by the rules.
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids))["params"]
    assert jax.tree.structure(params) == jax.tree.structure(abstract)
    for (path_, got), want in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(abstract)):
        assert (got.shape, got.dtype) == (want.shape, want.dtype), path_
    attn = params["layers"]["attn"]
    q = attn["qkv"] if fused_qkv else attn["q"]
    assert q.shape == (3, 64, 8 if fused_qkv else 4, 16)
    assert q.sharding == NamedSharding(mesh, P(None, None, "model", None))
    assert params["layers"]["mlp"]["gate_up"].shape == (3, 64, 2, 128)
    assert metrics.bytes_read > 0 and metrics.files > 1

    logits = np.asarray(jax.jit(model.apply)({"params": params}, ids))
    with torch.no_grad():
        reference = torch_model(torch.from_numpy(ids.astype(np.int64))).logits.numpy()
    np.testing.assert_allclose(logits, reference, rtol=1e-4, atol=1e-4)
