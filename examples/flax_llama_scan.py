"""A Flax (linen) Llama in its own JAX layout, loaded from a Hugging Face checkpoint by transforms.

Unlike examples/flax_llama.py (modules named and laid out like the checkpoint), this model has
the layout JAX code usually wants: layers stacked on a leading axis for ``nn.scan``, kernels
``(in, out)``, attention projections split into heads ``(embed, heads, head_dim)`` (q/k/v fused
into one ``(embed, q+k+v heads, head_dim)`` kernel with ``fused_qkv=True``), gate and up stacked
into one ``(embed, 2, intermediate)`` kernel. :func:`transforms` is the mapping from the
checkpoint; each device's shard is read and built from only the source bytes it needs.

Run it on 8 fake CPU devices (jax, flax, transformers and a CPU build of torch)::

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python examples/flax_llama_scan.py
"""

from __future__ import annotations

import math
from typing import Any, Dict

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

import fastsafetensors.jax as fj
from flax_llama import LlamaShape, RMSNorm, rotary

# Leaf names of the nested params tree; first match wins, unmatched (the norms) are replicated.
RULES = [
    (r"attn\.(q|qkv)$", P(None, None, "model", None)),  # (layers, embed, heads, head_dim): heads over "model"
    (r"attn\.o$", P(None, "model", None, None)),  # (layers, heads, head_dim, embed)
    (r"attn\.(k|v)$", P(None, "model", None, None)),  # few kv heads: their embed axis instead
    (r"mlp\.gate_up$", P(None, None, None, "model")),
    (r"mlp\.down$", P(None, "model", None)),
    (r"embed\.embedding$|lm_head\.kernel$", P(None, "model")),
]


def transforms(c: LlamaShape, fused_qkv: bool = False) -> Dict[str, Any]:
    """Checkpoint tensors -> this model's leaves (dotted names of its params tree)."""
    E, H, KV, D = c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim
    w = lambda i, name: f"model.layers.{i}.{name}.weight"  # noqa: E731
    heads = lambda i, p, n: fj.reshape(fj.transpose(w(i, f"self_attn.{p}_proj")), (E, n, D))  # noqa: E731
    per_layer = {
        "input_layernorm.weight": lambda i: fj.src(w(i, "input_layernorm")),
        "post_attention_layernorm.weight": lambda i: fj.src(w(i, "post_attention_layernorm")),
        "attn.o": lambda i: fj.reshape(fj.transpose(w(i, "self_attn.o_proj")), (H, D, E)),
        "mlp.gate_up": lambda i: fj.stack([fj.transpose(w(i, "mlp.gate_proj")), fj.transpose(w(i, "mlp.up_proj"))],
                                          axis=1),
        "mlp.down": lambda i: fj.transpose(w(i, "mlp.down_proj")),
    }
    if fused_qkv:
        per_layer["attn.qkv"] = lambda i: fj.reshape(fj.transpose(fj.concat(
            [w(i, f"self_attn.{p}_proj") for p in "qkv"])), (E, H + 2 * KV, D))
    else:
        per_layer.update({"attn.q": lambda i: heads(i, "q", H), "attn.k": lambda i: heads(i, "k", KV),
                          "attn.v": lambda i: heads(i, "v", KV)})
    layer = r"model\.layers\.(\d+)\.input_layernorm\.weight"  # one name per layer: numbers the stack
    out = {f"layers.{leaf}": fj.stack(layer, fn) for leaf, fn in per_layer.items()}
    out.update({"embed.embedding": fj.src("model.embed_tokens.weight"), "norm.weight": fj.src("model.norm.weight"),
                "lm_head.kernel": fj.transpose("lm_head.weight")})
    return out


class Attention(nn.Module):
    cfg: LlamaShape
    fused_qkv: bool

    @nn.compact
    def __call__(self, x):
        c = self.cfg
        E, H, KV, D = c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim
        init = nn.initializers.lecun_normal()
        if self.fused_qkv:
            qkv = jnp.einsum("bte,ehd->bthd", x, self.param("qkv", init, (E, H + 2 * KV, D)))
            q, k, v = qkv[:, :, :H], qkv[:, :, H:H + KV], qkv[:, :, H + KV:]
        else:
            q, k, v = (jnp.einsum("bte,ehd->bthd", x, self.param(n, init, (E, h, D)))
                       for n, h in (("q", H), ("k", KV), ("v", KV)))
        pos = jnp.arange(x.shape[1])
        q, k = rotary(q, pos, c.rope_theta), rotary(k, pos, c.rope_theta)
        k, v = jnp.repeat(k, H // KV, axis=2), jnp.repeat(v, H // KV, axis=2)
        t = x.shape[1]
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(D)
        scores = jnp.where(jnp.tril(jnp.ones((t, t), bool)), scores, jnp.finfo(scores.dtype).min)
        out = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v)
        return jnp.einsum("bthd,hde->bte", out, self.param("o", init, (H, D, E)))


class MLP(nn.Module):
    cfg: LlamaShape

    @nn.compact
    def __call__(self, x):
        c = self.cfg
        gate_up = jnp.einsum("bte,eki->btki", x, self.param("gate_up", nn.initializers.lecun_normal(),
                                                            (c.hidden_size, 2, c.intermediate_size)))
        hidden = jax.nn.silu(gate_up[:, :, 0]) * gate_up[:, :, 1]
        return hidden @ self.param("down", nn.initializers.lecun_normal(), (c.intermediate_size, c.hidden_size))


class Block(nn.Module):
    cfg: LlamaShape
    fused_qkv: bool

    @nn.compact
    def __call__(self, x, _):
        eps = self.cfg.rms_norm_eps
        x = x + Attention(self.cfg, self.fused_qkv, name="attn")(RMSNorm(eps, name="input_layernorm")(x))
        return x + MLP(self.cfg, name="mlp")(RMSNorm(eps, name="post_attention_layernorm")(x)), None


class LlamaScan(nn.Module):
    cfg: LlamaShape
    fused_qkv: bool = False

    @nn.compact
    def __call__(self, ids):
        c = self.cfg
        x = nn.Embed(c.vocab_size, c.hidden_size, name="embed")(ids)
        layers = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True}, length=c.num_hidden_layers)
        x, _ = layers(c, self.fused_qkv, name="layers")(x, None)
        x = RMSNorm(c.rms_norm_eps, name="norm")(x)
        return nn.Dense(c.vocab_size, use_bias=False, name="lm_head")(x)


def load_params(path: str, mesh: Mesh, fused_qkv: bool = False, **options) -> Dict[str, Any]:
    """The model's params in its own layout, each shard read from only its source bytes."""
    cfg = LlamaShape.from_pretrained(path)
    return fj.load(path, mesh=mesh, rules=RULES, nested=True, transforms=transforms(cfg, fused_qkv), **options)


def main() -> None:
    import tempfile

    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    with tempfile.TemporaryDirectory() as path:
        torch.manual_seed(0)
        config = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             intermediate_size=128, vocab_size=256, max_position_embeddings=128)
        torch_model = LlamaForCausalLM(config).eval()
        torch_model.save_pretrained(path)
        mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "model"))
        metrics = fj.JaxLoadMetrics()
        params = load_params(path, mesh, fused_qkv=True, metrics=metrics)
        ids = np.arange(12, dtype=np.int32)[None, :]
        logits = jax.jit(LlamaScan(LlamaShape.from_pretrained(path), fused_qkv=True).apply)({"params": params}, ids)
        with torch.no_grad():
            reference = torch_model(torch.from_numpy(ids.astype(np.int64))).logits.numpy()
        print("max |logits - transformers|", float(np.abs(np.asarray(logits) - reference).max()))
        print("qkv", params["layers"]["attn"]["qkv"].shape, params["layers"]["attn"]["qkv"].sharding.spec)
        print(metrics.summary())


if __name__ == "__main__":
    main()
