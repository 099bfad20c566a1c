"""A small Flax (linen) Llama whose parameters come straight from a Hugging Face checkpoint,
sharded over a device mesh by fastsafetensors.jax.

The modules are named like the checkpoint's tensors (``model.layers.0.self_attn.q_proj.weight``)
and keep its layouts (linear weights are (out, in)), so ``load(..., nested=True)`` returns the
``params`` tree as is. Tensor-parallel placement comes from RULES: column-parallel projections
split their output rows over the "model" axis, row-parallel ones their input columns.

Run it on 8 fake CPU devices (it needs jax, flax, transformers and a CPU build of torch:
``pip install ".[examples]"``, torch from your platform's CPU index)::

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python examples/flax_llama.py
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any, Dict

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

import fastsafetensors.jax as fj

# First match wins; anything unmatched (the RMSNorm weights) is replicated.
RULES = [
    (r"(q_proj|k_proj|v_proj|gate_proj|up_proj)\.weight$", P("model", None)),
    (r"(o_proj|down_proj)\.weight$", P(None, "model")),
    (r"embed_tokens\.weight$", P(None, "model")),
    (r"lm_head\.weight$", P("model", None)),
]


@dataclass(frozen=True)
class LlamaShape:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    rms_norm_eps: float
    rope_theta: float

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_pretrained(cls, path: str) -> "LlamaShape":
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            c = json.load(f)
        theta = c.get("rope_theta") or (c.get("rope_parameters") or {}).get("rope_theta", 10000.0)
        return cls(c["vocab_size"], c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"],
                   c["num_attention_heads"], c.get("num_key_value_heads") or c["num_attention_heads"],
                   c["rms_norm_eps"], float(theta))


class Linear(nn.Module):
    """y = x W^T with W stored (out, in), as in the checkpoint."""

    features: int

    @nn.compact
    def __call__(self, x):
        w = self.param("weight", nn.initializers.lecun_normal(), (self.features, x.shape[-1]))
        return x @ w.T


class RMSNorm(nn.Module):
    eps: float

    @nn.compact
    def __call__(self, x):
        w = self.param("weight", nn.initializers.ones, (x.shape[-1],))
        x32 = x.astype(jnp.float32)
        return (x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)).astype(x.dtype) * w


def rotary(x, positions, theta: float):
    """Llama rotary embedding over the last axis (halves rotated, not interleaved)."""
    dim = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
    angles = positions[:, None].astype(jnp.float32) * inv_freq[None, :]
    cos = jnp.concatenate([jnp.cos(angles)] * 2, axis=-1)[None, :, None, :]
    sin = jnp.concatenate([jnp.sin(angles)] * 2, axis=-1)[None, :, None, :]
    half = dim // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    cfg: LlamaShape

    @nn.compact
    def __call__(self, x):
        c = self.cfg
        b, t, _ = x.shape
        q = Linear(c.num_attention_heads * c.head_dim, name="q_proj")(x).reshape(b, t, c.num_attention_heads, c.head_dim)
        k = Linear(c.num_key_value_heads * c.head_dim, name="k_proj")(x).reshape(b, t, c.num_key_value_heads, c.head_dim)
        v = Linear(c.num_key_value_heads * c.head_dim, name="v_proj")(x).reshape(b, t, c.num_key_value_heads, c.head_dim)
        pos = jnp.arange(t)
        q, k = rotary(q, pos, c.rope_theta), rotary(k, pos, c.rope_theta)
        groups = c.num_attention_heads // c.num_key_value_heads
        k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(c.head_dim)
        scores = jnp.where(jnp.tril(jnp.ones((t, t), bool)), scores, jnp.finfo(scores.dtype).min)
        out = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v).reshape(b, t, -1)
        return Linear(c.hidden_size, name="o_proj")(out)


class MLP(nn.Module):
    cfg: LlamaShape

    @nn.compact
    def __call__(self, x):
        c = self.cfg
        gate = Linear(c.intermediate_size, name="gate_proj")(x)
        up = Linear(c.intermediate_size, name="up_proj")(x)
        return Linear(c.hidden_size, name="down_proj")(jax.nn.silu(gate) * up)


class DecoderLayer(nn.Module):
    cfg: LlamaShape

    @nn.compact
    def __call__(self, x):
        x = x + Attention(self.cfg, name="self_attn")(RMSNorm(self.cfg.rms_norm_eps, name="input_layernorm")(x))
        return x + MLP(self.cfg, name="mlp")(RMSNorm(self.cfg.rms_norm_eps, name="post_attention_layernorm")(x))


class Layers(nn.Module):
    """Holds layer i under the name "i", as the checkpoint does (model.layers.i...)."""

    cfg: LlamaShape

    @nn.compact
    def __call__(self, x):
        for i in range(self.cfg.num_hidden_layers):
            x = DecoderLayer(self.cfg, name=str(i))(x)
        return x


class LlamaModel(nn.Module):
    cfg: LlamaShape

    @nn.compact
    def __call__(self, ids):
        c = self.cfg
        emb = nn.Embed(c.vocab_size, c.hidden_size, name="embed_tokens", embedding_init=nn.initializers.normal(0.02))
        x = emb(ids)
        x = Layers(c, name="layers")(x)
        return RMSNorm(c.rms_norm_eps, name="norm")(x)


class LlamaForCausalLM(nn.Module):
    cfg: LlamaShape

    @nn.compact
    def __call__(self, ids):
        return Linear(self.cfg.vocab_size, name="lm_head")(LlamaModel(self.cfg, name="model")(ids))


def to_flax_params(tree: Dict[str, Any]) -> Dict[str, Any]:
    """nn.Embed calls its table "embedding": the only name that differs from the checkpoint."""
    model = dict(tree["model"])
    model["embed_tokens"] = {"embedding": model["embed_tokens"]["weight"]}
    return {**tree, "model": model}


def load_params(path: str, mesh: Mesh, **options) -> Dict[str, Any]:
    """The model's params, each tensor read only where its shards go."""
    return to_flax_params(fj.load(path, mesh=mesh, rules=RULES, nested=True, **options))


def main() -> None:
    import tempfile

    import torch
    from transformers import LlamaConfig
    from transformers import LlamaForCausalLM as TorchLlama

    with tempfile.TemporaryDirectory() as path:
        torch.manual_seed(0)
        config = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             intermediate_size=128, vocab_size=256, max_position_embeddings=128)
        TorchLlama(config).save_pretrained(path)
        mesh = Mesh(jax.devices()[:8], ("model",)) if len(jax.devices()) >= 8 else Mesh(jax.devices()[:1], ("model",))
        metrics = fj.JaxLoadMetrics()
        params = load_params(path, mesh, metrics=metrics)
        model = LlamaForCausalLM(LlamaShape.from_pretrained(path))
        ids = jnp.arange(12, dtype=jnp.int32)[None, :] % 256
        logits = jax.jit(model.apply)({"params": params}, ids)
        print("logits", logits.shape, "q_proj sharding", params["model"]["layers"]["0"]["self_attn"]["q_proj"]["weight"].sharding)
        print(metrics.summary())


if __name__ == "__main__":
    main()
