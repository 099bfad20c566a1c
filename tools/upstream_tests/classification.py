"""TEST-ONLY ADAPTER: why each upstream test has the outcome it has here (read by run.py).

A failure that raised the shim's ``UpstreamInternal`` is classified from its message alone; every
other outcome that is not a pass needs an entry in REASONS (fnmatch patterns on the test id).
"""

from __future__ import annotations

import fnmatch
from typing import Dict, Tuple

CATEGORIES = ["pass", "internal", "difference", "bug", "skip", "unclassified"]

# pattern on "file.py::test" -> (status, reason); first match wins.
AFTER_CLOSE = ("tensors valid after close(): the test still holds {what} when it asserts that no loader "
               "memory is left; here a tensor keeps its buffer alive (docs/usage.md, README), and dropping it frees "
               "every byte (tests/clients/test_upstream_behaviour.py). Every comparison before that line passes")

REASONS: Dict[str, Tuple[str, str]] = {
    "test_fastsafetensors.py::test_set_debug_log": (
        "pass", "only through the shim: cpp.set_debug_log is upstream's; ours is the loaders' debug_log"),
    "test_fastsafetensors.py::test_get_framework_fail": (
        "internal", "frameworks.get_framework_op's message 'Unknown framework name'; our public "
        "frameworks.get_framework raises ValueError \"unknown framework 'aaaaa': use one of [...]\""),
    "test_fastsafetensors.py::test_from_buffer_*": (
        "difference", "SafeTensorsMetadata.from_buffer (a header parsed from a raw memory address) is not "
        "provided: no client in shared/reference/clients.md calls it, and these tests drive it through upstream's "
        "internal cpp.read_buffer"),
    "test_fastsafetensors.py::test_from_fd_short_reads": (
        "difference", "SafeTensorsMetadata.from_fd is not provided (from_file is); no client calls it"),
    "test_fastsafetensors.py::test_SafeTensorsFileLoader_copier_selection*": (
        "internal", "loader.create_copier_constructor (upstream's copier registry); the cuda:0 cases stop "
        "earlier here: our loader refuses, at construction, a CUDA device this machine does not have"),
    "test_fastsafetensors.py::test_SafeTensorsFileLoader": (
        "difference", "get_filename of a tensor no file holds raises TensorNotFound (upstream returns \"\"): "
        "nothing silent (docs/torch.md, compatibility). Every tensor before it compares equal (F16 "
        "conversion, nogds=False on the CPU, "
        "use_buf_register, max_copy_block_size, get_shape lists)"),
    "test_fastsafetensors.py::test_SafeTensorsFileLoaderNoGds": (
        "difference", AFTER_CLOSE.format(what="as_dict's tensors")),
    "test_fastsafetensors.py::test_fastsafe_open": (
        "difference", AFTER_CLOSE.format(what="the last tensor its loop bound")),
    "test_fastsafetensors.py::test_float8_e4m3fn_to_int8": (
        "internal", "frameworks._torch.dtype_convert (upstream's DType-to-torch table; ours is "
        "_src.frameworks.torch.TORCH_DTYPES, private), used by the test's reference loader"),
    "test_fastsafetensors.py::test_tensor_frame_getitem": (
        "difference", "TensorFrame is our frozen header entry (dtype, shape, data_offsets); upstream's view "
        "fields (strides, offsets, sliced) and its slicing are not provided: no client uses them"),
    "test_fastsafetensors.py::test_get_multi_cols_multi_file_auto_free": (
        "internal", "FilesBufferOnDevice.rank_loaders / auto_mem_delete (upstream's per-file device buffers); "
        "get_multi_cols across files is covered by tests/clients/test_upstream_behaviour.py"),
    "test_fastsafetensors.py::test_as_dict_partial_request_close_frees_buffers": (
        "internal", "FilesBufferOnDevice.rank_loaders / auto_mem_delete; a partial as_dict then close() "
        "freeing every byte is covered by tests/clients/test_upstream_behaviour.py"),
    "test_fastsafetensors.py::test_no_module_level_torch_import_outside_frameworks": (
        "difference", "upstream's file layout (it allows frameworks/_torch.py); our torch backend is "
        "_src/frameworks/torch.py, the only module the test finds, so the rule itself holds"),
    "threefs/test_parallel_threefs.py::*": (
        "skip", "upstream skips these too: the test looks for examples/ under tests/"),
    "test_multi.py::test_shuffle": (
        "difference", AFTER_CLOSE.format(what="as_dict's shards and get_multi_cols' result")),
    # AutoLoader and fastsafetensors.config:
    "test_config.py::TestLoaderConfigFromDict::test_unknown_*_fields_ignored": (
        "difference", "an unknown configuration field raises ConfigError naming it (nothing silent); "
        "upstream ignores it"),
    "test_config.py::TestLoaderConfigPublicAPI::test_from_json_is_private": (
        "difference", "LoaderConfig.from_json is public here (upstream keeps it private as _from_json)"),
    "test_auto_loader.py::TestThreeFSProcessExtensionConfig::*": (
        "internal", "ThreeFSLoader.process_extension_config (upstream's per-loader configuration hook)"),
    "test_auto_loader.py::TestBaseProcessExtensionConfigKwargs::*": (
        "internal", "BaseSafeTensorsFileLoader.process_extension_config (upstream's per-loader hook)"),
}
for _cls in ("TestAutoLoaderBaseLoader", "TestAutoLoader3FSLoader", "TestAutoLoaderPipelineCreation",
             "TestAutoLoaderConfigDiscovery", "TestAutoLoaderProperties", "TestAutoLoaderClose",
             "TestProcessExtensionConfig", "TestKwargsPassedToProcessExtensionConfig"):
    REASONS.setdefault(f"test_auto_loader.py::{_cls}::*", (
        "internal", "patches the loader classes upstream's auto_loader module holds for its registry "
        "(fastsafetensors.auto_loader.SafeTensorsFileLoader / ThreeFSLoader)"))


def classify(row: dict) -> Tuple[str, str]:
    outcome, message, test = row["outcome"], row["message"], row["test"]
    for pattern, (status, reason) in REASONS.items():
        if fnmatch.fnmatchcase(test, pattern):
            if (outcome == "passed") != (status == "pass"):
                return "unclassified", f"{outcome} now; recorded as {status}: {reason}"
            return status, reason
    if outcome == "passed":
        return "pass", ""
    if outcome == "skipped":
        return "skip", message
    marker = "upstream internal: "
    if marker in message:
        return "internal", message[message.index(marker) + len(marker):]
    return "unclassified", f"{outcome}: {message}"
