"""Whole-file SHA-256 checks: ``load(..., verify=True)`` and the CLI's ``verify --sha256``.

The expected digest of a file comes from the caller (``{path: hexdigest}``) or from a Hugging
Face cache, where ``snapshots/<rev>/<file>`` is a symlink to ``blobs/<sha256>`` for files stored
with Git LFS (every ``.safetensors`` file on the Hub); a blob itself is checked against its name.
Nothing passes unchecked: a file with no known digest, a digest that is not 64 hex digits, an
empty mapping and a key that names none of the files are errors.

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

from . import _cpp
from .errors import ArgumentTypeError, IntegrityError, InvalidArgumentError
from ._src.files import PathLike

if TYPE_CHECKING:
    from ._src.plan import LoadPlan

__all__ = ["is_sha256", "hf_cache_digest", "expected_digest", "expected_digests", "sha256_file", "verify_file",
           "check_loaded"]

logger = logging.getLogger("fastsafetensors")

_HEX64 = re.compile(r"[0-9a-f]{64}")


def is_sha256(text: object) -> bool:
    """Whether ``text`` is a hex SHA-256 digest (64 hex digits, either case)."""
    return isinstance(text, str) and _HEX64.fullmatch(text.lower()) is not None


def hf_cache_digest(path: PathLike) -> Optional[str]:
    """The SHA-256 a Hugging Face cache names ``path``'s blob after (``path`` being the blob or a link
    to it), or None outside such a cache."""
    target = os.path.realpath(os.fspath(path))
    name = os.path.basename(target)
    if os.path.basename(os.path.dirname(target)) != "blobs" or not _HEX64.fullmatch(name):
        return None
    return name


def _names(key: PathLike, path: str) -> bool:
    """Whether a caller's key names ``path``: the same file in any spelling, or its file name."""
    key = os.fspath(key)
    same_spelling = key in (path, os.path.abspath(path), os.path.basename(path))
    return same_spelling or os.path.realpath(key) == os.path.realpath(path)


def expected_digest(path: PathLike, sha256: Optional[Mapping[PathLike, str]] = None) -> str:
    """The hex digest ``path`` must have: the caller's, else its Hugging Face cache blob name; a file with
    none known, or a digest that is not 64 hex digits, is an IntegrityError."""
    path = os.fspath(path)
    given = [d for k, d in (sha256 or {}).items() if _names(k, path)]
    # Two keys may name one file (its path and its file name): each digest given must be compared.
    if len({d.lower() if isinstance(d, str) else d for d in given}) > 1:
        raise IntegrityError(f"{path}: sha256= gives it {len(given)} different expected digests", filename=path)
    digest = given[0] if given else None
    if digest is None:
        digest = hf_cache_digest(path)
    if digest is None:
        raise IntegrityError(f"{path}: no expected SHA-256 to verify against (give its digest: "
                             "sha256={path: digest}, or --sha256 FILE=HEX on the command line; or load it from a "
                             "Hugging Face cache snapshot)", filename=path)
    if not is_sha256(digest):
        raise IntegrityError(f"{path}: expected SHA-256 {digest!r} is not a SHA-256 digest (64 hex digits)",
                             filename=path)
    return digest.lower()


def unmatched_keys(paths: Sequence[PathLike], sha256: Mapping[PathLike, str]) -> List[str]:
    """The caller's keys that name none of ``paths`` (a typo would otherwise leave a file unchecked)."""
    return [os.fspath(k) for k in sha256 if not any(_names(k, os.fspath(p)) for p in paths)]


def expected_digests(paths: Sequence[PathLike], sha256: Optional[Mapping[PathLike, str]] = None) -> Dict[str, str]:
    """``{path: expected hex digest}`` for every file (see :func:`expected_digest`). ``sha256``, when
    given, must name at least one file and only files among ``paths``."""
    if sha256 is not None:
        if not isinstance(sha256, Mapping):  # a bare digest string would be read as a set of one-letter keys
            raise ArgumentTypeError(f"sha256= must be a mapping {{path: hexdigest}}, not {type(sha256).__name__}")
        if not sha256:
            raise InvalidArgumentError("sha256={} names no file, so it would verify nothing: pass {path: hexdigest} for "
                             "each file, or verify=True for files in a Hugging Face cache")
        unknown = unmatched_keys(paths, sha256)
        if unknown:
            raise InvalidArgumentError(f"sha256= names file(s) that are not part of this load: {', '.join(unknown)}")
    return {os.fspath(p): expected_digest(p, sha256) for p in paths}


def sha256_file(path: PathLike) -> str:
    """Hex SHA-256 of a file, streamed from disk by the engine."""
    return _cpp.sha256_file(os.fspath(path))


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


def check_loaded(plan: "LoadPlan", buffers: List["_cpp.HostBuffer"], expected: Mapping[str, str]) -> None:
    """Compares each planned file, as just loaded into ``buffers``, with its expected digest."""
    def digest(i: int) -> str:
        return _cpp.sha256_loaded_file(plan.files[i].header, plan.files[i].path, i, plan.ranges, buffers)

    n = len(plan.files)
    with ThreadPoolExecutor(max_workers=max(1, min(8, n))) as pool:
        actual = list(pool.map(digest, range(n)))
    for f, got in zip(plan.files, actual):
        _compare(f.path, expected[f.path], got)
