"""TEST-ONLY ADAPTER: pytest for one torchrun rank, its junit file named after the rank.

Usage (by run.py): rank_pytest.py JUNIT_PREFIX PYTEST_ARGS... -> JUNIT_PREFIX.rank<RANK>.xml
"""

import os
import sys

import pytest

if __name__ == "__main__":
    prefix, args = sys.argv[1], sys.argv[2:]
    sys.exit(pytest.main([*args, f"--junitxml={prefix}.rank{os.environ['RANK']}.xml"]))
