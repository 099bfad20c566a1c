"""Helpers shared by the test modules: writing checkpoints, reading tensors back as bytes,
and measuring process resources. Fixtures that use them live in conftest.py."""

from __future__ import annotations

import json
import os
import struct
from typing import Any, Dict, Mapping, Optional, Union

import numpy as np
import torch
from safetensors.torch import load_file, save_file

import fastsafetensors
from fastsafetensors import _cpp, errors

# Every safetensors dtype torch can write, with its torch type. F4 is two values per byte.
TORCH_OF: Dict[str, torch.dtype] = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16,
    "U16": torch.uint16, "I32": torch.int32, "U32": torch.uint32, "I64": torch.int64,
    "U64": torch.uint64, "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32,
    "F64": torch.float64, "C64": torch.complex64, "F8_E5M2": torch.float8_e5m2,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E8M0": torch.float8_e8m0fnu,
    "F8_E4M3FNUZ": torch.float8_e4m3fnuz, "F8_E5M2FNUZ": torch.float8_e5m2fnuz,
    "F4": torch.float4_e2m1fn_x2,
}
ALL_DTYPES = sorted(TORCH_OF)

# Bytes per stored element (per torch element: F4's torch element holds two values).
_ITEMSIZE = {name: torch.empty(0, dtype=t).element_size() for name, t in TORCH_OF.items()}


def random_tensor(dtype: str, shape, seed: int = 0) -> torch.Tensor:
    """A tensor of random bit patterns (every byte random, so any byte mix-up shows)."""
    gen = torch.Generator().manual_seed(seed)
    t = TORCH_OF[dtype]
    if t == torch.bool:
        return torch.randint(0, 2, shape, generator=gen).bool()
    numel = int(np.prod(shape, dtype=np.int64))
    raw = torch.randint(0, 256, (numel * _ITEMSIZE[dtype],), dtype=torch.uint8, generator=gen)
    return raw.view(t).reshape(shape)


def tensor_bytes(t: Any) -> bytes:
    """The bytes of a NumPy array, torch tensor or JAX array, in C order."""
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu().contiguous()
        return t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
    return np.ascontiguousarray(np.asarray(t)).tobytes()


def assert_same_tensor(got: Any, want: torch.Tensor, what: str) -> None:
    """``got`` is a torch tensor of ``want``'s dtype, shape and bytes."""
    assert isinstance(got, torch.Tensor), f"{what}: got {type(got).__name__}"
    assert got.dtype == want.dtype and tuple(got.shape) == tuple(want.shape), \
        f"{what}: got {got.dtype} {tuple(got.shape)}, want {want.dtype} {tuple(want.shape)}"
    assert tensor_bytes(got) == tensor_bytes(want), f"{what}: bytes differ from safetensors"


def as_float64(t: Any) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        return t.detach().to(torch.float64).numpy()
    return np.asarray(t).astype(np.float64)


def assert_same_values(got: Any, want: Any, name: str = "") -> None:
    """Same shape and values (NaN equal to NaN: conversions need not keep NaN payloads)."""
    np.testing.assert_array_equal(as_float64(got), as_float64(want), err_msg=name)


def data_ptr(t: Any) -> int:
    """Address of a tensor's first element, whichever framework made it."""
    if isinstance(t, torch.Tensor):
        return t.data_ptr()
    if isinstance(t, np.ndarray):
        return t.ctypes.data
    return t.unsafe_buffer_pointer()  # jax.Array


def reference_bytes(path: Union[str, os.PathLike]) -> Dict[str, bytes]:
    """What the reference reader reads: {name: bytes}."""
    return {k: tensor_bytes(v) for k, v in load_file(str(path)).items()}


def assert_exact(out: Mapping[str, Any], path_or_ref: Union[str, os.PathLike, Mapping[str, torch.Tensor]]) -> None:
    """``out`` holds exactly the reference reader's tensors, bit for bit and with their shapes."""
    ref = load_file(str(path_or_ref)) if isinstance(path_or_ref, (str, os.PathLike)) else path_or_ref
    assert set(out) == set(ref)
    for name, r in ref.items():
        assert tuple(out[name].shape) == tuple(r.shape), name
        assert tensor_bytes(out[name]) == tensor_bytes(r), name


def write_raw(path: Union[str, os.PathLike], header: Union[Mapping, str, bytes], data: bytes = b"", *,
              length: Optional[int] = None, pad_to: int = 1) -> str:
    """Writes a safetensors image by hand: 8-byte length, header, data.

    ``header`` may be a dict (serialised compactly), a str or raw bytes (for malformed JSON);
    ``length`` overrides the stored header length; ``pad_to`` pads the header with spaces.
    """
    if isinstance(header, Mapping):
        header = json.dumps(header, separators=(",", ":"), ensure_ascii=False)
    if isinstance(header, str):
        header = header.encode("utf-8")
    header += b" " * (-len(header) % pad_to)
    n = len(header) if length is None else length
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", n) + header + data)
    return os.fspath(path)


def entry(dtype: str, shape, begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": [begin, end]}


def save(path: Union[str, os.PathLike], tensors: Mapping[str, torch.Tensor],
         metadata: Optional[Dict[str, str]] = None) -> str:
    save_file(dict(tensors), str(path), metadata=metadata)
    return os.fspath(path)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


__all__ = [
    "TORCH_OF", "ALL_DTYPES", "random_tensor", "tensor_bytes", "as_float64", "assert_same_values", "data_ptr", "reference_bytes",
    "assert_exact", "write_raw", "entry", "save", "open_fds", "rss_bytes", "fastsafetensors", "_cpp", "errors",
]


class RecordingBar:
    """Stands in for the engine's tqdm bar (which draws at most every 0.1 s): counts what it is told."""

    def __init__(self, total):
        self.total, self.n, self.closed = total, 0, False

    def update(self, n):
        self.n += n

    def close(self):
        self.closed = True
