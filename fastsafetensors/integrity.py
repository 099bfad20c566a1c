"""Whole-file SHA-256 checks: ``load(..., verify=True)`` and the CLI's ``verify --sha256``.

The expected digest of a file comes from the caller (``{path: hexdigest}``) or from a Hugging
Face cache, where ``snapshots/<rev>/<file>`` is a symlink to ``blobs/<sha256>`` for files stored
with Git LFS (every ``.safetensors`` file on the Hub).

A load with ``verify=True`` reads each byte of a file from disk once: the engine hashes the header
bytes it parsed and the tensor bytes from the host buffers after they land, and reads from disk
only what the load did not (tensors not selected), from the file the header was read from. So the
digest covers what was parsed and returned. See docs/security.md.
"""

from __future__ import annotations

import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Sequence

from . import cpp
from .errors import IntegrityError
from .files import PathLike

if TYPE_CHECKING:
    from .plan import LoadPlan

__all__ = ["hf_cache_digest", "expected_digests", "sha256_file", "verify_file", "check_loaded"]

logger = logging.getLogger("fastsafetensors")

_HEX64 = re.compile(r"[0-9a-f]{64}")


def hf_cache_digest(path: PathLike) -> Optional[str]:
    """The SHA-256 a Hugging Face cache names ``path``'s blob after, or None outside such a cache."""
    path = os.fspath(path)
    if not os.path.islink(path):
        return None
    target = os.path.realpath(path)
    name = os.path.basename(target)
    if os.path.basename(os.path.dirname(target)) != "blobs" or not _HEX64.fullmatch(name):
        return None
    return name


def _caller_digest(path: str, sha256: Mapping[PathLike, str]) -> Optional[str]:
    """The caller's digest for ``path``, keyed by the same file's path in any spelling or by its name."""
    names = {path, os.path.abspath(path), os.path.basename(path)}
    real = os.path.realpath(path)
    for key, digest in sha256.items():
        key = os.fspath(key)
        if key in names or os.path.realpath(key) == real:
            return digest.lower()
    return None


def expected_digests(paths: Sequence[PathLike], sha256: Optional[Mapping[PathLike, str]] = None) -> Dict[str, str]:
    """``{path: expected hex digest}`` for every file; a file with none known is an IntegrityError."""
    out: Dict[str, str] = {}
    for p in paths:
        path = os.fspath(p)
        digest = _caller_digest(path, sha256) if sha256 else None
        if digest is None:
            digest = hf_cache_digest(path)
        if digest is None:
            raise IntegrityError(f"{path}: no expected SHA-256 to verify against (pass sha256={{path: digest}} "
                                 "or load from a Hugging Face cache snapshot)", filename=path)
        if not _HEX64.fullmatch(digest):
            raise IntegrityError(f"{path}: expected SHA-256 {digest!r} is not 64 hex digits", filename=path)
        out[path] = digest
    return out


def sha256_file(path: PathLike) -> str:
    """Hex SHA-256 of a file, streamed from disk by the engine."""
    return cpp.sha256_file(os.fspath(path))


def _compare(path: str, expected: str, actual: str) -> None:
    if actual != expected:
        raise IntegrityError(f"{path}: SHA-256 mismatch: expected {expected}, file has {actual}",
                             filename=path, expected=expected, actual=actual)
    logger.debug("%s: SHA-256 %s verified", path, actual)


def verify_file(path: PathLike, expected: Optional[str] = None) -> str:
    """Hashes ``path`` and returns its hex SHA-256.

    Compared with ``expected`` when given, else with the Hugging Face cache blob name when the
    file lives in such a cache; a mismatch raises :class:`~fastsafetensors.errors.IntegrityError`.
    """
    path = os.fspath(path)
    want = expected.lower() if expected is not None else hf_cache_digest(path)
    actual = sha256_file(path)
    if want is not None:
        _compare(path, want, actual)
    return actual


def check_loaded(plan: "LoadPlan", buffers: List["cpp.HostBuffer"], expected: Mapping[str, str]) -> None:
    """Compares each planned file, as just loaded into ``buffers``, with its expected digest."""
    def digest(i: int) -> str:
        return cpp.sha256_loaded_file(plan.files[i].header, plan.files[i].path, i, plan.ranges, buffers)

    n = len(plan.files)
    with ThreadPoolExecutor(max_workers=max(1, min(8, n))) as pool:
        actual = list(pool.map(digest, range(n)))
    for f, got in zip(plan.files, actual):
        _compare(f.path, expected[f.path], got)
