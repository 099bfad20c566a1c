"""Shards that are a run per row (column shards, 2-D boxes, last-axis shards of 3-D tensors) read
by the GPU reader as a few 2D copies, run on the CPU through HostDevice: its copies run after a
delay on the stream's thread (a slot reused before its copy finished gives wrong bytes) and count
a 2D copy once. Every shard is compared byte for byte with NumPy slices of what safetensors loads."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import save_file  # noqa: E402

from fastsafetensors import _cpp, errors  # noqa: E402
from fastsafetensors._src.files import read_headers  # noqa: E402

from .test_jax_sharding import random_tensor, reference  # noqa: E402

# name -> (shape, dtype); "pad" (7 bytes) puts the others' rows at uneven offsets.
TENSORS = {
    "pad": ((7,), torch.uint8),
    "bf16": ((600, 96), torch.bfloat16),
    "u8": ((2000, 45), torch.uint8),
    "f64": ((400, 40), torch.float64),
    "cube": ((8, 100, 48), torch.bfloat16),
}
# name -> box (start, stop): columns from an uneven start, a 2-D box, the last axis of a 3-D
# tensor, and a 3-D box cut on its two inner axes (one evenly spaced run of rows per outer index).
BOXES = {
    "columns": ("bf16", (0, 13), (600, 61)),
    "u8 columns": ("u8", (0, 3), (2000, 30)),
    "f64 2-D box": ("f64", (17, 5), (390, 21)),
    "last axis": ("cube", (0, 0, 16), (8, 100, 40)),
    "two inner axes": ("cube", (0, 10, 3), (8, 81, 40)),
}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    gen = torch.Generator().manual_seed(5)
    path = tmp_path_factory.mktemp("cols") / "m.safetensors"
    save_file({n: random_tensor(shape, dt, gen) for n, (shape, dt) in TENSORS.items()}, str(path))
    files = read_headers([str(path)])
    return files, reference(path)


def _plan(files, name, start, stop):
    """The box's runs (one per row) into destination 0 at offset 0, and the box's byte size."""
    header = files[0].header
    index = [t.name for t in header.tensors].index(name)
    ranges = _cpp.RangeList()
    _cpp.plan_boxes(header, index, 0, [(list(start), list(stop), 0, 0)], ranges)
    nbytes = sum(r.length for r in ranges)
    return ranges, nbytes


def _read(reader, dev, files, ranges, nbytes, **kw):
    buf = _cpp.DeviceBuffer.allocate(dev, nbytes)
    stats = reader.read([_cpp.ReadSource(f.path, f.header) for f in files], ranges, [buf.data_ptr], [nbytes], **kw)
    return np.from_dlpack(buf.view(0, [nbytes], 1, 8)).tobytes(), stats


def _want(ref, name, start, stop):
    box = tuple(slice(a, b) for a, b in zip(start, stop))
    return np.ascontiguousarray(ref[name][box]).tobytes()


def _slot_cells(ranges, slot):
    """Staging slots (cells of the file) the runs touch, and whether a run is split between two."""
    cells = {r.file_offset // slot for r in ranges} | {(r.file_offset + r.length - 1) // slot for r in ranges}
    split = any(r.file_offset // slot != (r.file_offset + r.length - 1) // slot for r in ranges)
    return len(cells), split


@pytest.mark.parametrize("box", sorted(BOXES))
@pytest.mark.parametrize("threads", [1, 3])
def test_staged_rows_bit_exact_in_few_copies(ckpt, box, threads):
    files, ref = ckpt
    name, start, stop = BOXES[box]
    dev = _cpp.testing.HostDevice(copy_delay_us=200)
    reader = _cpp.DeviceReader(dev, threads, threads * 2 * 4096, 0)  # 4 KiB slots
    ranges, nbytes = _plan(files, name, start, stop)
    cells, split = _slot_cells(ranges, reader.slot_bytes)
    assert cells >= 3 * reader.staging_lanes * 2 and split  # each slot reused; rows cut between slots
    got, stats = _read(reader, dev, files, ranges, nbytes, use_mapping=False)
    assert got == _want(ref, name, start, stop)
    assert stats["staged_bytes"] == nbytes
    # Per slot: the row cut at its start, one 2D copy (per outer index of a 3-D box), the row cut at its end.
    outer = stop[0] - start[0] if box == "two inner axes" else 1
    assert dev.copies <= cells * (2 + outer)
    assert dev.copies * 4 < len(ranges)


@pytest.mark.parametrize("box", sorted(BOXES))
def test_mapped_rows_run_on_across_blocks(ckpt, box):
    """The page-cache path: a group of blocks is one registration, rows cut by the block grid are
    still one 2D copy on each side of the cut."""
    files, ref = ckpt
    name, start, stop = BOXES[box]
    dev = _cpp.testing.HostDevice(copy_delay_us=200)
    reader = _cpp.DeviceReader(dev, 1, 2 * 8192, 1)
    ranges, nbytes = _plan(files, name, start, stop)
    got, stats = _read(reader, dev, files, ranges, nbytes, stage_cached=False, map_group_bytes=32 << 10)
    assert got == _want(ref, name, start, stop)
    assert stats["mapped_bytes"] == nbytes and stats["cached_files"] == 1
    assert dev.copies * 4 < len(ranges)
    assert dev.live_registered_bytes == 0


@pytest.mark.parametrize("path", [{"use_mapping": False}, {"stage_cached": False, "map_group_bytes": 32 << 10}])
def test_failed_2d_copy_names_file_and_reader_recovers(ckpt, path):
    """One lane, so copies are numbered in file order: each of the first ones fails in turn."""
    files, ref = ckpt
    name, start, stop = BOXES["columns"]
    dev = _cpp.testing.HostDevice(copy_delay_us=50)
    reader = _cpp.DeviceReader(dev, 1, 2 * 8192, 1)
    ranges, nbytes = _plan(files, name, start, stop)
    failed = []
    for n in (1, 2, 3):
        dev.fail_copy_at(n)
        with pytest.raises(errors.CudaError) as info:
            _read(reader, dev, files, ranges, nbytes, **path)
        assert "injected failure" in str(info.value) and files[0].path in str(info.value)
        assert dev.live_registered_bytes == 0
        failed.append(str(info.value))
    assert any("injected failure of an asynchronous 2D copy of" in m for m in failed)
    dev.fail_copy_at(0)
    got, _ = _read(reader, dev, files, ranges, nbytes, **path)
    assert got == _want(ref, name, start, stop)
