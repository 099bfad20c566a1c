"""The package's public surface: the private engine and its test-only bindings (issue 13)."""

from __future__ import annotations

import pathlib
import re

from fastsafetensors import _cpp

PACKAGE = pathlib.Path(_cpp.__file__).parent

# Bindings only tests and benchmarks use: they live in the engine's testing submodule.
TEST_ONLY = {"HostDevice", "host_live_bytes", "parse_file_image", "dtype_bits", "evict_page_cache", "sha256_bytes",
             "SHA256_IMPLEMENTATION", "cuda_device_count", "cuda_runtime_error", "cuda_runtime_library",
             "parse_cpulist", "normalize_pci_bus_id", "numa_node_cpus", "numa_placement", "set_fault",
             "fail_allocations", "fail_thread_starts", "clear_faults", "pread_calls", "faults_injected",
             "parse_bool", "parse_uint", "parse_float", "parse_choice"}


def test_test_only_bindings_are_in_the_testing_submodule():
    assert TEST_ONLY <= set(dir(_cpp.testing))
    assert not TEST_ONLY & set(dir(_cpp))


def test_the_library_never_uses_the_testing_submodule():
    # Any spelling that reaches it: _cpp.testing, `from ._cpp import testing`, `from . import _cpp as c; c.testing`.
    reach = re.compile(r"\btesting\b")
    users = [str(p.relative_to(PACKAGE)) for p in sorted(PACKAGE.rglob("*.py")) if reach.search(p.read_text())]
    assert users == []
