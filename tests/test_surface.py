"""The package's public surface (issue 13): the top level's ``__all__``, which modules are public,
the private engine and its test-only bindings."""

from __future__ import annotations

import importlib
import pathlib
import re

import fastsafetensors
from fastsafetensors import _cpp

PACKAGE = pathlib.Path(_cpp.__file__).parent

# Bindings only tests and benchmarks use: they live in the engine's testing submodule.
TEST_ONLY = {"HostDevice", "cold_read_shape", "host_live_bytes", "parse_file_image", "evict_page_cache", "sha256_bytes",
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


# Modules clients, the 0.3 API or our docs import (docs/architecture.md); everything else is in _src/.
PUBLIC_MODULES = {"auto_loader", "common", "config", "errors", "frameworks", "host_cache", "integrity", "jax", "loader",
                  "metrics", "parallel_loader", "settings", "st_types"}

ALL = ["load", "SafeTensorsFileLoader", "FilesBufferOnDevice", "fastsafe_open", "ParallelLoader", "AutoLoader",
       "LoaderConfig", "load_config", "SingleGroup", "SafeTensorsMetadata", "TensorFrame", "get_device_numa_node",
       "Device", "DeviceType", "DType", "FastSafeTensorsError", "errors", "LoadMetrics", "metrics", "settings",
       "host_cache"]


def test_top_level_all_is_pinned():
    assert fastsafetensors.__all__ == ALL
    for name in ALL:
        assert getattr(fastsafetensors, name) is not None


def test_top_level_names_are_public_or_underscored():
    # Names dir() shows: __all__, the public modules (imported as a side effect), or underscored.
    extra = {n for n in dir(fastsafetensors) if not n.startswith("_")} - set(ALL) - PUBLIC_MODULES
    assert extra == set()


def test_error_classes_are_not_top_level_names():
    assert not hasattr(fastsafetensors, "HeaderTooLarge") and not hasattr(fastsafetensors, "ReadError")
    assert issubclass(fastsafetensors.errors.HeaderTooLarge, fastsafetensors.FastSafeTensorsError)


def test_modules_are_public_or_under_src():
    modules = {p.stem for p in PACKAGE.glob("*.py")} | {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert modules - {"__init__", "__main__"} == PUBLIC_MODULES | {"_src"}
    for name in PUBLIC_MODULES:
        importlib.import_module(f"fastsafetensors.{name}")


def _stub_names(path: pathlib.Path):
    """Module-level names of a stub, and each class's own public members."""
    import ast

    tree = ast.parse(path.read_text())
    names, members = set(), {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            names.add(node.name)
            defs = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
            fields = {n.target.id for n in node.body if isinstance(n, ast.AnnAssign)}  # read-write attributes
            members[node.name] = {n for n in defs | fields if not n.startswith("_")}
        elif isinstance(node, ast.FunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign):
            names.add(node.target.id)
        elif isinstance(node, ast.ImportFrom) and node.module is None:  # from . import testing as testing
            names.update(a.asname or a.name for a in node.names)
    return names, members


def _runtime_names(module):
    names = {n for n in dir(module) if not n.startswith("__")}
    members = {n: {m for m in vars(getattr(module, n)) if not m.startswith("_")}
               for n in names if isinstance(getattr(module, n), type)}
    return names, members


def test_engine_stubs_match_the_built_module():
    # tools/engine_stubs.py regenerates them after a change to csrc/python/.
    stubs = PACKAGE / "_cpp"
    assert _stub_names(stubs / "__init__.pyi") == _runtime_names(_cpp)
    assert _stub_names(stubs / "testing.pyi") == _runtime_names(_cpp.testing)


def test_the_remote_benchmark_uses_only_public_test_server_helpers():
    # It reaches tests/remote_servers.py through a module object (`servers.free_port()`,
    # `_servers().upload(...)`): every attribute it takes from it must be in that module's __all__.
    import ast

    from tests import remote_servers

    def the_module(node):
        if isinstance(node, ast.Call):
            node = node.func
        return isinstance(node, ast.Name) and node.id in ("servers", "_servers", "remote_servers")

    tree = ast.parse((PACKAGE.parent / "benchmarks" / "remote_bench.py").read_text())
    used = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute) and the_module(node.value)}
    assert {"moto_server", "upload", "stop_server"} <= used <= set(remote_servers.__all__)
