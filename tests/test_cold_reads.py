"""Cold reads (docs/usage.md, Cold reads): bytes outside the page cache are read with the shape their
device's queue limits give, the resident ones as page-cache reads, and every tensor still equals
what safetensors reads, bit for bit."""

from __future__ import annotations

import ctypes
import json
import logging
import mmap
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

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
    assert metrics.cold_bytes_per_mode == {"O_DIRECT" if direct == "1" else "buffered": metrics.bytes_read}
    assert metrics.cold_fallbacks == []
    assert_exact(out, path)


@pytest.mark.parametrize("streams", ["1", "3", "64"])
def test_streams_share_the_cold_bytes(tmp_path, clean_env, caplog, streams):
    """Each stream reads its own contiguous share through descriptors of its own: one stream, a
    share cutting tensors, and more streams than reads (empty shares) all deliver every byte."""
    path = odd_checkpoint(str(tmp_path / "odd.safetensors"))
    clean_env.setenv("FASTSAFETENSORS_COLD_THREADS", streams)
    clean_env.setenv("FASTSAFETENSORS_COLD_REQUEST_KB", "64")
    caplog.set_level(logging.DEBUG, logger="fastsafetensors")
    evict(path)
    metrics = LoadMetrics()
    assert_exact(fastsafetensors.load(path, framework="torch", metrics=metrics), path)
    assert metrics.cold_bytes_per_mode == {"buffered": metrics.bytes_read}
    assert any(f": {metrics.bytes_read} bytes, {streams} streams, 65536-byte requests, buffered;" in r.getMessage()
               for r in caplog.records)


def test_streams_hold_one_descriptor_each(tmp_path, clean_env):
    """A stream keeps a descriptor only of the file it reads now: across batches every stream reads
    from every file, and one descriptor per stream per file ran out of them (streams x files; 8
    streams and 191 shards is past the usual limit of 1024). Descriptors counted between batches."""
    from fastsafetensors._src.files import read_headers
    from fastsafetensors._src.plan import plan_load

    streams, count = 4, 12
    paths = [save(str(tmp_path / f"f{i}.safetensors"), {f"t{i}": random_tensor("U8", (MiB + 3 * i,), seed=i)})
             for i in range(count)]
    for p in paths:
        evict(p)
    clean_env.setenv("FASTSAFETENSORS_COLD_THREADS", str(streams))
    clean_env.setenv("FASTSAFETENSORS_COLD_REQUEST_KB", "64")
    plan = plan_load(read_headers(paths))
    buffers = [_cpp.HostBuffer.allocate(n) for n in plan.buffer_sizes]
    base = len(os.listdir("/proc/self/fd"))
    seen = []
    stats = _cpp.HostReader(2).read(plan.sources(), plan.ranges, buffers, MiB, False, batch_bytes=MiB // 2,
                                    on_batch=lambda n: seen.append(len(os.listdir("/proc/self/fd"))),
                                    cold_reads=True)
    assert stats["cold_bytes"] == sum(r.length for r in plan.ranges) and len(seen) >= count
    assert all(c["streams"] for c in stats["cold_reads"])  # else no stream held a descriptor
    assert max(seen) - base <= count + streams, f"{max(seen) - base} descriptors open beyond the {base} before"
    for name, loc in plan.tensors.items():
        want = load_file(paths[int(name[1:])])[name].numpy().tobytes()
        assert np.from_dlpack(buffers[loc.buffer].view(loc.offset, [len(want)], 1, 8)).tobytes() == want, name


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


def test_rank_blocks_of_a_cold_file_take_the_cold_reads(tmp_path, clean_env):
    """Tensor-parallel direct reads (a rank's row and column blocks: read_pieces) of a file out of
    the page cache are read the cold way, as a whole load is, and land exactly."""
    from fastsafetensors._src.direct_read import read_pieces
    from fastsafetensors._src.distributed import Entry, Piece

    path = str(tmp_path / "tp.safetensors")
    save(path, {"w": random_tensor("BF16", (512, 3000), seed=6), "v": random_tensor("F32", (700, 900), seed=7)})
    f = read_file_header(path)
    entry = {info.name: Entry(info.name, 0, 0, f, i) for i, info in enumerate(f.infos)}
    pieces = [Piece(entry["w"], 1, 1000, 2000), Piece(entry["v"], 0, 350, 700)]
    evict(path)
    metrics = LoadMetrics()
    buffer, offsets = read_pieces(pieces, metrics=metrics)
    assert metrics.cold_bytes == metrics.bytes_read == sum(p.nbytes for p in pieces)
    want = load_file(path)
    for p, at, block in zip(pieces, offsets, (want["w"][:, 1000:2000], want["v"][350:700])):
        got = np.from_dlpack(buffer.view(at, [p.nbytes], 1, 8)).tobytes()
        assert got == block.contiguous().view(-1).view(torch.uint8).numpy().tobytes(), p.entry.name


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
    """A read of a few MiB of a huge file asks about the steps it touches, not the whole file:
    staged layout transforms read 4 MiB at a time, and sampling a 10 GB file (10,000 steps of
    1 MiB) each time cost more than the reads. A 1 TiB sparse file: 2 steps, not 2**20."""
    from fastsafetensors._src.files import read_headers
    from fastsafetensors._src.plan import plan_load

    small = np.arange(MiB, dtype=np.uint8) * np.uint8(7)
    header = json.dumps({"small": {"dtype": "U8", "shape": [MiB], "data_offsets": [0, MiB]},
                         "big": {"dtype": "U8", "shape": [1 << 40], "data_offsets": [MiB, MiB + (1 << 40)]}})
    header += " " * (-len(header) % 8)
    path = str(tmp_path / "huge.safetensors")
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header.encode() + small.tobytes())
        try:
            f.truncate(8 + len(header) + MiB + (1 << 40))
        except OSError as exc:  # EFBIG: a file system with a smaller file size limit
            pytest.skip(f"no 1 TiB sparse file here: {exc}")
    make_resident(path, 0, 2 * MiB)  # the steps the tensor touches (it ends in the second)
    plan = plan_load(read_headers([path]), ["small"])
    buffers = [_cpp.HostBuffer.allocate(n) for n in plan.buffer_sizes]
    stats = _cpp.HostReader(2).read(plan.sources(), plan.ranges, buffers, MiB, False, cold_reads=True)
    assert stats["residency_steps"] == 2 and stats["cold_bytes"] == 0
    loc = plan.tensors["small"]
    assert np.from_dlpack(buffers[loc.buffer].view(loc.offset, [MiB], 1, 8)).tobytes() == small.tobytes()
    metrics = LoadMetrics()
    out = fastsafetensors.load(path, names=["small"], metrics=metrics)
    assert np.array_equal(out["small"], small) and metrics.cold_bytes == 0


# ---------------------------------------------------------------- the rule, from a fake sysfs tree

def fake_sysfs(root, major: int, minor: int, partition: bool = False, driver: str = "sd", **queue) -> int:
    """/sys/dev/block/MAJ:MIN of a disk (or a partition of one, whose queue is its disk's) that
    `driver` drives."""
    disk = root / "devices" / "disk"
    node = disk / "part1" if partition else disk
    (disk / "queue").mkdir(parents=True)
    node.mkdir(exist_ok=True)
    (disk / "device").mkdir()
    (root / "bus" / "drivers" / driver).mkdir(parents=True)
    os.symlink(os.path.relpath(root / "bus" / "drivers" / driver, disk / "device"), disk / "device" / "driver")
    for name, value in queue.items():
        (disk / "queue" / name).write_text(f"{value}\n")
    (root / "dev" / "block").mkdir(parents=True)
    os.symlink(os.path.relpath(node, root / "dev" / "block"), root / "dev" / "block" / f"{major}:{minor}")
    return os.makedev(major, minor)


LIMITS = dict(rotational=0, nr_requests=1023, max_sectors_kb=128, optimal_io_size=0, logical_block_size=512,
              read_ahead_kb=128)


@pytest.mark.parametrize("limits, want", [
    # NVMe: 1 MiB reads (8 device requests each, more than its 256 KiB readahead window's), 32
    # requests in flight.
    ({}, (4, MiB, 4)),
    # A disk: 16 requests in flight, each its largest.
    (dict(rotational=1, nr_requests=64, max_sectors_kb=1280), (16, 1280 << 10, 16)),
    # ... or its queue's depth if that is less.
    (dict(rotational=1, nr_requests=8, max_sectors_kb=1280), (8, 1280 << 10, 8)),
    # A disk with a 16 MiB readahead window (8 MiB doubled): 4 requests a stream, so 4 streams keep
    # 16 in flight; O_DIRECT (no readahead) 16 reads in turn.
    (dict(rotational=1, nr_requests=256, max_sectors_kb=4096, read_ahead_kb=8192), (4, 4 * MiB, 16)),
    # This project's VM disk: the same limits, but virtio_blk reports every disk rotational, so it
    # counts as solid-state: 32 in flight, 8 streams or 32 O_DIRECT reads.
    (dict(rotational=1, nr_requests=256, max_sectors_kb=4096, read_ahead_kb=8192, driver="virtio_blk"),
     (8, 4 * MiB, 32)),
    # A RAID stripe: its optimal size per read, the in-flight requests shared among fewer threads.
    (dict(max_sectors_kb=512, optimal_io_size=8 * MiB), (2, 8 * MiB, 2)),
    # A shallow queue bounds what is in flight.
    (dict(nr_requests=2, max_sectors_kb=4096), (2, 4 * MiB, 2)),
    # Huge requests allowed: clamped to 16 MiB, at most 128 MiB of bounce buffers in flight.
    (dict(max_sectors_kb=1 << 20), (8, 16 * MiB, 8)),
    # Larger blocks: as the others (O_DIRECT, which they refuse, stays off: buffered streams).
    (dict(logical_block_size=8192), (4, MiB, 4)),
])
@pytest.mark.parametrize("partition", [False, True])
def test_rule_from_fake_sysfs(tmp_path, clean_env, limits, want, partition):
    dev = fake_sysfs(tmp_path, 259, 3, partition, **{**LIMITS, **limits})
    streams, request, direct_threads = want
    shape = _cpp.testing.cold_read_shape(dev, str(tmp_path))
    assert (shape["threads"], shape["request_bytes"], shape["direct"], shape["streams"]) == (streams, request, False,
                                                                                           True)
    kind = ("rotational as virtio_blk reports every disk, taken as solid-state," if "driver" in limits
            else "rotational," if limits.get("rotational") else "solid-state,")
    assert shape["rule"].startswith(f"{tmp_path}/dev/block/259:3/")
    assert shape["rule"].split("queue: ")[1].startswith(kind)
    clean_env.setenv("FASTSAFETENSORS_COLD_ODIRECT", "1")
    shape = _cpp.testing.cold_read_shape(dev, str(tmp_path))
    direct = limits.get("logical_block_size", 512) <= 4096
    assert (shape["threads"], shape["request_bytes"], shape["direct"], shape["streams"]) == (
        direct_threads if direct else streams, request, direct, not direct)


def test_rule_fallback_without_a_queue(tmp_path, clean_env):
    shape = _cpp.testing.cold_read_shape(os.makedev(0, 42), str(tmp_path))
    assert (shape["threads"], shape["request_bytes"], shape["direct"], shape["streams"]) == (16, 16 * MiB, False, False)
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
    assert (shape["direct"], shape["direct_asked"]) == (want, True)
    assert shape["rule"].endswith("; overridden by the environment")
    assert shape["direct_refusal"] == ("" if want else "its logical block size is 8192 bytes, larger than the "
                                       "4096-byte alignment of the O_DIRECT bounce buffers")


def test_malformed_override_names_the_variable(tmp_path, clean_env):
    clean_env.setenv("FASTSAFETENSORS_COLD_THREADS", "many")
    with pytest.raises(fastsafetensors.errors.SettingsError, match="FASTSAFETENSORS_COLD_THREADS"):
        _cpp.testing.cold_read_shape(os.makedev(8, 0), str(tmp_path))


# ---------------------------------------------------------------- nothing silent: O_DIRECT asked, not used

@pytest.fixture
def fake_root():
    """Loads read queue limits from the test's tree (set_sysfs_root), /sys again afterwards."""
    try:
        yield _cpp.testing.set_sysfs_root
    finally:
        _cpp.testing.set_sysfs_root("")


@pytest.fixture
def refuse_odirect():
    """Every open with O_DIRECT fails with EINVAL, as on a file system without it. tmpfs would be
    the natural one, but it has O_DIRECT since Linux 6.6, and its files are always resident: never
    read cold."""
    _cpp.testing.refuse_odirect()
    try:
        yield
    finally:
        _cpp.testing.clear_faults()


def cold_load(path: str, caplog, level=logging.WARNING):
    caplog.set_level(level, logger="fastsafetensors")
    evict(path)
    metrics = LoadMetrics()
    out = fastsafetensors.load(path, framework="torch", metrics=metrics)
    assert_exact(out, path)
    assert metrics.cold_bytes == metrics.bytes_read > 0
    return metrics


def device_of(path: str) -> str:
    st = os.stat(path)
    return f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"


def only_warning(caplog) -> str:
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    return warnings[0]


def test_file_system_refusing_odirect_is_reported(tmp_path, clean_env, caplog, refuse_odirect):
    path = odd_checkpoint(str(tmp_path / "odd.safetensors"))
    clean_env.setenv("FASTSAFETENSORS_COLD_ODIRECT", "1")
    metrics = cold_load(path, caplog)
    warning = only_warning(caplog)
    assert warning == (f"{path} (device {device_of(path)}): FASTSAFETENSORS_COLD_ODIRECT=1 asks for O_DIRECT, but "
                       f"its file system refuses O_DIRECT (opening {path} with it: EINVAL): its "
                       f"{metrics.bytes_read} cold bytes were read through the page cache instead")
    assert metrics.cold_fallbacks == [warning]
    assert metrics.cold_bytes_per_mode == {"buffered": metrics.bytes_read}
    assert all(resident_pages(path))  # read buffered indeed
    assert "GB cold buffered" in metrics.summary()


def test_device_blocks_refusing_odirect_are_reported(tmp_path, clean_env, caplog, fake_root):
    path = odd_checkpoint(str(tmp_path / "odd.safetensors"))
    major, minor = map(int, device_of(path).split(":"))
    fake_sysfs(tmp_path / "sys", major, minor, **{**LIMITS, "logical_block_size": 8192})
    fake_root(str(tmp_path / "sys"))
    clean_env.setenv("FASTSAFETENSORS_COLD_ODIRECT", "1")
    metrics = cold_load(path, caplog)
    warning = only_warning(caplog)
    assert warning == (f"{path} (device {major}:{minor}): FASTSAFETENSORS_COLD_ODIRECT=1 asks for O_DIRECT, but its "
                       "logical block size is 8192 bytes, larger than the 4096-byte alignment of the O_DIRECT bounce "
                       f"buffers: its {metrics.bytes_read} cold bytes were read through the page cache instead")
    assert metrics.cold_fallbacks == [warning]
    assert metrics.cold_bytes_per_mode == {"buffered": metrics.bytes_read}
    assert all(resident_pages(path))


def test_cold_shape_is_logged_at_debug(tmp_path, clean_env, caplog, fake_root):
    path = odd_checkpoint(str(tmp_path / "odd.safetensors"))
    major, minor = map(int, device_of(path).split(":"))
    fake_sysfs(tmp_path / "sys", major, minor, **{**LIMITS, "nr_requests": 8, "max_sectors_kb": 512})
    fake_root(str(tmp_path / "sys"))
    metrics = cold_load(path, caplog, logging.DEBUG)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert metrics.cold_fallbacks == [] and metrics.cold_bytes_per_mode == {"buffered": metrics.bytes_read}
    rule = (f"{tmp_path}/sys/dev/block/{major}:{minor}/queue: solid-state, nr_requests 8, max_sectors_kb 512, "
            "optimal_io_size 0, logical_block_size 512, read_ahead_kb 128")
    assert (f"cold reads of {path} (device {major}:{minor}): {metrics.bytes_read} bytes, 4 streams, "
            f"{MiB}-byte requests, buffered; rule: {rule}") in [r.getMessage() for r in caplog.records]
