"""fastsafetensors: load safetensors checkpoints at the speed of the hardware.

``fastsafetensors.load`` is the one-call entry point; the fastsafetensors 0.3 API
(``SafeTensorsFileLoader``, ``fastsafe_open``, ``SingleGroup``, ...) keeps working unchanged.
Importing this package imports no framework.

Public: the names in ``__all__`` and the modules without an underscore (``jax``, ``errors``,
``settings``, ``metrics``, ...). ``_src`` and ``_cpp`` (the compiled engine) are private.
"""

import logging as _logging
import os as _os

try:
    from . import _cpp
    if getattr(_cpp, "__file__", None) is None:  # only the stub folder _cpp/ was found (a namespace package)
        raise ImportError("fastsafetensors._cpp is not built")
except ImportError as _exc:  # a source tree that was never built
    raise ImportError(f"fastsafetensors: the compiled engine (_cpp*.so) is missing from {_os.path.dirname(__file__)}: "
                      "install the package (`pip install .`), or build it in place "
                      "(`python setup.py build_ext --inplace`)") from _exc
from . import errors, host_cache, metrics, settings
from ._src.api import load
from .auto_loader import AutoLoader
from .common import SafeTensorsMetadata, SingleGroup, TensorFrame, get_device_numa_node
from .config import LoaderConfig, load_config
from .errors import FastSafeTensorsError
from .loader import FilesBufferOnDevice, SafeTensorsFileLoader, fastsafe_open
from .metrics import LoadMetrics
from .parallel_loader import ParallelLoader
from .st_types import Device, DeviceType, DType

__version__ = "0.6.0"

__all__ = [
    # loaders
    "load",
    "SafeTensorsFileLoader",
    "FilesBufferOnDevice",
    "fastsafe_open",
    "ParallelLoader",
    "AutoLoader",
    # the rest of the 0.3 API
    "LoaderConfig",
    "load_config",
    "SingleGroup",
    "SafeTensorsMetadata",
    "TensorFrame",
    "get_device_numa_node",
    "Device",
    "DeviceType",
    "DType",
    # errors: the root here, every class in the module
    "FastSafeTensorsError",
    "errors",
    "LoadMetrics",
    "metrics",
    "settings",
    "host_cache",
]

_logging.getLogger("fastsafetensors").addHandler(_logging.NullHandler())
if settings.get("FASTSAFETENSORS_DEBUG"):
    _logging.basicConfig()
    _logging.getLogger("fastsafetensors").setLevel(_logging.DEBUG)
