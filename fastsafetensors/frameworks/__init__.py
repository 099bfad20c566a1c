"""Framework backends: turn engine buffers into NumPy, PyTorch, JAX, CuPy or Paddle arrays.

Each backend lives in its own (private) module under ``fastsafetensors/_src/frameworks/`` and is
imported only when asked for, so importing fastsafetensors imports no framework.
"""

from __future__ import annotations

import importlib
from typing import Dict

from .._src.frameworks.base import Framework, TensorBase
from ..errors import InvalidArgumentError

__all__ = ["Framework", "TensorBase", "get_framework", "canonical_name"]

_ALIASES = {
    "pt": "torch",
    "pytorch": "torch",
    "torch": "torch",
    "np": "numpy",
    "numpy": "numpy",
    "jax": "jax",
    "cupy": "cupy",
    "cp": "cupy",
    "paddle": "paddle",
}
_loaded: Dict[str, Framework] = {}


def canonical_name(name: str) -> str:
    try:
        return _ALIASES[str(name).lower()]
    except KeyError:
        raise InvalidArgumentError(f"unknown framework {name!r}: use one of {sorted(set(_ALIASES))}") from None


def get_framework(name) -> Framework:
    """The backend for ``name`` ("pt"/"pytorch"/"torch", "jax", "numpy"/"np", "cupy", "paddle")."""
    if isinstance(name, Framework):
        return name
    key = canonical_name(name)
    fw = _loaded.get(key)
    if fw is None:
        module = importlib.import_module(f"fastsafetensors._src.frameworks.{key}")
        fw = _loaded[key] = module.make_framework()
    return fw
