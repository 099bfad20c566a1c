"""TEST-ONLY ADAPTER: lets upstream fastsafetensors' unit tests import against our package.

Loaded as a pytest plugin (``-p fst_upstream_shim``) by ``run.py`` before upstream's conftest, it
supplies the upstream internals that conftest and the test modules import, so the tests collect and
each one passes or fails on its own merits. Nothing here is part of fastsafetensors, nothing here is
shipped, and the package never imports it.

Three kinds of names, and the shim never replaces a name our package already has:
- *mapped*: an upstream internal with a public counterpart here (``is_gpu_found`` -> the CUDA device
  count, ``set_debug_log`` -> the ``fastsafetensors`` logger, a framework's ``get_mem_used`` -> the
  engine's live host bytes, ...). Each mapping says which public call it stands for.
- *internal*: an upstream internal with no counterpart (GDS readers, copiers, raw device buffers, F4
  shape helpers). It imports, and any use raises ``UpstreamInternal`` naming it, so ``run.py`` can
  tell "tests an internal" from a failure of ours.
- everything else is left alone: a missing public name fails the test as it should.
"""

from __future__ import annotations

import gc
import importlib
import importlib.machinery
import logging
import sys
import types
from typing import Any, Optional

import pytest

from fastsafetensors import _cpp, frameworks
from fastsafetensors.frameworks import TensorBase, get_framework
from fastsafetensors.st_types import Device, DType


class UpstreamInternal(NotImplementedError):
    """An upstream internal that has no counterpart in our package was used."""

    def __init__(self, name: str):
        super().__init__(f"upstream internal: {name}")
        self.name = name


def internal_function(name: str):
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise UpstreamInternal(name)

    refuse.__name__ = name.rsplit(".", 1)[-1]
    return refuse


def internal_class(name: str) -> type:
    """A class that imports, can be subclassed and patched, and refuses to be instantiated."""

    def refuse(self: Any, *args: Any, **kwargs: Any) -> None:
        raise UpstreamInternal(name)

    return type(name.rsplit(".", 1)[-1], (), {"__init__": refuse, "__doc__": f"upstream internal {name}"})


# ---------------------------------------------------------------- mapped internals

def is_gpu_found() -> bool:
    """upstream common.is_gpu_found: whether a CUDA device is visible (our engine's device count)."""
    return _cpp.testing.cuda_device_count() > 0


def resolve_cudart_lib_name() -> str:
    """upstream common.resolve_cudart_lib_name: our engine resolves the CUDA runtime itself, lazily."""
    return "libcudart.so"


def load_library_functions(_name: str) -> int:
    """upstream cpp.load_library_functions: a no-op here, the engine dlopens CUDA on first use."""
    return 0


def set_debug_log(on: bool) -> None:
    """upstream cpp.set_debug_log: our loaders' debug_log, i.e. the ``fastsafetensors`` logger's level."""
    logging.getLogger("fastsafetensors").setLevel(logging.DEBUG if on else logging.NOTSET)


class _CppMetrics:
    @property
    def bounce_buffer_bytes(self) -> int:
        # Upstream's pinned staging for host->device copies. Our CPU path reads files straight into
        # the tensors' own buffers, so there is none to leak; on a GPU the device engine's staging
        # has no public counter, so that case is an internal.
        if is_gpu_found():
            raise UpstreamInternal("cpp.get_cpp_metrics().bounce_buffer_bytes on a GPU")
        return 0


def get_cpp_metrics() -> _CppMetrics:
    return _CppMetrics()


# Engine host bytes alive when the running test started: what earlier tests left must not count.
_baseline = {"host_live_bytes": 0}


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: Any) -> None:
    # pytest keeps the last failure's traceback (and the tensors its frames hold) in sys.last_*
    # until the next test's call phase; drop it before measuring, as pytest is about to.
    for name in ("last_type", "last_value", "last_traceback", "last_exc"):
        if hasattr(sys, name):
            delattr(sys, name)
    gc.collect()
    _baseline["host_live_bytes"] = _cpp.testing.host_live_bytes()


_UPSTREAM_NAMES = {"torch": "pytorch"}


class FrameworkOpBase:
    """upstream frameworks.FrameworkOpBase, mapped onto our ``frameworks.get_framework`` backend."""

    def __init__(self, ours: frameworks.Framework, name: str):
        self.ours = ours
        self.name = name
        self.device = Device.from_str("cpu")

    def get_name(self) -> str:
        return _UPSTREAM_NAMES.get(self.name, self.name)

    def set_device(self, device: Device) -> None:
        self.device = device

    def _torch(self):
        if self.name != "torch":
            raise UpstreamInternal(f"FrameworkOpBase for {self.name} (the shim maps pytorch only)")
        import torch

        return torch

    def randn(self, shape, device: Device, dtype: DType) -> TensorBase:
        torch = self._torch()
        raw = torch.randn(tuple(shape), dtype=torch_dtype(dtype), device=device.as_str())
        return ShimTensor(raw, device, DType(dtype))

    def get_empty_tensor(self, shape, dtype: DType, device: Device) -> TensorBase:
        torch = self._torch()
        raw = torch.empty(tuple(shape), dtype=torch_dtype(dtype), device=device.as_str())
        return ShimTensor(raw, device, DType(dtype))

    def is_equal(self, actual: Any, expected: Any) -> bool:
        """Bit for bit: same dtype, same shape, same bytes (stricter than upstream's ``eq``)."""
        torch = self._torch()
        a = actual.get_raw() if isinstance(actual, TensorBase) else actual
        b = expected.get_raw() if isinstance(expected, TensorBase) else expected
        if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
            raise TypeError(f"is_equal compares tensors, got {type(a).__name__} and {type(b).__name__}")
        if a.dtype != b.dtype or tuple(a.shape) != tuple(b.shape):
            return False
        return bytes(a.cpu().contiguous().view(torch.uint8).numpy()) == \
            bytes(b.cpu().contiguous().view(torch.uint8).numpy())

    def support_fp8(self) -> bool:
        """Whether our backend holds F8_E4M3 (its plan-time dtype check)."""
        try:
            self.ours.check_dtype("F8_E4M3", (1,))
        except Exception:
            return False
        return True

    def get_mem_used(self) -> int:
        """upstream: device bytes its loaders allocated and did not free, 0 at each test's start.
        Here: engine host bytes (``_cpp.testing.host_live_bytes``) allocated since this test began and still
        alive; a tensor keeps its buffer alive after close(), and cycles free at collection."""
        if is_gpu_found():
            raise UpstreamInternal("FrameworkOpBase.get_mem_used on a GPU")
        gc.collect()
        return _cpp.testing.host_live_bytes() - _baseline["host_live_bytes"]


for _name in ("get_process_group", "get_cuda_ver", "get_device_name", "alloc_tensor_memory",
              "free_tensor_memory", "as_workaround_dtype", "from_dlpack", "get_native_shape",
              "get_storage_shape", "get_native_slices", "copy_tensor", "concat_tensors"):
    setattr(FrameworkOpBase, _name, internal_function(f"FrameworkOpBase.{_name}"))


class ShimTensor(TensorBase):
    """What the shim's ``randn`` / ``get_empty_tensor`` return (upstream's FrameworkOp makes these):
    our TensorBase plus upstream's ``to(device=, dtype=)``, which these test helpers call."""

    __slots__ = ()

    def _same(self, raw: Any) -> "ShimTensor":
        return ShimTensor(raw, self.device, self.dtype)

    def to(self, device: Optional[Device] = None, dtype: DType = DType.AUTO) -> "ShimTensor":
        raw, dtype = self.get_raw(), DType(dtype)
        device = self.device if device is None else Device.from_str(device)
        raw = raw.to(device=device.as_str())
        if dtype is not DType.AUTO:
            raw = raw.to(dtype=torch_dtype(dtype))
        return ShimTensor(raw, device, self.dtype if dtype is DType.AUTO else dtype)


def torch_dtype(dtype: DType):
    from fastsafetensors._src.frameworks.torch import TORCH_DTYPES

    return TORCH_DTYPES[DType(dtype).value]


def get_framework_op(name: str) -> FrameworkOpBase:
    """upstream frameworks.get_framework_op: our ``get_framework``; its error is ours, unchanged."""
    ours = get_framework("torch" if name == "pytorch" else name)
    return FrameworkOpBase(ours, frameworks.canonical_name(name))


# ---------------------------------------------------------------- installing

MAPPED = {
    "fastsafetensors.common": {"is_gpu_found": is_gpu_found, "resolve_cudart_lib_name": resolve_cudart_lib_name},
    "fastsafetensors.cpp": {"load_library_functions": load_library_functions, "set_debug_log": set_debug_log,
                            "get_cpp_metrics": get_cpp_metrics},
    "fastsafetensors.frameworks": {"FrameworkOpBase": FrameworkOpBase, "get_framework_op": get_framework_op},
}

# Upstream internals its tests import by name: (module, name, kind).
INTERNAL_NAMES = [
    ("fastsafetensors.cpp", "nogds_file_reader", "class"),
    ("fastsafetensors.cpp", "gds_file_reader", "class"),
    ("fastsafetensors.cpp", "gds_device_buffer", "class"),
    ("fastsafetensors.cpp", "init_gds", "function"),
    ("fastsafetensors.cpp", "close_gds", "function"),
    ("fastsafetensors.cpp", "get_alignment_size", "function"),
    ("fastsafetensors.cpp", "get_device_pci_bus", "function"),
    ("fastsafetensors.cpp", "set_numa_node", "function"),
    ("fastsafetensors.cpp", "read_buffer", "function"),
    ("fastsafetensors.cpp", "memcpy_h2d_async", "function"),
    ("fastsafetensors.cpp", "is_hip_found", "function"),
    ("fastsafetensors.loader", "BaseSafeTensorsFileLoader", "class"),
    ("fastsafetensors.loader", "create_copier_constructor", "function"),
    ("fastsafetensors.parallel_loader", "PipelineParallel", "class"),
    ("fastsafetensors.auto_loader", "_LOADER_REGISTRY", "mapping"),
]

# Upstream-only modules its tests import; each name they take from them is an internal.
INTERNAL_MODULES = {
    "fastsafetensors.copier": {"create_copier_constructor": "function"},
    "fastsafetensors.copier.gds": {"GdsFileCopier": "class"},
    "fastsafetensors.copier.nogds": {"NoGdsFileCopier": "class"},
    "fastsafetensors.copier.unified": {"UnifiedMemCopier": "class", "is_unified_memory_system": "function"},
    "fastsafetensors.copier.threefs": {"ThreeFSFileCopier": "class", "new_threefs_file_copier": "function"},
    "fastsafetensors.dlpack": {"from_cuda_buffer": "function"},
    "fastsafetensors.threefs_loader": {"ThreeFSLoader": "class"},
}


class InternalMapping:
    """An upstream internal dict (a registry): any look-up raises UpstreamInternal."""

    def __init__(self, name: str):
        self.name = name

    def _refuse(self, *args: Any) -> Any:
        raise UpstreamInternal(self.name)

    __contains__ = __getitem__ = __iter__ = __len__ = keys = items = get = _refuse


def _placeholder(qualified: str, kind: str) -> Any:
    makers = {"class": internal_class, "function": internal_function, "mapping": InternalMapping}
    return makers[kind](qualified)


def _set_missing(module: types.ModuleType, name: str, value: Any) -> None:
    if not hasattr(module, name):  # never shadow what our package has
        setattr(module, name, value)


class OwnTreeOnly:
    """A meta path finder: a ``fastsafetensors.*`` module the package under test does not have is
    missing, even where an editable install of another tree would supply it."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> None:
        if name.startswith("fastsafetensors.") and path is not None and \
                importlib.machinery.PathFinder.find_spec(name, path) is None:
            raise ModuleNotFoundError(f"No module named '{name}'", name=name)
        return None  # found in the tree: the usual finders load it


def _module(modname: str) -> types.ModuleType:
    """Our module of that name, or a placeholder for an upstream-only one (``fastsafetensors.cpp``:
    upstream's engine module; ours is the private ``_cpp``)."""
    try:
        return importlib.import_module(modname)
    except ImportError:
        module = types.ModuleType(modname, f"upstream internal module {modname} (shim placeholder)")
        module.__path__ = []  # a package, so its submodules can be placeholders too
        sys.modules[modname] = module
        parent, _, child = modname.rpartition(".")
        setattr(sys.modules[parent], child, module)
        return module


def install() -> None:
    sys.meta_path.insert(0, OwnTreeOnly())
    for modname, names in MAPPED.items():
        module = _module(modname)
        for name, value in names.items():
            _set_missing(module, name, value)
    for modname, name, kind in INTERNAL_NAMES:
        try:
            module = importlib.import_module(modname)
        except ImportError:  # a module of ours not on this branch: its tests fail to import, visibly
            continue
        _set_missing(module, name, _placeholder(f"{modname}.{name}", kind))
    for modname, names in INTERNAL_MODULES.items():
        module = _module(modname)
        for name, kind in names.items():
            _set_missing(module, name, _placeholder(f"{modname}.{name}", kind))


install()
