"""NumPy backend: zero-copy arrays; bf16 and fp8 through ml_dtypes."""

from __future__ import annotations

from typing import Any, Tuple, cast

import ml_dtypes
import numpy as np

from ... import _cpp
from ..dtypes import RAW_BYTES, TYPE_NAMES, packed_shape
from .base import Framework


def _numpy_type(name: str):
    """NumPy's type of this name, or ml_dtypes' (bfloat16, fp8); None where neither has one."""
    try:
        return getattr(ml_dtypes, name, None) or np.dtype(name).type
    except TypeError:
        return None


NUMPY_DTYPES = {st: t for st, t in ((st, _numpy_type(name)) for st, name in TYPE_NAMES.items()) if t is not None}


def _all_bytes(buffer: "_cpp.Buffer") -> np.ndarray:
    """The whole buffer as one uint8 array (one DLPack export), which keeps the buffer alive."""
    code, bits = RAW_BYTES
    # The binding types __dlpack__'s result as object; it is the DLPack capsule NumPy's stub asks for.
    return np.from_dlpack(cast(Any, buffer.view(0, [buffer.size], code, bits)))


class NumpyFramework(Framework):
    name = "numpy"
    gpu_capable = False
    maps_files = True
    dtypes = NUMPY_DTYPES

    def prepare_buffer(self, buffer: "_cpp.Buffer") -> Any:
        return _all_bytes(buffer)

    def from_buffer(self, buffer, offset: int, dtype: str, shape: Tuple[int, ...], raw: bool = False) -> Any:
        """Arrays over the bytes of the buffer (or of its prepare_buffer array): NumPy types the
        bytes itself, bf16 and fp8 included, and each array's base keeps the buffer alive."""
        data = buffer if isinstance(buffer, np.ndarray) else _all_bytes(buffer)
        if raw:
            shape, kind = packed_shape(dtype, shape), np.uint8
        elif dtype in NUMPY_DTYPES:
            kind = NUMPY_DTYPES[dtype]
        else:
            raise self.unsupported(dtype)
        # np.ndarray checks the end and refuses dimensions below -1, but views the bytes before
        # the buffer at a negative offset and infers a -1 dimension: refused as Buffer.view does.
        if offset < 0 or -1 in shape:
            raise ValueError("view outside its buffer")
        try:
            return np.ndarray(shape, kind, data, offset)
        except TypeError:  # "buffer is too small for requested array"
            raise ValueError("view outside its buffer") from None

    def convert(self, tensor: Any, dtype: str) -> Any:
        if dtype not in NUMPY_DTYPES:
            raise self.unsupported(dtype)
        return tensor.astype(NUMPY_DTYPES[dtype])

    def concat(self, tensors, dim: int) -> Any:
        return np.concatenate(list(tensors), axis=dim)


def make_framework() -> Framework:
    return NumpyFramework()
