"""Vectored reads: short runs that follow each other in a file (the rows of column shards) are read
by one preadv whose pieces land in their own destinations. Checked against the bytes the
reference reader gives, with the engine's own counts of reads and dropped gap bytes."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from fastsafetensors import _cpp
from fastsafetensors.errors import TruncatedFileError
from fastsafetensors._src.files import read_headers
from fastsafetensors.frameworks import get_framework

IOV_MAX = 1024  # Linux: the most pieces one preadv takes
ALIGN = _cpp.TENSOR_ALIGNMENT
faults = _cpp.testing


@pytest.fixture(scope="module")
def weight(tmp_path_factory):
    """A (256, 96) bf16 weight between two other tensors, written by safetensors."""
    path = str(tmp_path_factory.mktemp("vec") / "w.safetensors")
    g = torch.Generator().manual_seed(7)
    save_file({"a": torch.randn(33, generator=g), "w": torch.randn(256, 96, generator=g).to(torch.bfloat16),
               "z": torch.randn(5, 7, generator=g)}, path)
    ref = load_file(path)["w"].view(torch.int16).numpy()
    return path, ref


def _column_targets(cols, ways, rows, columns=96):
    """(start, stop, dst, dst_offset) of column shards `cols` of `ways`, packed into buffer 0."""
    width = columns // ways
    out, at = [], 0
    for c in cols:
        out.append(([0, c * width], [rows, (c + 1) * width], 0, at))
        at += -(-rows * width * 2 // ALIGN) * ALIGN
    return out, at


def _index(f, name: str) -> int:
    return [i.name for i in f.infos].index(name)


def _plan(path, cols, ways=8, rows=256, columns=96):
    f = read_headers([path])[0]
    targets, size = _column_targets(cols, ways, rows, columns)
    ranges = _cpp.RangeList()
    _cpp.plan_boxes(f.header, _index(f, "w"), 0, targets, ranges)
    return f, targets, ranges, size


def _read(path, ranges, size, buffers=None, **kw):
    buffers = buffers or [_cpp.HostBuffer.allocate(size)]
    stats = _cpp.HostReader(2).read([_cpp.ReadSource(path, os.path.getsize(path))], ranges, buffers, **kw)
    return buffers, stats


def _slot(buf, offset, rows, width) -> np.ndarray:
    return get_framework("numpy").from_buffer(buf, offset, "I16", (rows, width))


def _assert_columns(buf, targets, ref, rows=256):
    """The first `rows` rows of each column shard in its slot (slots are laid out for the whole box)."""
    for start, stop, _, offset in targets:
        want = ref[:rows, start[1]:stop[1]]
        np.testing.assert_array_equal(_slot(buf, offset, rows, want.shape[1]), want)


def _counts(stats):
    return {k: stats[k] for k in ("bytes", "reads", "gap_bytes")}


def test_plan_boxes_is_every_run_in_file_order(weight):
    path, _ = weight
    f, targets, ranges, _ = _plan(path, range(8))
    offsets = [r.file_offset for r in ranges]
    assert offsets == sorted(offsets)
    one_by_one = set()
    for start, stop, dst, at in targets:
        one_by_one |= {(r.file_offset, r.length, r.dst_offset)
                       for r in _cpp.plan_box(f.header, _index(f, "w"), start, stop, 0, dst, at)}
    assert {(r.file_offset, r.length, r.dst_offset) for r in ranges} == one_by_one
    assert len(ranges) == 8 * 256


def test_column_shards_land_in_their_slots_with_few_reads(weight):
    path, ref = weight
    _, targets, ranges, size = _plan(path, range(8))
    (buf,), stats = _read(path, ranges, size)
    _assert_columns(buf, targets, ref)
    # The runs touch: one preadv per IOV_MAX pieces, not one per run.
    assert _counts(stats) == {"bytes": ref.nbytes, "reads": math.ceil(len(ranges) / IOV_MAX), "gap_bytes": 0}
    assert stats["bytes_per_file"] == [ref.nbytes]


def test_column_shard_destinations_are_faulted_in_before_the_copy(tmp_path):
    """Each shard's runs continue each other in memory row after row, so one vectored read holds
    one destination span per shard, long enough to populate (MADV_POPULATE_WRITE) in one call."""
    path = str(tmp_path / "wide.safetensors")
    save_file({"w": torch.randn(512, 2048, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)}, path)
    ref = load_file(path)["w"].view(torch.int16).numpy()
    _, targets, ranges, size = _plan(path, range(8), rows=512, columns=2048)
    (buf,), stats = _read(path, ranges, size)
    _assert_columns(buf, targets, ref, rows=512)
    assert stats["reads"] == math.ceil(len(ranges) / IOV_MAX) > 1
    assert stats["populated"] == stats["bytes"] == ref.nbytes


def test_gaps_are_read_and_dropped_up_to_max_gap(weight):
    path, ref = weight
    _, targets, ranges, size = _plan(path, [0, 2, 4, 6], rows=32)  # every other column shard
    (buf,), stats = _read(path, ranges, size)
    _assert_columns(buf, targets, ref, rows=32)
    first, last = ranges[0], ranges[len(ranges) - 1]
    span = last.file_offset + last.length - first.file_offset
    wanted = sum(r.length for r in ranges)
    assert _counts(stats) == {"bytes": wanted, "reads": 1, "gap_bytes": span - wanted}
    (buf,), stats = _read(path, ranges, size, max_gap=0)
    _assert_columns(buf, targets, ref, rows=32)
    assert _counts(stats) == {"bytes": wanted, "reads": len(ranges), "gap_bytes": 0}


def test_any_order_overlaps_and_empty_ranges(weight):
    path, ref = weight
    _, targets, ranges, size = _plan(path, range(8))
    shuffled = _cpp.RangeList(list(ranges)[::-1])
    # The same bytes again, into a second buffer, and empty ranges in between.
    for r in list(ranges)[:40]:
        shuffled.append(_cpp.ReadRange(r.file, 1, r.file_offset, r.length, r.dst_offset))
        shuffled.append(_cpp.ReadRange(r.file, 1, r.file_offset + 1, 0, 0))
    bufs, stats = _read(path, shuffled, size, buffers=[_cpp.HostBuffer.allocate(size), _cpp.HostBuffer.allocate(size)])
    _assert_columns(bufs[0], targets, ref)
    _assert_columns(bufs[1], targets, ref, rows=5)  # the first 40 runs: 5 rows of the 8 shards
    assert stats["bytes"] == ref.nbytes + sum(r.length for r in list(ranges)[:40])
    # Overlapping ranges go to separate reads (at most two more per duplicate); the rest are grouped.
    assert stats["reads"] <= math.ceil(len(ranges) / IOV_MAX) + 2 * 40 < len(shuffled) // 10


def test_direct_io_copies_each_piece_out(weight, tmp_path):
    path, ref = weight
    _, targets, ranges, size = _plan(path, range(8))
    try:
        (buf,), _ = _read(path, ranges, size, direct=True)
    except Exception as exc:  # a file system without O_DIRECT
        if "Invalid argument" not in str(exc):
            raise
        pytest.skip(f"O_DIRECT refused here: {exc}")
    _assert_columns(buf, targets, ref)


def test_short_reads_inside_pieces_are_continued(weight):
    path, ref = weight
    _, targets, ranges, size = _plan(path, range(8))
    faults.set_fault("short", after_calls=0, count=-1)  # every call delivers half, mid-piece
    try:
        (buf,), _ = _read(path, ranges, size)
        assert faults.faults_injected() > 2 * math.ceil(len(ranges) / IOV_MAX)
    finally:
        faults.clear_faults()
    _assert_columns(buf, targets, ref)


def test_end_of_file_inside_a_vectored_read(weight):
    path, _ = weight
    _, _, ranges, size = _plan(path, range(8))
    faults.set_fault("eof", after_calls=1, count=1)
    try:
        with pytest.raises(TruncatedFileError) as ei:
            _read(path, ranges, size)
    finally:
        faults.clear_faults()
    assert ei.value.filename == path and "file ended at offset" in str(ei.value)
    assert ranges[0].file_offset <= ei.value.offset < os.path.getsize(path)
