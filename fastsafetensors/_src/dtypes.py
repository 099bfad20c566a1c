"""How each safetensors dtype leaves the engine through DLPack.

Dtypes DLPack consumers agree on travel natively (so JAX and NumPy import them without a copy);
the others (fp8, fp4, fp6) travel as raw bytes that each framework views as its own type.
"""

from __future__ import annotations

from typing import Dict, Tuple

# DLPack type codes (DLDataTypeCode).
_INT, _UINT, _FLOAT, _BFLOAT, _COMPLEX, _BOOL = 0, 1, 2, 4, 5, 6

# safetensors dtype -> (DLPack code, bits) for dtypes every consumer accepts.
NATIVE: Dict[str, Tuple[int, int]] = {
    "BOOL": (_BOOL, 8),
    "U8": (_UINT, 8),
    "I8": (_INT, 8),
    "I16": (_INT, 16),
    "U16": (_UINT, 16),
    "F16": (_FLOAT, 16),
    "BF16": (_BFLOAT, 16),
    "I32": (_INT, 32),
    "U32": (_UINT, 32),
    "F32": (_FLOAT, 32),
    "I64": (_INT, 64),
    "U64": (_UINT, 64),
    "F64": (_FLOAT, 64),
    "C64": (_COMPLEX, 64),
}

RAW_BYTES: Tuple[int, int] = (_UINT, 8)

BITS: Dict[str, int] = {
    **{name: bits for name, (_, bits) in NATIVE.items()},
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
}

FLOAT_DTYPES = frozenset(n for n in BITS if n.startswith(("F", "BF")))


def packed_shape(dtype: str, shape: Tuple[int, ...]) -> Tuple[int, ...]:
    """Shape of the raw bytes (uint8) of a tensor.

    Byte-wide dtypes keep their shape; wider ones gain a last axis of their byte width (so
    scalars and zero-size tensors have a shape too); F4 halves its last axis (two values per
    byte); F6 has no byte-wise shape and is exported as a flat run of bytes.
    """
    bits = BITS[dtype]
    if bits == 8:
        return tuple(shape)
    if bits > 8:
        return (*shape, bits // 8)
    if dtype == "F4" and shape and shape[-1] % 2 == 0:
        return (*shape[:-1], shape[-1] // 2)
    numel = 1
    for d in shape:
        numel *= d
    return (numel * bits // 8,)
