"""NumPy backend: zero-copy arrays; bf16 and fp8 through ml_dtypes."""

from __future__ import annotations

from typing import Any, Tuple, cast

import ml_dtypes
import numpy as np

from ... import _cpp
from ..dtypes import NATIVE, TYPE_NAMES
from .base import Framework, native_view, raw_view, uint_view


def _numpy_type(name: str):
    """NumPy's type of this name, or ml_dtypes' (bfloat16, fp8); None where neither has one."""
    try:
        return getattr(ml_dtypes, name, None) or np.dtype(name).type
    except TypeError:
        return None


NUMPY_DTYPES = {st: t for st, t in ((st, _numpy_type(name)) for st, name in TYPE_NAMES.items()) if t is not None}
# NumPy has no DLPack code for these (bf16 included): their bytes come in as unsigned ints, viewed as the type.
_VIEW_TYPES = {st: t for st, t in NUMPY_DTYPES.items() if st not in NATIVE or st == "BF16"}


def _from_dlpack(view: "_cpp.DLPackTensor") -> np.ndarray:
    # The binding types __dlpack__'s result as object; it is the DLPack capsule NumPy's stub asks for.
    return np.from_dlpack(cast(Any, view))


class NumpyFramework(Framework):
    name = "numpy"
    gpu_capable = False
    maps_files = True
    dtypes = NUMPY_DTYPES

    def from_buffer(self, buffer, offset: int, dtype: str, shape: Tuple[int, ...], raw: bool = False) -> Any:
        if raw:
            return _from_dlpack(raw_view(buffer, offset, dtype, shape))
        if dtype in NATIVE and dtype not in _VIEW_TYPES:
            return _from_dlpack(native_view(buffer, offset, dtype, shape))
        if dtype in _VIEW_TYPES:
            return _from_dlpack(uint_view(buffer, offset, dtype, shape)).view(_VIEW_TYPES[dtype])
        raise self.unsupported(dtype)

    def convert(self, tensor: Any, dtype: str) -> Any:
        if dtype not in NUMPY_DTYPES:
            raise self.unsupported(dtype)
        return tensor.astype(NUMPY_DTYPES[dtype])

    def concat(self, tensors, dim: int) -> Any:
        return np.concatenate(list(tensors), axis=dim)


def make_framework() -> Framework:
    return NumpyFramework()
