"""CuPy backend: on a GPU, each file's bytes land in one uint8 array from CuPy's memory pool and
tensors view it; host-loaded tensors are copied to the current GPU. CuPy has no bfloat16 or fp8:
load those with raw=True (bytes) or convert them with dtype=."""

from __future__ import annotations

import math
from typing import Any, List, Tuple

import cupy

from ..dtypes import RAW_BYTES, packed_shape
from ...st_types import Device
from .base import Framework, native_view
from .numpy import NUMPY_DTYPES, NumpyFramework

# Types CuPy computes with (NumPy's own; not ml_dtypes' bfloat16/fp8).
CUPY_DTYPES = {st: t for st, t in NUMPY_DTYPES.items() if getattr(t, "__module__", "") == "numpy"}


class CupyFramework(Framework):
    name = "cupy"
    dtypes = CUPY_DTYPES

    def __init__(self) -> None:
        self._host = NumpyFramework()

    def from_buffer(self, buffer, offset: int, dtype: str, shape: Tuple[int, ...], raw: bool = False) -> Any:
        if isinstance(buffer, cupy.ndarray):
            return self._view_bytes(buffer, offset, dtype, shape, raw)
        if buffer.device[0] != 1:  # engine memory on the GPU
            if raw:
                return cupy.from_dlpack(buffer.view(offset, list(packed_shape(dtype, shape)), *RAW_BYTES))
            if dtype not in CUPY_DTYPES:
                raise self.unsupported(dtype)
            return cupy.from_dlpack(native_view(buffer, offset, dtype, shape))
        return cupy.asarray(self._host.from_buffer(buffer, offset, dtype, shape, raw))

    def _view_bytes(self, buf: "cupy.ndarray", offset: int, dtype: str, shape: Tuple[int, ...], raw: bool) -> Any:
        pshape = packed_shape(dtype, shape)
        if raw:
            return buf[offset:offset + math.prod(pshape)].reshape(pshape)
        if dtype not in CUPY_DTYPES:
            raise self.unsupported(dtype)
        t = cupy.dtype(CUPY_DTYPES[dtype])
        return buf[offset:offset + math.prod(shape) * t.itemsize].view(t).reshape(shape)

    def device_bytes(self, nbytes: int, device: Device, engine_device) -> Any:
        with cupy.cuda.Device(device.index or 0):
            return cupy.empty(max(nbytes, 1), dtype=cupy.uint8)

    def device_ptr(self, out: Any) -> int:
        return out.data.ptr

    def device_ready(self, outs: List[Any]) -> None:
        if outs:
            with cupy.cuda.Device(outs[0].device.id):
                cupy.cuda.get_current_stream().synchronize()

    def convert(self, tensor: Any, dtype: str) -> Any:
        if dtype not in CUPY_DTYPES:
            raise self.unsupported(dtype)
        return tensor.astype(CUPY_DTYPES[dtype])

    def to_device(self, tensor: Any, device: Device) -> Any:
        if device.is_cpu:
            return cupy.asnumpy(tensor)
        with cupy.cuda.Device(device.index or 0):
            return cupy.asarray(tensor)

    def concat(self, tensors, dim: int) -> Any:
        return cupy.concatenate(list(tensors), axis=dim)


def make_framework() -> Framework:
    return CupyFramework()
