"""Fault injection: every I/O or memory failure is a typed error naming file and offset, hands
back nothing, leaks nothing, and the next load is exact. Faults enter through the engine's pread
hook and allocation hook (fastsafetensors._cpp.testing)."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("torch")

import fastsafetensors  # noqa: E402
from fastsafetensors import _cpp  # noqa: E402
from fastsafetensors._src.api import load_files  # noqa: E402
from fastsafetensors.errors import FileChangedError, IntegrityError, ReadError, TruncatedFileError  # noqa: E402
from fastsafetensors._src.files import read_headers  # noqa: E402
from fastsafetensors.integrity import sha256_file  # noqa: E402

from ._hardening import Resources, assert_exact, assert_released, make_checkpoint  # noqa: E402

faults = _cpp.testing


@pytest.fixture
def ckpt(tmp_path):
    paths = make_checkpoint(tmp_path, files=2)
    assert_exact(fastsafetensors.load(paths), paths)  # warms up the reader's threads
    yield paths
    faults.clear_faults()


def _assert_clean_failure(exc_info, paths, before: Resources) -> None:
    """The error names a file and an offset, and the failed load kept nothing alive (checked
    while the exception, and its traceback, are still referenced)."""
    exc = exc_info.value
    assert exc.filename in paths
    assert isinstance(exc.offset, int) and exc.offset >= 0
    assert exc.filename in str(exc) and str(exc.offset) in str(exc)
    assert_released(before)


def _assert_next_load_exact(paths) -> None:
    faults.clear_faults()
    assert_exact(fastsafetensors.load(paths), paths)


@pytest.mark.parametrize("count", [1, -1])
def test_eio_is_read_error(ckpt, count):
    files = read_headers(ckpt)
    before = Resources.now()
    faults.set_fault("eio", after_calls=1, count=count)
    with pytest.raises(ReadError) as ei:
        load_files(files)
    assert not isinstance(ei.value, TruncatedFileError)
    assert "Input/output error" in str(ei.value)
    assert faults.faults_injected() >= 1
    _assert_clean_failure(ei, ckpt, before)
    _assert_next_load_exact(ckpt)


def test_eintr_is_retried(ckpt):
    files = read_headers(ckpt)
    faults.set_fault("eintr", after_calls=0, count=40)
    out = load_files(files)
    assert faults.faults_injected() == 40
    assert_exact(out, ckpt)


def test_short_reads_are_continued(ckpt):
    files = read_headers(ckpt)
    faults.set_fault("short", after_calls=0, count=-1)  # every pread returns half what was asked
    out = load_files(files, threads=3, direct_io=False)
    assert faults.faults_injected() > 8 * len(ckpt)
    assert_exact(out, ckpt)


def _reads_per_load(files) -> int:
    """How many reads a clean load of `files` makes (a fault that never fires counts them)."""
    faults.set_fault("eof", after_calls=1 << 62, count=1)
    load_files(files)
    return faults.pread_calls()


@pytest.mark.parametrize("which", ["first", "second", "last"])
def test_early_eof_is_truncation(ckpt, which):
    files = read_headers(ckpt)
    reads = _reads_per_load(files)
    assert reads >= len(files)
    after = {"first": 0, "second": 1, "last": reads - 1}[which]
    before = Resources.now()
    faults.set_fault("eof", after_calls=after, count=1)
    with pytest.raises(TruncatedFileError) as ei:
        load_files(files)
    assert "file ended at offset" in str(ei.value)
    _assert_clean_failure(ei, ckpt, before)
    _assert_next_load_exact(ckpt)


def test_header_read_faults(ckpt):
    faults.set_fault("eio", after_calls=0, count=1)
    with pytest.raises(ReadError) as ei:
        fastsafetensors.load(ckpt[0])
    assert ei.value.filename == ckpt[0]
    faults.set_fault("eof", after_calls=1, count=1)  # the JSON after the length prefix is cut
    with pytest.raises(TruncatedFileError):
        fastsafetensors.load(ckpt[0])
    _assert_next_load_exact(ckpt)


def test_truncated_between_header_and_data(ckpt):
    files = read_headers(ckpt)
    size = os.path.getsize(ckpt[1])
    os.truncate(ckpt[1], size - 100)
    before = Resources.now()
    with pytest.raises(TruncatedFileError) as ei:
        load_files(files)
    assert ei.value.offset == size - 100
    assert "changed after its header was read" in str(ei.value)
    _assert_clean_failure(ei, ckpt, before)
    make_checkpoint(os.path.dirname(ckpt[0]), files=2)  # the same content again
    _assert_next_load_exact(ckpt)


def test_replaced_between_header_and_data(ckpt, tmp_path):
    files = read_headers(ckpt)
    os.makedirs(tmp_path / "other")
    other = make_checkpoint(tmp_path / "other", files=1, seed=5, scale=2)
    os.replace(other[0], ckpt[0])  # a different, larger file under the same name
    before = Resources.now()
    with pytest.raises(TruncatedFileError) as ei:
        load_files(files)
    assert ei.value.filename == ckpt[0]
    _assert_clean_failure(ei, ckpt, before)


def test_same_size_replacement_refused(ckpt, tmp_path):
    """A same-size file renamed over the path is invisible to size checks; its identity is not."""
    files = read_headers(ckpt)
    data = bytearray(open(ckpt[0], "rb").read())
    data[-1] ^= 0xFF  # one bit pattern of the last tensor changes, nothing else
    tmp = tmp_path / "new"
    tmp.write_bytes(bytes(data))
    os.replace(tmp, ckpt[0])
    before = Resources.now()
    with pytest.raises(FileChangedError, match="replaced or modified after its header was read") as ei:
        load_files(files)
    assert ei.value.filename == ckpt[0]
    assert_released(before)


def test_bytes_changed_while_read_caught_by_verify(ckpt):
    """Bytes rewritten in place while they are read (the `flip` fault: the first byte a read delivers
    is inverted, as a writer racing the read leaves it) pass every identity check (the limit
    docs/security.md states); verify=True still catches them."""
    digests = {p: sha256_file(p) for p in ckpt}
    files = read_headers(ckpt)
    before = Resources.now()
    faults.set_fault("flip", after_calls=0, count=1)
    with pytest.raises(IntegrityError) as ei:
        load_files(files, verify=True, sha256=digests)
    assert faults.faults_injected() == 1
    assert ei.value.filename in ckpt and ei.value.expected == digests[ei.value.filename]
    assert_released(before)


def test_allocation_failure(ckpt):
    files = read_headers(ckpt)
    before = Resources.now()
    faults.fail_allocations(after=1, count=1)  # the first file's buffer succeeds, the second's fails
    with pytest.raises(MemoryError) as ei:
        load_files(files)
    assert ckpt[1] in str(ei.value) and "bytes of host memory" in str(ei.value)
    assert_released(before)
    _assert_next_load_exact(ckpt)


@pytest.mark.parametrize("huge_pages", [True, False])
def test_impossible_allocation_sizes(huge_pages):
    before = _cpp.testing.host_live_bytes()
    for size in (2**62, 2**64 - 1, 2**64 - 4096):
        with pytest.raises(MemoryError):
            _cpp.HostBuffer.allocate(size, huge_pages=huge_pages)
    assert _cpp.testing.host_live_bytes() == before


def test_unknown_fault_kind():
    with pytest.raises(ValueError, match="unknown pread fault"):
        faults.set_fault("enospc")
