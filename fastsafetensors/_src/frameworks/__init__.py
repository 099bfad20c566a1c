"""The framework backends (private), one module each, imported only when asked for:
:func:`fastsafetensors.frameworks.get_framework` loads them."""
