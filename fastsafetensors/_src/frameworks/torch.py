"""PyTorch backend: zero-copy tensors through DLPack; fp8/fp4 viewed from raw bytes. On a GPU,
each file's bytes land in one uint8 tensor from torch's caching allocator, and tensors view it."""

from __future__ import annotations

import math
from typing import Any, List, Tuple

import torch

from ..dtypes import NATIVE, TYPE_NAMES, packed_shape
from ...errors import UnsupportedDtype
from ...st_types import Device
from .base import Framework, native_view, raw_view, uint_view

TORCH_DTYPES = {st: getattr(torch, name) for st, name in TYPE_NAMES.items() if hasattr(torch, name)}
# Types torch imports from DLPack under their own code; the rest travel as bytes.
_VIEW_TYPES = {st: t for st, t in TORCH_DTYPES.items() if st not in NATIVE}
_BYTE_TYPES = frozenset(_VIEW_TYPES.values())  # all one byte per element


class TorchFramework(Framework):
    name = "torch"
    dtypes = TORCH_DTYPES
    group_shareable = True
    maps_files = True

    def check_dtype(self, dtype: str, shape: Tuple[int, ...]) -> None:
        self.view_type(dtype, shape)  # F4 also needs whole pairs of values in the last dimension

    def from_buffer(self, buffer, offset: int, dtype: str, shape: Tuple[int, ...], raw: bool = False) -> Any:
        if isinstance(buffer, torch.Tensor):
            return self._view_bytes(buffer, offset, dtype, shape, raw)
        if raw:
            return torch.from_dlpack(raw_view(buffer, offset, dtype, shape))
        if dtype in NATIVE:
            return torch.from_dlpack(native_view(buffer, offset, dtype, shape))
        if dtype == "F4" and "F4" in _VIEW_TYPES and shape and shape[-1] % 2 == 0:
            return torch.from_dlpack(raw_view(buffer, offset, dtype, shape)).view(_VIEW_TYPES["F4"])
        if dtype in _VIEW_TYPES and dtype != "F4":
            return torch.from_dlpack(uint_view(buffer, offset, dtype, shape)).view(_VIEW_TYPES[dtype])
        raise self.unsupported(dtype)

    def view_type(self, dtype: str, shape: Tuple[int, ...]) -> Tuple["torch.dtype", Tuple[int, ...]]:
        if dtype == "F4":
            if "F4" in _VIEW_TYPES and shape and shape[-1] % 2 == 0:
                return _VIEW_TYPES["F4"], (*shape[:-1], shape[-1] // 2)
        elif dtype in TORCH_DTYPES:
            return TORCH_DTYPES[dtype], tuple(shape)
        raise self.unsupported(dtype)

    def from_bytes(self, data: "torch.Tensor", dtype: str, shape: Tuple[int, ...]) -> Any:
        view_dtype, view_shape = self.view_type(dtype, shape)
        return data.view(view_dtype).view(view_shape)

    def _view_bytes(self, buf: "torch.Tensor", offset: int, dtype: str, shape: Tuple[int, ...], raw: bool) -> Any:
        """A tensor viewing a uint8 byte tensor, shaped as from_buffer shapes host tensors."""
        pshape = packed_shape(dtype, shape)
        if raw:
            return buf[offset:offset + math.prod(pshape)].view(pshape)
        if dtype == "F4" and "F4" in _VIEW_TYPES and shape and shape[-1] % 2 == 0:
            return buf[offset:offset + math.prod(pshape)].view(_VIEW_TYPES["F4"]).view(pshape)
        if dtype not in TORCH_DTYPES or dtype == "F4":
            raise self.unsupported(dtype)
        t = TORCH_DTYPES[dtype]
        return buf[offset:offset + math.prod(shape) * t.itemsize].view(t).view(shape)

    def gpu_unavailable(self) -> str:
        return "" if torch.cuda.is_available() else "CUDA is not available to this torch build or machine"

    def device_bytes(self, nbytes: int, device: Device, engine_device) -> Any:
        return torch.empty(max(nbytes, 1), dtype=torch.uint8, device=f"cuda:{device.index or 0}")

    def device_ptr(self, out: Any) -> int:
        return out.data_ptr()

    def device_ready(self, outs: List[Any]) -> None:
        if outs:
            torch.cuda.current_stream(outs[0].device).synchronize()

    def convert(self, tensor: Any, dtype: str) -> Any:
        if dtype not in TORCH_DTYPES:
            raise self.unsupported(dtype)
        if tensor.dtype == _VIEW_TYPES.get("F4"):  # torch has no conversions for packed fp4
            raise UnsupportedDtype(f"torch cannot convert F4 (float4_e2m1fn_x2) to {dtype}; "
                                   "load it without dtype= and convert it yourself")
        return tensor.to(TORCH_DTYPES[dtype])

    def to_device(self, tensor: Any, device: Device) -> Any:
        return tensor if device.is_cpu else tensor.to(str(device))

    def concat(self, tensors, dim: int) -> Any:
        tensors = list(tensors)
        kind = tensors[0].dtype if tensors else None
        if kind in _BYTE_TYPES:
            # torch.cat has no kernel for some of these (float4_e2m1fn_x2 beyond dim 0); their
            # elements are single bytes, so joining the bytes joins the elements.
            return torch.cat([t.view(torch.uint8) for t in tensors], dim=dim).view(kind)
        return torch.cat(tensors, dim=dim)


def make_framework() -> Framework:
    return TorchFramework()
