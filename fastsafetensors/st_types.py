"""Device and dtype names of the fastsafetensors 0.3 API (``fastsafetensors.st_types``)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Optional, Union

from ._src.dtypes import FLOAT_DTYPES, TYPE_NAMES
from .errors import InvalidArgumentError

__all__ = ["DeviceType", "Device", "DType", "to_dtype"]


class DeviceType(Enum):
    CPU = "cpu"
    CUDA = "cuda"


@dataclass(frozen=True)
class Device:
    """A device such as ``cpu``, ``cuda`` or ``cuda:1`` (``cpu:0`` is the CPU too, as upstream accepts it)."""

    type: DeviceType
    index: Optional[int] = None

    @classmethod
    def from_str(cls, spec: Union[str, "Device"]) -> "Device":
        if isinstance(spec, Device):
            return spec
        text = str(spec).strip().lower()
        kind, colon, index = text.partition(":")
        kind = "cuda" if kind == "gpu" else kind  # paddle's name for a CUDA device
        try:
            device_type = DeviceType(kind)
        except ValueError:
            # upstream's wording, which callers may match
            raise InvalidArgumentError(f"Unknown device type: {kind} (in device {spec!r}; expected 'cpu', 'cuda', 'cuda:N' "
                             "or paddle's 'gpu:N')") from None
        if colon and not index.isdigit():
            raise InvalidArgumentError(f"Invalid index: {index} (in device {spec!r}; the index after ':' must be a number)")
        if device_type is DeviceType.CPU and colon and int(index) != 0:
            raise InvalidArgumentError(f"Invalid index: {index} (in device {spec!r}; the CPU is 'cpu' or 'cpu:0')")
        return cls(device_type, int(index) if colon else None)

    def as_str(self) -> str:
        """``cpu``, ``cuda`` or ``cuda:N`` (upstream's name for ``str(device)``)."""
        return str(self)

    @property
    def is_cpu(self) -> bool:
        return self.type is DeviceType.CPU

    def __str__(self) -> str:
        return self.type.value if self.index is None else f"{self.type.value}:{self.index}"


class DType(str, Enum):
    """safetensors dtypes, valued by their header spelling, plus ``AUTO`` (keep the file's).

    Spelled out (not built from the engine's table) so that type checkers and editors know the
    members; tests/test_dtype_table.py checks them against the engine's ``FST_DTYPES``."""

    AUTO = "auto"
    BOOL = "BOOL"
    U8 = "U8"
    I8 = "I8"
    F8_E5M2 = "F8_E5M2"
    F8_E4M3 = "F8_E4M3"
    F8_E8M0 = "F8_E8M0"
    F8_E4M3FNUZ = "F8_E4M3FNUZ"
    F8_E5M2FNUZ = "F8_E5M2FNUZ"
    I16 = "I16"
    U16 = "U16"
    F16 = "F16"
    BF16 = "BF16"
    I32 = "I32"
    U32 = "U32"
    F32 = "F32"
    I64 = "I64"
    U64 = "U64"
    F64 = "F64"
    C64 = "C64"
    F4 = "F4"
    F6_E2M3 = "F6_E2M3"
    F6_E3M2 = "F6_E3M2"

    @property
    def is_float(self) -> bool:
        return self.value in FLOAT_DTYPES

    def __str__(self) -> str:
        return self.value


_BY_NAME = {d.value.upper(): d for d in DType}
# torch, NumPy and ml_dtypes names of the types that are a safetensors dtype (F4: torch's packed pair)
_FRAMEWORK_NAMES = {name: DType(st) for st, name in TYPE_NAMES.items()}


def is_auto(dtype: Any) -> bool:
    """Whether ``dtype=`` asks for no conversion: None, DType.AUTO or "auto" in any case."""
    return dtype is None or (isinstance(dtype, str) and dtype.strip().upper() == "AUTO")


def _framework_name(value: Any) -> Optional[str]:
    """The type name of a torch dtype, or of anything NumPy takes as a dtype (NumPy, ml_dtypes, JAX)."""
    if type(value).__module__ in ("torch", "paddle"):
        return str(value).rpartition(".")[2]  # torch.float16 prints as "torch.float16", paddle's alike
    try:
        import numpy as np

        return np.dtype(value).name
    except (TypeError, ValueError):
        return None


def to_dtype(value: Any) -> DType:
    """``value`` as a DType: a DType, its name ("F16", "bf16", "auto"), None (AUTO), or a torch,
    NumPy, ml_dtypes or JAX dtype of a safetensors type (``torch.float16``, ``np.float16``,
    ``jnp.bfloat16``, or their names such as "float16"). Anything else raises ValueError naming
    the valid names."""
    if is_auto(value):
        return DType.AUTO
    if isinstance(value, DType):
        return value
    if isinstance(value, str):
        found = _BY_NAME.get(value.strip().upper()) or _FRAMEWORK_NAMES.get(value.strip().lower())
    else:
        found = _FRAMEWORK_NAMES.get(_framework_name(value) or "")
    if found is None:
        raise InvalidArgumentError(f"unknown dtype {value!r}: use a DType or one of its names "
                         f"({', '.join(d.value for d in DType)}), or a torch or NumPy dtype of one of those types "
                         f"({', '.join(_FRAMEWORK_NAMES)})")
    return found
