"""JAX backend: zero-copy import on the CPU (tensors are 64-byte aligned); fp8 bitcast after import.

On a GPU each file's bytes land in one uint8 array JAX allocated itself (from its own memory
pool); the engine fills it through ``unsafe_buffer_pointer()`` once the allocation is complete,
synchronizes, and every tensor is a DLPack view of it that keeps it alive."""

from __future__ import annotations

from typing import Any, Tuple

import jax
import jax.numpy as jnp

from .. import cpp
from ..dtypes import NATIVE
from ..errors import UnsupportedDtype
from ..st_types import Device
from ._base import Framework, native_view, raw_view, uint_view

_OPTIONAL = {
    "F8_E5M2": "float8_e5m2",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E8M0": "float8_e8m0fnu",
    "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
}
# JAX's DLPack import refuses fp8: these come in as uint8 and are bitcast on the device.
_BITCAST_TYPES = {st: getattr(jnp, name) for st, name in _OPTIONAL.items() if hasattr(jnp, name)}

JAX_DTYPES = {
    "BOOL": jnp.bool_, "U8": jnp.uint8, "I8": jnp.int8, "I16": jnp.int16, "U16": jnp.uint16,
    "F16": jnp.float16, "BF16": jnp.bfloat16, "I32": jnp.int32, "U32": jnp.uint32, "F32": jnp.float32,
    "I64": jnp.int64, "U64": jnp.uint64, "F64": jnp.float64, "C64": jnp.complex64, **_BITCAST_TYPES,
}
_KDLCUDA = 2  # DLPack's device type of CUDA memory

# Without jax_enable_x64, JAX narrows these to 32 bits on import: values would change silently.
_NEEDS_X64 = frozenset({"I64", "U64", "F64"})


class JaxFramework(Framework):
    name = "jax"

    def from_buffer(self, buffer, offset: int, dtype: str, shape: Tuple[int, ...], raw: bool = False) -> Any:
        if raw:
            return jax.dlpack.from_dlpack(raw_view(buffer, offset, dtype, shape))
        self._check_x64(dtype)
        if dtype in NATIVE:
            return jax.dlpack.from_dlpack(native_view(buffer, offset, dtype, shape))
        if dtype in _BITCAST_TYPES:
            raw_bytes = jax.dlpack.from_dlpack(uint_view(buffer, offset, dtype, shape))
            return jax.lax.bitcast_convert_type(raw_bytes, _BITCAST_TYPES[dtype])
        raise self.unsupported(dtype)

    def device_bytes(self, nbytes: int, device: Device, engine_device: "cpp.Device") -> Any:
        """One uint8 array per file from JAX's own allocator (JAX reserves most of the GPU, so memory
        the engine allocated itself would compete with it); tensors are DLPack views into it. One
        array per file keeps the allocations (each a small XLA computation) few."""
        dev = jax.devices("gpu")[device.index or 0]
        arr = jnp.zeros((max(nbytes, 1),), jnp.uint8, device=dev)
        arr.block_until_ready()  # the zero fill must finish before our copies land
        return cpp.ForeignBuffer(arr.unsafe_buffer_pointer(), nbytes, _KDLCUDA, dev.local_hardware_id, arr)

    def convert(self, tensor: Any, dtype: str) -> Any:
        if dtype not in JAX_DTYPES:
            raise self.unsupported(dtype)
        self._check_x64(dtype)
        return tensor.astype(JAX_DTYPES[dtype])

    def _check_x64(self, dtype: str) -> None:
        if dtype in _NEEDS_X64 and not jax.config.jax_enable_x64:
            raise UnsupportedDtype(
                f"jax: safetensors dtype {dtype} needs 64-bit types, which JAX would silently narrow to "
                "32 bits: set jax_enable_x64 (jax.config.update('jax_enable_x64', True) or the "
                "jax.enable_x64() context), or pass raw=True to get the bytes as uint8")

    def to_device(self, tensor: Any, device: Device) -> Any:
        if device.is_cpu:
            return tensor
        devices = jax.devices("gpu")
        return jax.device_put(tensor, devices[device.index or 0])

    def concat(self, tensors, dim: int) -> Any:
        return jnp.concatenate(list(tensors), axis=dim)


def make_framework() -> Framework:
    return JaxFramework()
