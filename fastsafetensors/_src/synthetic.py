"""Synthetic Llama-shaped checkpoints for the demo, the benchmarks and the tests.

Needs only NumPy and ml_dtypes: ``fastsafetensors demo`` must run after ``pip install .`` alone.
Tensor contents are a pure function of (seed, tensor index), so a reader can regenerate any
tensor to check what it loaded without keeping the written data around.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .frameworks.numpy import NUMPY_DTYPES

__all__ = ["TensorSpec", "llama_specs", "split_shards", "make_tensor", "save_numpy", "save_with_safetensors",
           "write_checkpoint", "expected_tensors", "INDEX_NAME"]

INDEX_NAME = "model.safetensors.index.json"
_SAFETENSORS_DTYPE = {np.dtype(t): name for name, t in NUMPY_DTYPES.items()}
# Writers pad the header with spaces so the data section starts 8-byte aligned.
_HEADER_ALIGN = 8

SaveFn = Callable[[Dict[str, np.ndarray], str, Optional[Dict[str, str]]], None]


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # safetensors spelling: "BF16", "F32"
    shape: Tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(NUMPY_DTYPES[self.dtype]).itemsize


def _layer_specs(i: int, hidden: int, kv: int, mlp: int) -> Iterator[TensorSpec]:
    p = f"model.layers.{i}."
    yield TensorSpec(p + "input_layernorm.weight", "F32", (hidden,))
    yield TensorSpec(p + "self_attn.q_proj.weight", "BF16", (hidden, hidden))
    yield TensorSpec(p + "self_attn.k_proj.weight", "BF16", (kv, hidden))
    yield TensorSpec(p + "self_attn.v_proj.weight", "BF16", (kv, hidden))
    yield TensorSpec(p + "self_attn.o_proj.weight", "BF16", (hidden, hidden))
    yield TensorSpec(p + "post_attention_layernorm.weight", "F32", (hidden,))
    yield TensorSpec(p + "mlp.gate_proj.weight", "BF16", (mlp, hidden))
    yield TensorSpec(p + "mlp.up_proj.weight", "BF16", (mlp, hidden))
    yield TensorSpec(p + "mlp.down_proj.weight", "BF16", (hidden, mlp))


def llama_specs(size_bytes: int) -> List[TensorSpec]:
    """Tensors of a Llama-style decoder of about ``size_bytes``, in the order HF writes them.

    The hidden size is the power of two (64 to 4096) that gives about eight layers; MLP width is
    3.5x hidden, 4 query heads share each key/value head, the vocabulary takes at most a quarter.
    """
    hidden = 1 << int(math.log2(max(64.0, math.sqrt(size_bytes / (8 * 26)))))
    hidden = min(hidden, 4096)
    kv, mlp = hidden // 4, hidden * 7 // 2
    vocab = int(min(32000, max(256, size_bytes / 4 / (2 * hidden * 2)))) // 64 * 64
    layer_bytes = 2 * (2 * hidden * hidden + 2 * kv * hidden + 3 * mlp * hidden) + 2 * 4 * hidden
    layers = max(1, round((size_bytes - 2 * 2 * vocab * hidden) / layer_bytes))
    specs = [TensorSpec("model.embed_tokens.weight", "BF16", (vocab, hidden))]
    for i in range(layers):
        specs.extend(_layer_specs(i, hidden, kv, mlp))
    specs.append(TensorSpec("model.norm.weight", "F32", (hidden,)))
    specs.append(TensorSpec("lm_head.weight", "BF16", (vocab, hidden)))
    return specs


def split_shards(specs: Sequence[TensorSpec], shards: int) -> List[List[TensorSpec]]:
    """Splits the tensors, in order, into ``shards`` runs of about equal size (none empty)."""
    shards = max(1, min(shards, len(specs)))
    target = sum(s.nbytes for s in specs) / shards
    out: List[List[TensorSpec]] = [[]]
    size = 0
    for i, spec in enumerate(specs):
        left_specs, left_shards = len(specs) - i, shards - len(out)
        if out[-1] and left_shards > 0 and (size >= target * len(out) or left_specs <= left_shards):
            out.append([])
        out[-1].append(spec)
        size += spec.nbytes
    return out


def make_tensor(spec: TensorSpec, seed: int, index: int) -> np.ndarray:
    """The contents of tensor number ``index``: small finite weights, or norms near 1."""
    rng = np.random.default_rng([seed, index])
    if spec.dtype == "F32":
        return (rng.random(spec.shape, dtype=np.float32) * 0.5 + 0.75).astype(np.float32)
    # Random bf16 bit patterns with the exponent held to 2^-15..2^-8: finite, weight-like, fast.
    bits = rng.integers(0, 1 << 16, size=spec.shape, dtype=np.uint16)
    bits = (bits & np.uint16(0x83FF)) | np.uint16(0x3800)
    return bits.view(NUMPY_DTYPES[spec.dtype])


def save_numpy(tensors: Dict[str, np.ndarray], path: str, metadata: Optional[Dict[str, str]] = None) -> None:
    """A minimal safetensors writer: tensors back to back in the given order."""
    header: Dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name, a in tensors.items():
        header[name] = {"dtype": _SAFETENSORS_DTYPE[a.dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % _HEADER_ALIGN)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for a in tensors.values():
            f.write(np.ascontiguousarray(a).reshape(-1).view(np.uint8).data)


def save_with_safetensors(tensors: Dict[str, np.ndarray], path: str,
                          metadata: Optional[Dict[str, str]] = None) -> None:
    """Writes with the reference writer, ``safetensors.torch.save_file`` (needs torch)."""
    import torch
    from safetensors.torch import save_file

    def to_torch(a: np.ndarray) -> "torch.Tensor":
        if a.dtype == NUMPY_DTYPES["BF16"]:  # torch.from_numpy knows no bfloat16: pass the bits
            return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(a)

    save_file({name: to_torch(a) for name, a in tensors.items()}, path, metadata)


def write_checkpoint(directory: str, size_bytes: int, shards: int = 3, *, seed: int = 0,
                     save: SaveFn = save_numpy) -> List[str]:
    """Writes a sharded Llama-shaped checkpoint and its ``model.safetensors.index.json``.

    ``save(tensors, path, metadata)`` writes one shard (the demo's own writer by default; the
    benchmarks and tests pass :func:`save_with_safetensors`). Returns the shard paths.
    """
    os.makedirs(directory, exist_ok=True)
    groups = split_shards(llama_specs(size_bytes), shards)
    paths, weight_map, index = [], {}, 0
    for k, group in enumerate(groups):
        fname = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {}
        for spec in group:
            tensors[spec.name] = make_tensor(spec, seed, index)
            weight_map[spec.name] = fname
            index += 1
        path = os.path.join(directory, fname)
        save(tensors, path, {"format": "pt"})
        paths.append(path)
        del tensors
    total = sum(spec.nbytes for group in groups for spec in group)  # HF: bytes of tensor data
    with open(os.path.join(directory, INDEX_NAME), "w", encoding="utf-8") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return paths


def expected_tensors(size_bytes: int, seed: int = 0) -> Iterator[Tuple[TensorSpec, np.ndarray]]:
    """What :func:`write_checkpoint` wrote, tensor by tensor (regenerated, not read)."""
    for index, spec in enumerate(llama_specs(size_bytes)):
        yield spec, make_tensor(spec, seed, index)
