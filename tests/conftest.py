"""Checkpoints shared by the tests, written once per session by real writers."""

from __future__ import annotations

import os

# The JAX sharding tests need 8 CPU devices; XLA reads this once, before anything imports jax.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
from typing import Dict

import pytest
import torch

from .helpers import ALL_DTYPES, random_tensor, save, write_raw

# F4's torch type holds two values per element: (3, 4) of float4_e2m1fn_x2 is F4 [3, 8].
DTYPE_SHAPE = (3, 8)


def _dtype_tensors(seed: int) -> Dict[str, torch.Tensor]:
    out = {}
    for i, dtype in enumerate(ALL_DTYPES):
        shape = (3, 4) if dtype == "F4" else DTYPE_SHAPE
        out[f"t_{dtype}"] = random_tensor(dtype, shape, seed + i)
    return out


@pytest.fixture(scope="session")
def dtype_file(tmp_path_factory) -> str:
    """One file written by safetensors.torch.save_file holding a tensor of every dtype torch
    can write (``t_<DTYPE>``), plus scalars and zero-size tensors of a few."""
    tensors = _dtype_tensors(seed=100)
    tensors.update({
        "scalar_f32": torch.tensor(3.25, dtype=torch.float32),
        "scalar_i64": torch.tensor(-(2**40) - 7, dtype=torch.int64),
        "scalar_bf16": random_tensor("BF16", (), 7),
        "empty_f32": torch.empty(0, 5, dtype=torch.float32),
        "empty_u8": torch.empty(0, dtype=torch.uint8),
    })
    path = tmp_path_factory.mktemp("dtypes") / "all_dtypes.safetensors"
    return save(path, tensors, metadata={"format": "pt", "writer": "tests"})


@pytest.fixture(scope="session")
def multi_files(tmp_path_factory):
    """Three files of one checkpoint (distinct tensor names), in a directory of their own."""
    d = tmp_path_factory.mktemp("multi")
    paths = []
    for k in range(3):
        tensors = {f"layer{k}.w": random_tensor("F32", (16, 8 + k), k),
                   f"layer{k}.b": random_tensor("BF16", (8 + k,), 10 + k),
                   f"layer{k}.ids": random_tensor("I64", (5,), 20 + k)}
        paths.append(save(d / f"part-{k}.safetensors", tensors))
    return paths


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory) -> str:
    """A tiny random Llama saved by transformers in several shards with an index.json."""
    import transformers  # imported here: it takes seconds, and only this fixture needs it
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=128, max_position_embeddings=64, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(config)
    d = tmp_path_factory.mktemp("llama")
    model.save_pretrained(str(d), safe_serialization=True, max_shard_size="100KB")
    shards = [f for f in os.listdir(d) if f.endswith(".safetensors")]
    assert len(shards) >= 3 and os.path.exists(d / "model.safetensors.index.json")
    return str(d)


@pytest.fixture
def raw_file(tmp_path):
    """``raw_file(header, data, **kw)`` writes a hand-made image (helpers.write_raw) under tmp_path."""
    counter = iter(range(1_000_000))

    def make(header, data: bytes = b"", **kw) -> str:
        return write_raw(tmp_path / f"raw{next(counter)}.safetensors", header, data, **kw)

    return make
