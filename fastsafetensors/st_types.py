"""Device and dtype names of the fastsafetensors 0.3 API (``fastsafetensors.st_types``)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Optional, Union

__all__ = ["DeviceType", "Device", "DType"]


class DeviceType(Enum):
    CPU = "cpu"
    CUDA = "cuda"


@dataclass(frozen=True)
class Device:
    """A device such as ``cpu``, ``cuda`` or ``cuda:1``."""

    type: DeviceType
    index: Optional[int] = None

    @classmethod
    def from_str(cls, spec: Union[str, "Device"]) -> "Device":
        if isinstance(spec, Device):
            return spec
        text = str(spec).strip().lower()
        kind, _, index = text.partition(":")
        try:
            device_type = DeviceType(kind)
        except ValueError:
            raise ValueError(f"unknown device {spec!r}: expected 'cpu', 'cuda' or 'cuda:N'") from None
        if index and not index.isdigit():
            raise ValueError(f"unknown device {spec!r}: the index after ':' must be a number")
        if device_type is DeviceType.CPU and index:
            raise ValueError(f"unknown device {spec!r}: the CPU takes no index")
        return cls(device_type, int(index) if index else None)

    @property
    def is_cpu(self) -> bool:
        return self.type is DeviceType.CPU

    def __str__(self) -> str:
        return self.type.value if self.index is None else f"{self.type.value}:{self.index}"


class DType(str, Enum):
    """safetensors dtypes, valued by their header spelling, plus ``AUTO`` (keep the file's)."""

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
        return self.value.startswith(("F", "BF"))

    def __str__(self) -> str:
        return self.value
