"""A Flax (linen) Mixtral in its own JAX layout, loaded from a Hugging Face checkpoint by transforms.

The attention, norms, embedding and head are examples/flax_llama_scan.py's (layers stacked for
``nn.scan``, heads split, q/k/v fused or not); the sparse MoE block keeps its experts stacked:
``router`` (layers, embed, experts), ``gate_up`` (layers, experts, embed, 2, intermediate) from
each expert's w1 and w3, ``down`` (layers, experts, intermediate, embed) from w2, with the experts
sharded over the "model" axis (expert parallelism). The checkpoint stores one tensor per expert
(``model.layers.L.block_sparse_moe.experts.X.w1.weight``); a stack of stacks gathers them.

Every expert is computed for every token (a dense reference, not a fast MoE kernel).

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python examples/flax_mixtral_scan.py
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Dict

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

import fastsafetensors.jax as fj
import flax_llama_scan
from flax_llama import LlamaShape, RMSNorm

RULES = flax_llama_scan.RULES + [
    (r"moe\.(gate_up|down)$", P(None, "model")),  # experts over "model"
]


@dataclass(frozen=True)
class MixtralShape:
    base: LlamaShape
    num_local_experts: int
    num_experts_per_tok: int

    @classmethod
    def from_pretrained(cls, path: str) -> "MixtralShape":
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            c = json.load(f)
        return cls(LlamaShape.from_pretrained(path), c["num_local_experts"], c["num_experts_per_tok"])


def transforms(c: MixtralShape, fused_qkv: bool = False) -> Dict[str, Any]:
    """Checkpoint tensors -> this model's leaves: the Llama ones but the MLP, and the stacked experts."""
    out = {k: v for k, v in flax_llama_scan.transforms(c.base, fused_qkv).items() if not k.startswith("layers.mlp.")}
    layer = r"model\.layers\.(\d+)\.input_layernorm\.weight"
    moe = lambda i: f"model.layers.{i}.block_sparse_moe"  # noqa: E731
    experts = lambda i, fn: fj.stack(moe(i).replace(".", r"\.") + r"\.experts\.(\d+)\.w1\.weight", fn)  # noqa: E731
    w = lambda i, j, n: fj.transpose(f"{moe(i)}.experts.{j}.{n}.weight")  # noqa: E731
    out.update({
        "layers.moe.router": fj.stack(layer, lambda i: fj.transpose(f"{moe(i)}.gate.weight")),
        "layers.moe.gate_up": fj.stack(layer, lambda i: experts(i, lambda j: fj.stack([w(i, j, "w1"), w(i, j, "w3")],
                                                                                       axis=1))),
        "layers.moe.down": fj.stack(layer, lambda i: experts(i, lambda j: w(i, j, "w2"))),
    })
    return out


class MoE(nn.Module):
    cfg: MixtralShape

    @nn.compact
    def __call__(self, x):
        c, init = self.cfg, nn.initializers.lecun_normal()
        E, I, X = c.base.hidden_size, c.base.intermediate_size, c.num_local_experts
        probs = jax.nn.softmax((x @ self.param("router", init, (E, X))).astype(jnp.float32), axis=-1)
        top, idx = jax.lax.top_k(probs, c.num_experts_per_tok)
        top = top / top.sum(axis=-1, keepdims=True)
        weights = (jax.nn.one_hot(idx, X) * top[..., None]).sum(axis=-2).astype(x.dtype)  # (batch, time, experts)
        h = jnp.einsum("bte,xeki->btxki", x, self.param("gate_up", init, (X, E, 2, I)))
        y = jnp.einsum("btxi,xie->btxe", jax.nn.silu(h[..., 0, :]) * h[..., 1, :], self.param("down", init, (X, I, E)))
        return jnp.einsum("btxe,btx->bte", y, weights)


class Block(nn.Module):
    cfg: MixtralShape
    fused_qkv: bool

    @nn.compact
    def __call__(self, x, _):
        eps = self.cfg.base.rms_norm_eps
        x = x + flax_llama_scan.Attention(self.cfg.base, self.fused_qkv, name="attn")(
            RMSNorm(eps, name="input_layernorm")(x))
        return x + MoE(self.cfg, name="moe")(RMSNorm(eps, name="post_attention_layernorm")(x)), None


class MixtralScan(nn.Module):
    cfg: MixtralShape
    fused_qkv: bool = False

    @nn.compact
    def __call__(self, ids):
        c = self.cfg.base
        x = nn.Embed(c.vocab_size, c.hidden_size, name="embed")(ids)
        layers = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True}, length=c.num_hidden_layers)
        x, _ = layers(self.cfg, self.fused_qkv, name="layers")(x, None)
        return nn.Dense(c.vocab_size, use_bias=False, name="lm_head")(RMSNorm(c.rms_norm_eps, name="norm")(x))


def load_params(path: str, mesh: Mesh, fused_qkv: bool = False, **options) -> Dict[str, Any]:
    cfg = MixtralShape.from_pretrained(path)
    return fj.load(path, mesh=mesh, rules=RULES, nested=True, transforms=transforms(cfg, fused_qkv), **options)


def main() -> None:
    import tempfile

    import numpy as np
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM

    with tempfile.TemporaryDirectory() as path:
        torch.manual_seed(0)
        config = MixtralConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, vocab_size=256,
                               max_position_embeddings=128)
        torch_model = MixtralForCausalLM(config).eval()
        torch_model.save_pretrained(path)
        mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "model"))
        params = load_params(path, mesh)
        ids = np.arange(12, dtype=np.int32)[None, :]
        logits = jax.jit(MixtralScan(MixtralShape.from_pretrained(path)).apply)({"params": params}, ids)
        with torch.no_grad():
            reference = torch_model(torch.from_numpy(ids.astype(np.int64))).logits.numpy()
        print("max |logits - transformers|", float(np.abs(np.asarray(logits) - reference).max()))
        print("gate_up", params["layers"]["moe"]["gate_up"].shape, params["layers"]["moe"]["gate_up"].sharding.spec)


if __name__ == "__main__":
    main()
