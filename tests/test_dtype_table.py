"""One dtype table: the engine's FST_DTYPES (csrc/fastsafetensors/dtype.hpp). The Python tables are
built from it, and the public DType enum, spelled out for type checkers, must list the same dtypes."""

from __future__ import annotations

import numpy as np
import pytest

from fastsafetensors import _cpp
from fastsafetensors._src.dtypes import BITS, NATIVE, RAW_BYTES, TYPE_NAMES
from fastsafetensors._src.frameworks.numpy import NUMPY_DTYPES
from fastsafetensors.st_types import DType, to_dtype

TABLE = _cpp.dtype_table()


def test_dtype_enum_lists_the_engines_dtypes_in_order():
    assert [d.value for d in DType if d is not DType.AUTO] == [name for name, _, _ in TABLE]


def test_python_tables_come_from_the_engines():
    assert BITS == {name: bits for name, bits, _ in TABLE}
    assert NATIVE == {name: (code, bits) for name, bits, code in TABLE if code is not None}
    assert set(TYPE_NAMES) <= set(BITS) and RAW_BYTES == NATIVE["U8"]
    # the packed and fp8 types travel as bytes; every DLPack consumer knows the rest
    assert {name for name, _, code in TABLE if code is None} == {
        "F8_E5M2", "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "F4", "F6_E2M3", "F6_E3M2"}


@pytest.mark.parametrize("name", sorted(NATIVE))
def test_native_codes_are_what_numpy_reads(name):
    """A native export's (code, bits) is the type NumPy (with ml_dtypes) calls by the dtype's name."""
    code, bits = NATIVE[name]
    kind = np.dtype(NUMPY_DTYPES[name])
    assert kind.itemsize * 8 == bits
    expected = {"b": 6, "i": 0, "u": 1, "c": 5}.get(kind.kind, 4 if name == "BF16" else 2)
    assert code == expected


def test_framework_names_map_back_to_their_dtype():
    for st, name in TYPE_NAMES.items():
        assert to_dtype(name) is DType(st)
