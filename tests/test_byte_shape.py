"""One rule for the shape of a tensor's bytes (dtypes.packed_shape): raw=True loads and the tensor
parallel loader's pieces used to shape them differently (an F6 matrix was a flat run for one and
rows of bytes for the other; byte-wide dtypes gained a trailing axis of 1 in the second)."""

from __future__ import annotations

import numpy as np
import pytest

import fastsafetensors
from fastsafetensors._src.distributed import Entry, Piece
from fastsafetensors._src.dtypes import packed_shape
from fastsafetensors._src.files import read_headers

from tests.helpers import entry, write_raw


@pytest.mark.parametrize("dtype,shape,want", [
    ("F6_E2M3", (2, 4), (2, 3)),  # rows of four 6-bit values fill three bytes each
    ("F6_E3M2", (4,), (3,)),
    ("F4", (2, 4), (2, 2)),
    ("F4", (2, 3), (3,)),          # rows end inside a byte: one flat run
    ("U8", (3,), (3,)),
    ("F8_E4M3", (), ()),
    ("F16", (2,), (2, 2)),
])
def test_packed_shape(dtype, shape, want):
    assert packed_shape(dtype, shape) == want


def test_raw_load_and_tensor_parallel_pieces_agree(tmp_path):
    data = bytes(range(6)) + bytes(range(10, 13))
    path = write_raw(tmp_path / "f6.safetensors", {"m": entry("F6_E2M3", (2, 4), 0, 6), "b": entry("U8", (3,), 6, 9)},
                     data)
    out = fastsafetensors.load(path, framework="numpy", raw=True)
    assert out["m"].shape == (2, 3) and out["m"].tobytes() == data[:6]
    assert out["b"].shape == (3,) and out["b"].tobytes() == data[6:]
    (f,) = read_headers([path])
    for k, info in enumerate(f.infos):
        piece = Piece(Entry(info.name, 0, 0, f, k), -1, 0, 0)
        assert piece.byte_shape == out[info.name].shape and piece.nbytes == np.prod(piece.byte_shape)
