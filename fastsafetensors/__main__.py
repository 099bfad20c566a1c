"""``python -m fastsafetensors``: the same command line as ``fastsafetensors``."""

import sys

from .cli import main

sys.exit(main())
