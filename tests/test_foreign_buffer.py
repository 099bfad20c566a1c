"""ForeignBuffer: memory a framework's array owns, exported through our DLPack views. Tested here
on host memory; the JAX GPU path uses it for arrays from JAX's own allocator."""

import gc
import sys

import numpy as np

from fastsafetensors import _cpp
from fastsafetensors._src.dtypes import NATIVE


def test_views_keep_the_owner_alive_and_share_its_memory():
    owner = np.arange(64, dtype=np.float32)
    start = sys.getrefcount(owner)
    buf = _cpp.ForeignBuffer(owner.ctypes.data, owner.nbytes, 1, 0, owner)
    assert sys.getrefcount(owner) == start + 1
    view = np.from_dlpack(buf.view(16 * 4, [4, 4], *NATIVE["F32"]))
    assert view.ctypes.data == owner.ctypes.data + 64
    np.testing.assert_array_equal(view, np.arange(16, 32, dtype=np.float32).reshape(4, 4))
    del buf
    gc.collect()
    assert sys.getrefcount(owner) == start + 1  # the view's capsule still holds the buffer
    owner[16] = -1.0
    assert view[0, 0] == -1.0
    del view
    gc.collect()
    assert sys.getrefcount(owner) == start


def test_views_outside_the_buffer_are_refused():
    owner = np.zeros(8, dtype=np.uint8)
    buf = _cpp.ForeignBuffer(owner.ctypes.data, owner.nbytes, 1, 0, owner)
    try:
        buf.view(4, [8], 1, 8)
    except ValueError as exc:
        assert "outside" in str(exc)
    else:
        raise AssertionError("a view past the end was allowed")
