"""What every framework backend provides."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, List, Mapping, Sequence, Tuple

from ... import _cpp
from ..dtypes import BITS, NATIVE, RAW_BYTES, packed_shape
from ...errors import UnsupportedDtype
from ...st_types import Device, DType

__all__ = ["Framework", "TensorBase", "native_view", "raw_view", "uint_view"]

_UINT_OF_BITS = {8: "U8", 16: "U16", 32: "U32", 64: "U64"}


def native_view(buffer: "_cpp.Buffer", offset: int, dtype: str, shape: Tuple[int, ...]) -> "_cpp.DLPackTensor":
    """A DLPack view typed as the dtype itself (only for dtypes in dtypes.NATIVE)."""
    code, bits = NATIVE[dtype]
    return buffer.view(offset, list(shape), code, bits)


def raw_view(buffer: "_cpp.Buffer", offset: int, dtype: str, shape: Tuple[int, ...]) -> "_cpp.DLPackTensor":
    """A DLPack view of a tensor's bytes as uint8, shaped by dtypes.packed_shape."""
    code, bits = RAW_BYTES
    return buffer.view(offset, list(packed_shape(dtype, shape)), code, bits)


def uint_view(buffer: "_cpp.Buffer", offset: int, dtype: str, shape: Tuple[int, ...]) -> "_cpp.DLPackTensor":
    """A DLPack view typed as unsigned ints of the dtype's width (for byte-wide and wider dtypes),
    which a framework then reinterprets as its own type of that width without copying."""
    return native_view(buffer, offset, _UINT_OF_BITS[BITS[dtype]], shape)


class Framework(ABC):
    """Turns (buffer, offset, dtype, shape) into a framework array without copying."""

    name: str = ""
    # safetensors dtype -> this framework's type: the dtypes from_buffer returns typed.
    dtypes: Mapping[str, Any] = {}

    @abstractmethod
    def from_buffer(self, buffer: "_cpp.Buffer", offset: int, dtype: str, shape: Tuple[int, ...],
                    raw: bool = False) -> Any:
        """The tensor stored at ``offset`` of ``buffer`` (an engine buffer, or what
        prepare_buffer made of one); ``raw`` returns its bytes as uint8."""

    def prepare_buffer(self, buffer: "_cpp.Buffer") -> Any:
        """What a load hands from_buffer for each tensor of ``buffer``, made once per buffer: the
        buffer itself by default. NumPy makes one array of all its bytes, which each tensor views:
        a view costs a fifth of a DLPack export, and an export per tensor took a third of a mapped
        load's own time (issue 14)."""
        return buffer

    def check_dtype(self, dtype: str, shape: Tuple[int, ...]) -> None:
        """Raises what from_buffer would raise for a tensor of this dtype and shape, so that a
        load refuses it before reading anything."""
        if dtype not in self.dtypes:
            raise self.unsupported(dtype)

    @abstractmethod
    def convert(self, tensor: Any, dtype: str) -> Any:
        """``tensor`` cast to the safetensors dtype ``dtype``."""

    def concat(self, tensors: Sequence[Any], dim: int) -> Any:
        """``tensors`` joined along ``dim`` (fused tensor-parallel blocks)."""
        raise NotImplementedError(f"{self.name}: concatenation is not supported")

    def to_device(self, tensor: Any, device: Device) -> Any:
        if device.is_cpu:
            return tensor
        raise NotImplementedError(f"{self.name}: loading to {device} is not supported")

    # Whether mmap=True loads (mapping.py) may hand out this framework's arrays viewing a file's
    # private mapping (numpy and torch keep the DLPack owner, and with it the mapping, alive).
    maps_files: bool = False

    # --- outputs on a GPU (device_engine.py) ---
    # Whether the device engine can write this framework's arrays on a CUDA device.
    gpu_capable: bool = True
    # Whether GPU targets are reached instead by loading to the host and moving each tensor (to_device).
    gpu_via_host: bool = False

    def gpu_unavailable(self) -> str:
        """Why this framework cannot place arrays on a GPU here ("" when it can, or cannot tell)."""
        return ""

    def device_bytes(self, nbytes: int, device: Device, engine_device: "_cpp.Device") -> Any:
        """A buffer of ``nbytes`` on ``device`` for one file's tensors. By default engine-owned
        memory, exported through DLPack and freed with the last tensor viewing it."""
        return _cpp.DeviceBuffer.allocate(engine_device, nbytes)

    def device_outputs(self, sizes: Sequence[int], device: Device, engine_device: "_cpp.Device") -> List[Any]:
        """The outputs of one load, one per planned buffer (``sizes[i]`` bytes each). By default
        one device_bytes call per buffer; a framework whose allocations are costly (JAX compiles
        each one) makes one allocation for all of them and hands out disjoint views."""
        return [self.device_bytes(n, device, engine_device) for n in sizes]

    def device_ptr(self, out: Any) -> int:
        """The device address of an output of device_outputs."""
        return out.data_ptr

    def device_ready(self, outs: List[Any]) -> None:  # noqa: B027 (a hook: most backends need no wait)
        """Waits until the framework's own work on fresh outputs (zero fills, reuse of cached
        memory still read by queued kernels) is done, so the engine's copies cannot race it."""

    # --- tensors shared over a process group (loader.py): collectives move torch uint8 tensors ---
    # Whether from_bytes takes those, so that ranks can broadcast and scatter this framework's tensors.
    group_shareable: bool = False

    def view_type(self, dtype: str, shape: Tuple[int, ...]) -> Tuple[Any, Tuple[int, ...]]:
        """This framework's type and the shape that a tensor's bytes are viewed as; raises
        UnsupportedDtype for a dtype it has no type for."""
        raise NotImplementedError(f"{self.name}: tensors cannot be shared over a process group")

    def from_bytes(self, data: Any, dtype: str, shape: Tuple[int, ...]) -> Any:
        """A contiguous uint8 tensor (any device) holding exactly a tensor's bytes, viewed as that tensor."""
        raise NotImplementedError(f"{self.name}: tensors cannot be shared over a process group")

    def unsupported(self, dtype: str) -> UnsupportedDtype:
        return UnsupportedDtype(f"{self.name} has no type for safetensors dtype {dtype}; "
                                "pass raw=True to get its bytes as uint8")


class TensorBase:
    """A framework tensor wrapped as the upstream package hands tensors out from ``get_multi_cols``,
    ``as_dict`` and the ``*_wrapped`` getters: ``get_raw()`` is the tensor itself.

    ``device`` and ``dtype`` say where it is and what it holds; ``clone``, ``detach``,
    ``contiguous``, ``reshape`` and indexing apply to the tensor and wrap the result again.
    """

    __slots__ = ("_raw", "device", "dtype")

    def __init__(self, raw: Any, device: Device, dtype: DType):
        self._raw = raw
        self.device = device
        self.dtype = dtype

    def get_raw(self) -> Any:
        return self._raw

    def _same(self, raw: Any) -> "TensorBase":
        return TensorBase(raw, self.device, self.dtype)

    def clone(self) -> "TensorBase":
        return self._same(self._raw.clone())

    def detach(self) -> "TensorBase":
        return self._same(self._raw.detach())

    def contiguous(self) -> "TensorBase":
        return self._same(self._raw.contiguous())

    def reshape(self, shape: Sequence[int]) -> "TensorBase":
        return self._same(self._raw.reshape(shape))

    def __getitem__(self, index: Any) -> "TensorBase":
        return self._same(self._raw[index])

    def data_ptr(self) -> int:
        return self._raw.data_ptr()

    def __repr__(self) -> str:
        return f"TensorBase({self._raw!r}, device={self.device}, dtype={self.dtype})"
