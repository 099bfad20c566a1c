"""CuPy backend: host-loaded tensors are copied to the current GPU (the GPU engine fills GPU
memory directly; see docs/gpu.md)."""

from __future__ import annotations

from typing import Any, Tuple

import cupy

from ..errors import UnsupportedDtype
from ..st_types import Device
from ._base import Framework, raw_view
from .numpy import NUMPY_DTYPES, NumpyFramework


class CupyFramework(Framework):
    name = "cupy"

    def __init__(self) -> None:
        self._host = NumpyFramework()

    def from_buffer(self, buffer, offset: int, dtype: str, shape: Tuple[int, ...], raw: bool = False) -> Any:
        if buffer.device[0] != 1:  # already on the GPU
            return cupy.from_dlpack(raw_view(buffer, offset, dtype, shape)) if raw else self._gpu_view(buffer, offset, dtype, shape)
        return cupy.asarray(self._host.from_buffer(buffer, offset, dtype, shape, raw))

    def _gpu_view(self, buffer, offset, dtype, shape):
        from ._base import native_view
        from ..dtypes import NATIVE

        if dtype not in NATIVE or dtype == "BF16":
            raise UnsupportedDtype(f"cupy has no type for safetensors dtype {dtype}")
        return cupy.from_dlpack(native_view(buffer, offset, dtype, shape))

    def convert(self, tensor: Any, dtype: str) -> Any:
        if dtype not in NUMPY_DTYPES:
            raise self.unsupported(dtype)
        return tensor.astype(NUMPY_DTYPES[dtype])

    def to_device(self, tensor: Any, device: Device) -> Any:
        if device.is_cpu:
            return cupy.asnumpy(tensor)
        with cupy.cuda.Device(device.index or 0):
            return cupy.asarray(tensor)

    def concat(self, tensors, dim: int) -> Any:
        return cupy.concatenate(list(tensors), axis=dim)


def make_framework() -> Framework:
    return CupyFramework()
