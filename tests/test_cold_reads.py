"""Cold reads (docs/usage.md, Cold reads): bytes outside the page cache are read with the shape their
device's queue limits give, the resident ones as page-cache reads, and every tensor still equals
what safetensors reads, bit for bit."""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import time

import numpy as np
import pytest

import fastsafetensors
from fastsafetensors import _cpp
from fastsafetensors.metrics import LoadMetrics
from fastsafetensors._src.files import read_file_header

from tests.helpers import assert_exact, random_tensor, save

MiB = 1 << 20
PAGE = mmap.PAGESIZE
GRANULE = MiB  # host_reader.cpp: kResidencyGranule (4 pages sampled each: cold_reads.cpp)
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]


def resident_pages(path: str) -> bytes:
    """One byte per page of the file, bit 0 set where the page cache holds it (mincore), asked
    independently of the engine."""
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        try:
            vec = (ctypes.c_ubyte * ((size + PAGE - 1) // PAGE))()
            assert _libc.mincore(addr, size, vec) == 0, os.strerror(ctypes.get_errno())
            return bytes(v & 1 for v in vec)
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)


def evict(path: str) -> None:
    os.sync()  # dirty pages are not dropped
    _cpp.testing.evict_page_cache(path)
    if any(resident_pages(path)):
        pytest.skip(f"posix_fadvise(DONTNEED) does not evict on this file system ({path})")


def make_resident(path: str, offset: int, length: int) -> None:
    """Reads [offset, offset + length) into the page cache and nothing around it (no readahead)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        for at in range(offset, offset + length, 64 << 10):
            os.pread(fd, min(64 << 10, offset + length - at), at)
    finally:
        os.close(fd)


def cold_bytes_expected(path: str, ranges) -> int:
    """Bytes of ``ranges`` (file offset, length) in 1 MiB steps of the file that are not resident,
    by the engine's rule (a step is resident when 4 pages spread over it are) computed here from
    mincore."""
    pages = resident_pages(path)
    cold = 0
    for start, length in ranges:
        at = start
        while at < start + length:
            step = at // GRANULE
            stop = min(start + length, (step + 1) * GRANULE)
            samples = range(step * GRANULE, min(len(pages) * PAGE, (step + 1) * GRANULE), GRANULE // 4)
            if not all(pages[s // PAGE] for s in samples):
                cold += stop - at
            at = stop
    return cold


def odd_checkpoint(path: str) -> str:
    """Tensors at offsets that are not 4 KiB (or even 8-byte) aligned, some longer than the cold
    request, in a file whose size is not a multiple of 4 KiB."""
    tensors = {
        "a.u8": random_tensor("U8", (4097,), seed=1),
        "b.bf16": random_tensor("BF16", (3 * MiB // 2 + 7,), seed=2),
        "c.f32": random_tensor("F32", (5, 1 << 18), seed=3),
        "d.u8": random_tensor("U8", (13,), seed=4),
        "e.f16": random_tensor("F16", (MiB + 3,), seed=5),
    }
    save(path, tensors, metadata={"pad": "x" * 5})
    assert os.path.getsize(path) % 4096 != 0
    return path


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("FASTSAFETENSORS_COLD_READS", "FASTSAFETENSORS_COLD_THREADS", "FASTSAFETENSORS_COLD_REQUEST_KB",
                 "FASTSAFETENSORS_COLD_ODIRECT", "FASTSAFETENSORS_ODIRECT"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize("direct", ["1", "0", ""])
@pytest.mark.parametrize("request_kb", ["4", "", "16384"])
def test_cold_load_equals_safetensors(tmp_path, clean_env, direct, request_kb):
    path = odd_checkpoint(str(tmp_path / "odd.safetensors"))
    clean_env.setenv("FASTSAFETENSORS_COLD_ODIRECT", direct)
    clean_env.setenv("FASTSAFETENSORS_COLD_REQUEST_KB", request_kb)
    evict(path)
    metrics = LoadMetrics()
    out = fastsafetensors.load(path, framework="torch", metrics=metrics)
    # O_DIRECT leaves the page cache as it was (but for the header read's readahead); a buffered
    # read fills it.
    resident = sum(resident_pages(path))
    assert resident < GRANULE // PAGE if direct == "1" else resident == len(resident_pages(path))  # "": buffered
    assert metrics.cold_bytes == metrics.bytes_read > 0
    assert_exact(out, path)


def test_mixed_resident_and_cold_ranges(tmp_path, clean_env):
    path = odd_checkpoint(str(tmp_path / "odd.safetensors"))
    evict(path)
    size = os.path.getsize(path)
    make_resident(path, size // 4, size // 2)  # the middle half: parts of several tensors
    header = read_file_header(path)
    start = header.header.data_start
    want_cold = cold_bytes_expected(path, [(start, header.data_bytes)])
    assert 0 < want_cold <= header.data_bytes - 3 * GRANULE
    metrics = LoadMetrics()
    out = fastsafetensors.load(path, framework="torch", metrics=metrics)
    assert_exact(out, path)
    assert metrics.cold_bytes == want_cold


def test_resident_file_reads_nothing_cold(tmp_path, clean_env):
    path = odd_checkpoint(str(tmp_path / "odd.safetensors"))
    with open(path, "rb") as f:
        f.read()
    assert all(resident_pages(path))
    metrics = LoadMetrics()
    assert_exact(fastsafetensors.load(path, framework="torch", metrics=metrics), path)
    assert metrics.cold_bytes == 0 and metrics.bytes_read > 0


def test_cold_reads_off_reads_everything_as_before(tmp_path, clean_env):
    path = odd_checkpoint(str(tmp_path / "odd.safetensors"))
    clean_env.setenv("FASTSAFETENSORS_COLD_READS", "0")
    evict(path)
    metrics = LoadMetrics()
    assert_exact(fastsafetensors.load(path, framework="torch", metrics=metrics), path)
    assert metrics.cold_bytes == 0



def test_residency_asked_only_of_the_steps_read(tmp_path, clean_env):
    """A load of a few MiB of a huge file asks about those steps, not about the whole file: staged
    layout transforms read 4 MiB at a time, and sampling a 10 GB file (40,000 mincore calls) each
    time cost more than the reads. A 1 TiB sparse file makes the difference seconds (4 * 2**20
    samples per load) against milliseconds; the tensor read is resident, the rest is not."""
    small = np.arange(MiB, dtype=np.uint8) * np.uint8(7)
    header = json.dumps({"small": {"dtype": "U8", "shape": [MiB], "data_offsets": [0, MiB]},
                         "big": {"dtype": "U8", "shape": [1 << 40], "data_offsets": [MiB, MiB + (1 << 40)]}})
    header += " " * (-len(header) % 8)
    path = str(tmp_path / "huge.safetensors")
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header.encode() + small.tobytes())
        f.truncate(8 + len(header) + MiB + (1 << 40))
    make_resident(path, 0, 2 * MiB)  # the steps the tensor touches (it ends in the second)
    start = time.monotonic()
    for _ in range(5):
        metrics = LoadMetrics()
        out = fastsafetensors.load(path, names=["small"], metrics=metrics)
        assert np.array_equal(out["small"], small) and metrics.cold_bytes == 0
    assert time.monotonic() - start < 2.0


# ---------------------------------------------------------------- the rule, from a fake sysfs tree

def fake_sysfs(root, major: int, minor: int, partition: bool = False, **queue) -> int:
    """/sys/dev/block/MAJ:MIN of a disk (or a partition of one, whose queue is its disk's)."""
    disk = root / "devices" / "disk"
    node = disk / "part1" if partition else disk
    (disk / "queue").mkdir(parents=True)
    node.mkdir(exist_ok=True)
    for name, value in queue.items():
        (disk / "queue" / name).write_text(f"{value}\n")
    (root / "dev" / "block").mkdir(parents=True)
    os.symlink(os.path.relpath(node, root / "dev" / "block"), root / "dev" / "block" / f"{major}:{minor}")
    return os.makedev(major, minor)


LIMITS = dict(rotational=0, nr_requests=1023, max_sectors_kb=128, optimal_io_size=0, logical_block_size=512)


@pytest.mark.parametrize("limits, want", [
    # NVMe: 1 MiB reads (8 device requests each), 32 requests in flight.
    ({}, (4, MiB, False)),
    # A disk: 16 requests in flight, each its largest.
    (dict(rotational=1, nr_requests=64, max_sectors_kb=1280), (16, 1280 << 10, False)),
    # ... or its queue's depth if that is less.
    (dict(rotational=1, nr_requests=8, max_sectors_kb=1280), (8, 1280 << 10, False)),
    # This project's VM disk (virtio, reported rotational).
    (dict(rotational=1, nr_requests=256, max_sectors_kb=4096), (16, 4 * MiB, False)),
    # A RAID stripe: its optimal size per read, the in-flight requests shared among fewer threads.
    (dict(max_sectors_kb=512, optimal_io_size=8 * MiB), (2, 8 * MiB, False)),
    # A shallow queue bounds what is in flight.
    (dict(nr_requests=2, max_sectors_kb=4096), (2, 4 * MiB, False)),
    # Huge requests allowed: clamped to 16 MiB, at most 128 MiB of bounce buffers in flight.
    (dict(max_sectors_kb=1 << 20), (8, 16 * MiB, False)),
    # Larger blocks: as the others (O_DIRECT, which they would refuse, is off by default anyway).
    (dict(logical_block_size=8192), (4, MiB, False)),
])
@pytest.mark.parametrize("partition", [False, True])
def test_rule_from_fake_sysfs(tmp_path, clean_env, limits, want, partition):
    dev = fake_sysfs(tmp_path, 259, 3, partition, **{**LIMITS, **limits})
    shape = _cpp.testing.cold_read_shape(dev, str(tmp_path))
    assert (shape["threads"], shape["request_bytes"], shape["direct"]) == want
    assert shape["rule"].startswith(f"{tmp_path}/dev/block/259:3/")


def test_rule_fallback_without_a_queue(tmp_path, clean_env):
    shape = _cpp.testing.cold_read_shape(os.makedev(0, 42), str(tmp_path))
    assert (shape["threads"], shape["request_bytes"], shape["direct"]) == (16, 16 * MiB, False)
    assert shape["rule"] == "fallback: no block queue for device 0:42"


def test_settings_override_the_rule(tmp_path, clean_env):
    dev = fake_sysfs(tmp_path, 8, 0, **LIMITS)
    clean_env.setenv("FASTSAFETENSORS_COLD_THREADS", "7")
    clean_env.setenv("FASTSAFETENSORS_COLD_REQUEST_KB", "256")
    clean_env.setenv("FASTSAFETENSORS_COLD_ODIRECT", "off")
    shape = _cpp.testing.cold_read_shape(dev, str(tmp_path))
    assert (shape["threads"], shape["request_bytes"], shape["direct"]) == (7, 256 << 10, False)
    assert shape["rule"].endswith("; overridden by the environment")
    clean_env.delenv("FASTSAFETENSORS_COLD_THREADS")
    clean_env.delenv("FASTSAFETENSORS_COLD_REQUEST_KB")
    assert not _cpp.testing.cold_read_shape(dev, str(tmp_path))["rule"].endswith("environment")  # off is the default


@pytest.mark.parametrize("block, want", [(512, True), (4096, True), (8192, False)])
def test_odirect_asked_for_where_the_blocks_allow_it(tmp_path, clean_env, block, want):
    dev = fake_sysfs(tmp_path, 8, 0, **{**LIMITS, "logical_block_size": block})
    clean_env.setenv("FASTSAFETENSORS_COLD_ODIRECT", "1")
    shape = _cpp.testing.cold_read_shape(dev, str(tmp_path))
    assert shape["direct"] is want
    assert shape["rule"].endswith("; overridden by the environment" + ("" if want else
                                  " (O_DIRECT refused: blocks larger than 4096 bytes)"))


def test_malformed_override_names_the_variable(tmp_path, clean_env):
    clean_env.setenv("FASTSAFETENSORS_COLD_THREADS", "many")
    with pytest.raises(fastsafetensors.errors.SettingsError, match="FASTSAFETENSORS_COLD_THREADS"):
        _cpp.testing.cold_read_shape(os.makedev(8, 0), str(tmp_path))
