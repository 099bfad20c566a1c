"""fastsafetensors: load safetensors checkpoints at the speed of the hardware.

``fastsafetensors.load`` is the one-call entry point; the fastsafetensors 0.3 API
(``SafeTensorsFileLoader``, ``fastsafe_open``, ``SingleGroup``, ...) keeps working unchanged.
Importing this package imports no framework.
"""

from __future__ import annotations

import logging
import os

try:
    from . import _cpp
except ImportError as _exc:  # a source tree that was never built
    raise ImportError(f"fastsafetensors: the compiled engine (_cpp*.so) is missing from {os.path.dirname(__file__)}: "
                      "install the package (`pip install .`), or build it in place "
                      "(`python setup.py build_ext --inplace`)") from _exc
from . import errors, host_cache, settings
from ._src.api import load
from .auto_loader import AutoLoader
from .config import LoaderConfig, load_config
from .common import SafeTensorsMetadata, SingleGroup, TensorFrame, get_device_numa_node
from .errors import *  # noqa: F401,F403
from ._src.files import SafeTensorsFile, read_file_header
from .loader import FilesBufferOnDevice, SafeTensorsFileLoader, fastsafe_open
from .metrics import LoadMetrics
from .parallel_loader import ParallelLoader
from .st_types import Device, DeviceType, DType

__version__ = "0.6.0"

__all__ = [
    "load",
    "LoadMetrics",
    "SafeTensorsFileLoader",
    "FilesBufferOnDevice",
    "fastsafe_open",
    "ParallelLoader",
    "AutoLoader",
    "LoaderConfig",
    "load_config",
    "SingleGroup",
    "SafeTensorsMetadata",
    "TensorFrame",
    "get_device_numa_node",
    "SafeTensorsFile",
    "read_file_header",
    "Device",
    "DeviceType",
    "DType",
    "errors",
    "host_cache",
    "settings",
]

logging.getLogger("fastsafetensors").addHandler(logging.NullHandler())
if settings.get("FASTSAFETENSORS_DEBUG"):
    logging.basicConfig()
    logging.getLogger("fastsafetensors").setLevel(logging.DEBUG)
