"""JAX backend: zero-copy import on the CPU (tensors are 64-byte aligned); fp8 bitcast after import.

On a GPU a load's bytes land in one uint8 array JAX allocated itself (from its own memory pool),
each file in its own 256-byte aligned part; the engine fills it through ``unsafe_buffer_pointer()``
once the allocation is complete, synchronizes, and every tensor is a DLPack view of it that keeps
it alive."""

from __future__ import annotations

from typing import Any, Callable, List, Sequence, Tuple

import jax
import jax.numpy as jnp

from ... import _cpp
from ..dtypes import NATIVE, NEEDS_X64, TYPE_NAMES
from ...errors import InvalidArgumentError, UnsupportedDtype
from ..plan import align_up
from ...st_types import Device
from .base import Framework, native_view, raw_view, uint_view

JAX_DTYPES = {st: getattr(jnp, name) for st, name in TYPE_NAMES.items() if hasattr(jnp, name)}
# JAX's DLPack import refuses fp8: these come in as uint8 and are bitcast on the device.
_BITCAST_TYPES = {st: t for st, t in JAX_DTYPES.items() if st not in NATIVE}
_KDLCPU, _KDLCUDA = 1, 2  # DLPack's device types of host and CUDA memory
_PART_ALIGN = 256  # each file's part of a load's allocation starts on this boundary, as XLA's buffers do
_MAX_GRANULE = 64 << 20  # size classes past 1 GiB step by this: waste well under a GB of GPU memory


class JaxFramework(Framework):
    name = "jax"
    dtypes = JAX_DTYPES

    def check_dtype(self, dtype: str, shape: Tuple[int, ...]) -> None:
        super().check_dtype(dtype, shape)
        self._check_x64(dtype)

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

    def device_outputs(self, sizes: Sequence[int], device: Device, engine_device: "_cpp.Device") -> List[Any]:
        """All of a load's outputs from one array of JAX's own allocator (JAX reserves most of the
        GPU, so memory the engine allocated itself would compete with it): each allocation is an
        XLA computation compiled per size, which cost a new process more than the read itself
        when it was one per file."""
        return carve_outputs(sizes, _jax_device(device), zeros_on)

    def convert(self, tensor: Any, dtype: str) -> Any:
        if dtype not in JAX_DTYPES:
            raise self.unsupported(dtype)
        self._check_x64(dtype)
        return tensor.astype(JAX_DTYPES[dtype])

    def _check_x64(self, dtype: str) -> None:
        if dtype in NEEDS_X64 and not jax.config.jax_enable_x64:
            raise UnsupportedDtype(
                f"jax: safetensors dtype {dtype} needs 64-bit types, which JAX would silently narrow to "
                "32 bits: enable x64 (JAX_ENABLE_X64=1 in the environment, "
                "jax.config.update('jax_enable_x64', True) or the jax.enable_x64() context), or pass "
                "raw=True to get the bytes as uint8")

    def to_device(self, tensor: Any, device: Device) -> Any:
        if device.is_cpu:
            return tensor
        return jax.device_put(tensor, _jax_device(device))

    def concat(self, tensors, dim: int) -> Any:
        return jnp.concatenate(list(tensors), axis=dim)


def _jax_device(device: Device) -> "jax.Device":
    """The local JAX device of an engine device: a GPU by its CUDA ordinal (``local_hardware_id``;
    ``jax.devices()`` would also list other processes' GPUs). The CPU one only comes from tests
    that drive the GPU path on the engine's HostDevice."""
    if device.is_cpu:
        return jax.devices("cpu")[device.index or 0]
    ordinal = device.index or 0
    for d in jax.local_devices(backend="gpu"):
        if d.local_hardware_id == ordinal:
            return d
    raise InvalidArgumentError(f"JAX has no local GPU with CUDA ordinal {ordinal}")


def zeros_on(nbytes: int, dev: "jax.Device") -> "jax.Array":
    """A zeroed uint8 array of ``nbytes`` on ``dev`` (JAX compiles this once per size)."""
    return jnp.zeros((nbytes,), jnp.uint8, device=dev)


def size_class(nbytes: int) -> int:
    """``nbytes`` rounded up so that loads of similar totals share one compiled allocation:
    steps of 1/16 of the next power of two, at most 64 MiB and at least 256 bytes, so the
    rounding wastes at most max(256 bytes, min(nbytes / 8, 64 MiB))."""
    granule = min(_MAX_GRANULE, max(_PART_ALIGN, (1 << max(nbytes - 1, 0).bit_length()) >> 4))
    return max(granule, align_up(nbytes, granule))


def part_offsets(sizes: Sequence[int]) -> Tuple[List[int], int]:
    """Where each buffer starts in one allocation (256-byte aligned), and the bytes they span."""
    offsets, end = [], 0
    for n in sizes:
        offsets.append(end)
        end += align_up(n, _PART_ALIGN)
    return offsets, end


def carve_outputs(sizes: Sequence[int], dev: "jax.Device",
                  allocate: Callable[[int, "jax.Device"], "jax.Array"]) -> List["_cpp.ForeignBuffer"]:
    """One ``allocate`` call on ``dev`` for all ``sizes``; output i views ``sizes[i]`` bytes of it
    at its own aligned offset, and each holds the array, so it lives as long as any tensor."""
    if not sizes:
        return []
    offsets, total = part_offsets(sizes)
    arr = allocate(size_class(total), dev)
    arr.block_until_ready()  # the zero fill must finish before the engine's copies land
    base = arr.unsafe_buffer_pointer()
    kind = _KDLCPU if dev.platform == "cpu" else _KDLCUDA
    return [_cpp.ForeignBuffer(base + off, n, kind, dev.local_hardware_id or 0, arr)
            for off, n in zip(offsets, sizes)]


def make_framework() -> Framework:
    return JaxFramework()
