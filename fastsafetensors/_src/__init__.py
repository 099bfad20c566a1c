"""fastsafetensors' implementation (private: names here may change at any time).

The public modules (``fastsafetensors``, ``fastsafetensors.jax``, ``errors``, ``settings``, ...) import
from here; see docs/architecture.md for which module holds what.
"""
