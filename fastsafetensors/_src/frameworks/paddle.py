"""PaddlePaddle backend (``framework="paddle"``, FastDeploy's): zero-copy tensors through DLPack;
fp8 viewed from raw bytes. Paddle has no unsigned 16-bit type (``paddle.uint16`` is its bfloat16),
so U16 tensors load only as bytes (``raw=True``). GPU targets ("gpu:N", paddle's name for
"cuda:N") are reached by copying the host tensor (``Tensor.to``)."""

from __future__ import annotations

from typing import Any, Tuple

import paddle

from ..dtypes import NATIVE
from ...st_types import Device
from .base import Framework, native_view, raw_view

_VIEW_TYPES = {st: getattr(paddle, name) for st, name in (("F8_E5M2", "float8_e5m2"), ("F8_E4M3", "float8_e4m3fn"))
               if hasattr(paddle, name)}

PADDLE_DTYPES = {
    "BOOL": paddle.bool, "U8": paddle.uint8, "I8": paddle.int8, "I16": paddle.int16, "F16": paddle.float16,
    "BF16": paddle.bfloat16, "I32": paddle.int32, "F32": paddle.float32, "I64": paddle.int64,
    "F64": paddle.float64, "C64": paddle.complex64, **_VIEW_TYPES,
}
for _st, _name in (("U32", "uint32"), ("U64", "uint64")):
    if hasattr(paddle, _name):
        PADDLE_DTYPES[_st] = getattr(paddle, _name)


class PaddleFramework(Framework):
    name = "paddle"
    dtypes = PADDLE_DTYPES
    # Outputs on a GPU come from the host load (to_device); the device engine writes no paddle memory.
    gpu_capable = False
    gpu_via_host = True

    def gpu_unavailable(self) -> str:
        if not paddle.is_compiled_with_cuda():
            return "this paddle build has no CUDA (a CPU build of paddlepaddle)"
        return "" if paddle.device.cuda.device_count() else "paddle finds no GPU on this machine"

    def from_buffer(self, buffer, offset: int, dtype: str, shape: Tuple[int, ...], raw: bool = False) -> Any:
        if raw:
            return paddle.from_dlpack(raw_view(buffer, offset, dtype, shape))
        if dtype in NATIVE and dtype in PADDLE_DTYPES:
            return paddle.from_dlpack(native_view(buffer, offset, dtype, shape))
        if dtype in _VIEW_TYPES:
            return paddle.from_dlpack(raw_view(buffer, offset, dtype, shape)).view(_VIEW_TYPES[dtype])
        raise self.unsupported(dtype)

    def convert(self, tensor: Any, dtype: str) -> Any:
        if dtype not in PADDLE_DTYPES:
            raise self.unsupported(dtype)
        return tensor.astype(PADDLE_DTYPES[dtype])

    def to_device(self, tensor: Any, device: Device) -> Any:
        return tensor if device.is_cpu else tensor.to(f"gpu:{device.index or 0}")

    def concat(self, tensors, dim: int) -> Any:
        return paddle.concat(list(tensors), axis=dim)


def make_framework() -> Framework:
    return PaddleFramework()
