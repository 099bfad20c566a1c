"""How each safetensors dtype leaves the engine through DLPack, built from the engine's dtype table
(``FST_DTYPES`` in csrc/fastsafetensors/dtype.hpp, the one list of dtypes; tests/test_dtype_table.py
checks ``st_types.DType`` against it).

Dtypes DLPack consumers agree on travel natively (so JAX and NumPy import them without a copy);
the others (fp8, fp4, fp6) travel as raw bytes that each framework views as its own type.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Tuple, TypeVar

from .. import _cpp

_TABLE = _cpp.dtype_table()

# safetensors dtype -> bits per element (below 8 for the packed F4 and F6).
BITS: Dict[str, int] = {name: bits for name, bits, _ in _TABLE}

# safetensors dtype -> the bytes a whole element takes (1 for the packed F4 and F6): what a tensor's
# offset is aligned to, and its size unit when no dimension is zero.
ELEMENT_BYTES: Dict[str, int] = {name: max(1, bits // 8) for name, bits in BITS.items()}

# safetensors dtype -> (DLPack code, bits) for dtypes every consumer accepts.
NATIVE: Dict[str, Tuple[int, int]] = {name: (code, bits) for name, bits, code in _TABLE if code is not None}

RAW_BYTES: Tuple[int, int] = NATIVE["U8"]

FLOAT_DTYPES = frozenset(n for n in BITS if n.startswith(("F", "BF")))

# The dtypes JAX narrows to 32 bits unless jax_enable_x64 is on.
NEEDS_X64 = frozenset({"I64", "U64", "F64"})

# The name torch, NumPy (with ml_dtypes) and JAX give each dtype's type; F4 is torch's packed pair
# (two values a byte), F6 has none. Backends look their types up by these names.
TYPE_NAMES: Dict[str, str] = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "U16": "uint16", "F16": "float16",
    "BF16": "bfloat16", "I32": "int32", "U32": "uint32", "F32": "float32", "I64": "int64", "U64": "uint64",
    "F64": "float64", "C64": "complex64", "F8_E5M2": "float8_e5m2", "F8_E4M3": "float8_e4m3fn",
    "F8_E8M0": "float8_e8m0fnu", "F8_E4M3FNUZ": "float8_e4m3fnuz", "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "F4": "float4_e2m1fn_x2",
}

_Cast = TypeVar("_Cast")


def float_cast(stored: str, cast: Optional[_Cast]) -> Optional[_Cast]:
    """What ``dtype=`` converts a tensor stored as ``stored`` to: ``cast`` for floating tensors,
    None (kept as stored) for the others and when no conversion was asked for (``cast`` None: AUTO)."""
    return cast if cast is not None and stored in FLOAT_DTYPES else None


def packed_shape(dtype: str, shape: Tuple[int, ...]) -> Tuple[int, ...]:
    """Shape of the raw bytes (uint8) of a tensor, whose leading axes are the tensor's axes.

    Byte-wide dtypes keep their shape; wider ones gain a last axis of their byte width (so
    scalars and zero-size tensors have a shape too); packed dtypes (F4, F6) pack their last axis
    when it fills whole bytes (F4: two values a byte), else they are one flat run of bytes.
    """
    bits = BITS[dtype]
    if bits == 8:
        return tuple(shape)
    if bits > 8:
        return (*shape, bits // 8)
    if shape and shape[-1] * bits % 8 == 0:
        return (*shape[:-1], shape[-1] * bits // 8)
    return (math.prod(shape) * bits // 8,)  # whole bytes: the header refuses any other size
