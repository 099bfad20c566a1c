"""Exceptions raised by fastsafetensors.

Every one derives from :class:`FastSafeTensorsError` (``except FastSafeTensorsError`` catches all
of them) and from the builtin exception that fits it. Format errors derive from :class:`SafeTensorsError` (a ``ValueError``) and are named after the
reference reader's errors, so a user who knows ``safetensors`` recognises them. I/O failures
derive from :class:`ReadError` (an ``OSError``). Every message names the file and, where it
applies, the tensor.
"""

from __future__ import annotations

from typing import Optional

__all__ = [
    "FastSafeTensorsError",
    "InvalidArgumentError",
    "ArgumentTypeError",
    "SafeTensorsError",
    "HeaderTooSmall",
    "HeaderTooLarge",
    "InvalidHeaderLength",
    "InvalidHeader",
    "InvalidHeaderDeserialization",
    "InvalidOffset",
    "ValidationOverflow",
    "MisalignedSlice",
    "TensorInvalidInfo",
    "MetadataIncompleteBuffer",
    "DuplicateTensorName",
    "TensorNotFound",
    "IndexMismatch",
    "IndexPathError",
    "UnsupportedDtype",
    "ShardingMismatch",
    "TransformError",
    "IntegrityError",
    "ReadError",
    "TruncatedFileError",
    "NotRegularFileError",
    "MissingFileError",
    "FileChangedError",
    "ResourceError",
    "LoaderClosedError",
    "ShardRequestError",
    "PeerRankError",
    "CudaError",
    "GdsError",
    "SettingsError",
    "ConfigError",
    "ConfigFileNotFoundError",
    "BudgetInfeasibleError",
    "UnsupportedURLError",
    "RemoteUnavailableError",
    "RemoteNotFoundError",
    "RemoteAccessDeniedError",
    "RemoteReadError",
    "RemoteObjectChangedError",
]


class FastSafeTensorsError(Exception):
    """The root of every error fastsafetensors raises."""


class InvalidArgumentError(FastSafeTensorsError, ValueError):
    """A call got a value it cannot use (an unknown framework, dtype or device, a bad count); the
    message names the argument and what it accepts."""


class ArgumentTypeError(FastSafeTensorsError, TypeError):
    """A call got an argument of a type it does not take, or a keyword it does not know."""


class SafeTensorsError(FastSafeTensorsError, ValueError):
    """A file is not a valid safetensors file, or a request does not fit it."""

    def __init__(self, message: str, *, filename: Optional[str] = None, tensor: Optional[str] = None):
        super().__init__(message)
        self.filename = filename
        self.tensor = tensor


class HeaderTooSmall(SafeTensorsError):
    """The file is shorter than the 8-byte header length."""


class HeaderTooLarge(SafeTensorsError):
    """The header length exceeds 100,000,000 bytes."""


class InvalidHeaderLength(SafeTensorsError):
    """The header length points past the end of the file."""


class InvalidHeader(SafeTensorsError):
    """The header is not valid UTF-8."""


class InvalidHeaderDeserialization(SafeTensorsError):
    """The header is not JSON of the safetensors schema (syntax, unknown dtype, bad shape...)."""


class InvalidOffset(SafeTensorsError):
    """A tensor's data_offsets leave a gap, overlap another tensor, or run backwards."""


class ValidationOverflow(SafeTensorsError):
    """A tensor's element or byte count does not fit in 64 bits."""


class MisalignedSlice(SafeTensorsError):
    """A packed (sub-byte) tensor does not fill whole bytes."""


class TensorInvalidInfo(SafeTensorsError):
    """A tensor's byte range does not match its shape and dtype."""


class MetadataIncompleteBuffer(SafeTensorsError):
    """The tensors do not cover the data section exactly (missing or extra bytes)."""


class DuplicateTensorName(InvalidHeaderDeserialization):
    """The header names the same tensor twice (most readers silently keep the last)."""


class TensorNotFound(SafeTensorsError, KeyError):
    """A requested tensor is in none of the files."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class IndexMismatch(SafeTensorsError):
    """A model.safetensors.index.json and the files it names disagree."""


class IndexPathError(IndexMismatch):
    """An index's weight_map names something other than a file inside the index's directory
    (an absolute path, a path through ``..`` out of it, or not a string)."""


class UnsupportedDtype(SafeTensorsError, TypeError):
    """The framework asked for has no type for a tensor's dtype."""


class ShardingMismatch(SafeTensorsError):
    """A requested placement does not fit a tensor (a shape the mesh does not divide, a rank or
    shape other than the tensor's). Raised before any byte is read."""


class TransformError(ShardingMismatch):
    """A layout transform (``fastsafetensors.jax.load(..., transforms=...)``) does not fit the
    checkpoint or its target: a missing source, shapes or dtypes that do not compose, a leaf
    written twice. Names the target leaf and its source tensors; raised before any byte is read."""


class IntegrityError(SafeTensorsError):
    """A file's SHA-256 is not the one expected (or no expected digest is known for it)."""

    def __init__(self, message: str, *, filename: Optional[str] = None, expected: Optional[str] = None,
                 actual: Optional[str] = None):
        super().__init__(message, filename=filename)
        self.expected = expected
        self.actual = actual


class ReadError(FastSafeTensorsError, OSError):
    """Reading a file failed. ``filename`` and ``offset`` say where."""

    def __init__(self, message: str, *, filename: Optional[str] = None, offset: Optional[int] = None,
                 errno: int = 0):
        super().__init__(message)
        self.filename = filename
        self.offset = offset
        self.errno = errno or None

    def __str__(self) -> str:
        return str(self.args[0])


class TruncatedFileError(ReadError):
    """A file ended early or changed size after its header was read: its bytes are not delivered."""


class FileChangedError(TruncatedFileError):
    """A file was replaced (renamed over) or rewritten after its header was read: another inode,
    size or modification time. Nothing laid out by the old header is read from it."""


class NotRegularFileError(ReadError):
    """A checkpoint path is a FIFO, a directory, a device or a socket: refused before anything is
    read (reading one could block forever)."""


class MissingFileError(ReadError, FileNotFoundError):
    """A file a checkpoint needs is not there: a shard its index names, or any ``*.safetensors`` in
    its directory."""


class ResourceError(FastSafeTensorsError, OSError):
    """The OS refused something a load needs (a reader thread: RLIMIT_NPROC, a cgroup's pids limit,
    address space). Nothing of the refused reader is left running; retry with fewer ``threads``."""

    def __init__(self, message: str, *, errno: int = 0):
        super().__init__(message)
        self.errno = errno or None

    def __str__(self) -> str:
        return str(self.args[0])


class LoaderClosedError(FastSafeTensorsError, RuntimeError):
    """A loader or buffer was used after ``close()``."""


class ShardRequestError(SafeTensorsError):
    """A tensor-parallel request does not fit the tensor (bad dim, bad rank, a split through packed bytes)."""


class PeerRankError(FastSafeTensorsError, RuntimeError):
    """Another rank of the process group failed; raised on the ranks that did not fail themselves."""


class CudaError(FastSafeTensorsError, RuntimeError):
    """The GPU path is unavailable (no CUDA runtime, no such device) or a CUDA call failed."""


class GdsError(FastSafeTensorsError, RuntimeError):
    """GPU Direct Storage (cuFile) failed; the message contains "gds": retry with ``nogds=True``."""


class SettingsError(FastSafeTensorsError, ValueError):
    """A ``FASTSAFETENSORS_*`` environment variable holds a value it does not accept; ``variable``
    names it and the message says what it accepts (fastsafetensors/settings.py)."""

    def __init__(self, message: str, *, variable: Optional[str] = None):
        super().__init__(message)
        self.variable = variable


class ConfigError(FastSafeTensorsError, ValueError):
    """A loader configuration (``FASTSAFETENSORS_CONFIG_JSON``, the file ``FASTSAFETENSORS_CONFIG``
    names, or ``./fastsafetensors.json``) is malformed or asks for something this package lacks;
    ``source`` says where it came from."""

    def __init__(self, message: str, *, source: Optional[str] = None):
        super().__init__(message)
        self.source = source


class ConfigFileNotFoundError(ConfigError, FileNotFoundError):
    """The configuration file ``FASTSAFETENSORS_CONFIG`` names (or ``from_file`` was given) is not
    there; a ``FileNotFoundError`` as upstream raises."""


class BudgetInfeasibleError(FastSafeTensorsError, ValueError):
    """A memory budget (``max_batch_bytes``, ``device_memory_budget``) cannot hold a tensor the load
    must read; raised before anything is read. ``filename`` and ``tensor`` name it, ``required`` is
    the budget that would fit it at that point of the load."""

    def __init__(self, message: str, *, filename: Optional[str] = None, tensor: Optional[str] = None,
                 required: Optional[int] = None):
        super().__init__(message)
        self.filename = filename
        self.tensor = tensor
        self.required = required


class UnsupportedURLError(FastSafeTensorsError, ValueError):
    """A checkpoint URL this package cannot load: an unknown scheme, ``http://`` to a host other than
    the loopback one, a URL where a loader takes only local files, or a store configuration that
    cannot work (options the store refuses, a plain ``http://`` endpoint without ``allow_http``):
    raised at once, never retried (docs/remote.md)."""


class RemoteUnavailableError(FastSafeTensorsError, ImportError):
    """A URL was given but the object-store client (``obstore``) is not installed:
    ``pip install fastsafetensors[remote]``."""


class RemoteNotFoundError(MissingFileError):
    """An object or bucket a checkpoint URL names does not exist (HTTP 404); ``filename`` is the URL."""


class RemoteAccessDeniedError(ReadError, PermissionError):
    """The object store refused a request (HTTP 401/403): missing or wrong credentials, or no
    permission on the bucket or object. The message names the URL, never the credentials."""


class RemoteReadError(ReadError):
    """A ranged GET failed after its bounded retries (5xx, throttling, a connection dropped or a body
    cut short every time); ``filename`` is the URL and ``offset`` where the failed range starts."""


class RemoteObjectChangedError(FileChangedError):
    """An object was replaced after its header was read (its ETag or version no longer matches, or its
    size changed): nothing laid out by the old header is read from it."""
