"""NumPy backend: zero-copy arrays; bf16 and fp8 through ml_dtypes."""

from __future__ import annotations

from typing import Any, Tuple

import ml_dtypes
import numpy as np

from ..dtypes import NATIVE
from .base import Framework, native_view, raw_view, uint_view

_VIEW_TYPES = {
    "BF16": ml_dtypes.bfloat16,
    "F8_E5M2": ml_dtypes.float8_e5m2,
    "F8_E4M3": ml_dtypes.float8_e4m3fn,
    "F8_E4M3FNUZ": ml_dtypes.float8_e4m3fnuz,
    "F8_E5M2FNUZ": ml_dtypes.float8_e5m2fnuz,
}
if hasattr(ml_dtypes, "float8_e8m0fnu"):
    _VIEW_TYPES["F8_E8M0"] = ml_dtypes.float8_e8m0fnu

NUMPY_DTYPES = {
    "BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "I16": np.int16, "U16": np.uint16,
    "F16": np.float16, "I32": np.int32, "U32": np.uint32, "F32": np.float32, "I64": np.int64,
    "U64": np.uint64, "F64": np.float64, "C64": np.complex64, **_VIEW_TYPES,
}


class NumpyFramework(Framework):
    name = "numpy"
    gpu_capable = False
    dtypes = NUMPY_DTYPES

    def from_buffer(self, buffer, offset: int, dtype: str, shape: Tuple[int, ...], raw: bool = False) -> Any:
        if raw:
            return np.from_dlpack(raw_view(buffer, offset, dtype, shape))
        if dtype in NATIVE and dtype != "BF16":
            return np.from_dlpack(native_view(buffer, offset, dtype, shape))
        if dtype in _VIEW_TYPES:
            # NumPy has no DLPack code for these: import the bytes and view them as the type.
            return np.from_dlpack(uint_view(buffer, offset, dtype, shape)).view(_VIEW_TYPES[dtype])
        raise self.unsupported(dtype)

    def convert(self, tensor: Any, dtype: str) -> Any:
        if dtype not in NUMPY_DTYPES:
            raise self.unsupported(dtype)
        return tensor.astype(NUMPY_DTYPES[dtype])

    def concat(self, tensors, dim: int) -> Any:
        return np.concatenate(list(tensors), axis=dim)


def make_framework() -> Framework:
    return NumpyFramework()
