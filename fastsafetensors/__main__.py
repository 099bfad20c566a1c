"""``python -m fastsafetensors``: the same command line as ``fastsafetensors``."""

import sys

from ._src.cli import main

sys.exit(main())
