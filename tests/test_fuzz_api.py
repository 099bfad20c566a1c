"""Property-based fuzzing of the public API on mutated files.

Every input either loads, and then matches safetensors' own reader whenever that reader accepts
it too, or raises a fastsafetensors SafeTensorsError / ReadError: never another exception, never
a crash. The C++ parser alone is fuzzed harder by tests/fuzz (libFuzzer).
"""

from __future__ import annotations

import json
import os
import struct
import tempfile

import pytest

torch = pytest.importorskip("torch")
hypothesis = pytest.importorskip("hypothesis")
import safetensors  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import fastsafetensors  # noqa: E402
from fastsafetensors._src.files import read_file_header  # noqa: E402
from fastsafetensors import _cpp  # noqa: E402
from fastsafetensors.errors import ReadError, SafeTensorsError  # noqa: E402

ALLOWED = (SafeTensorsError, ReadError)
FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _written(tensors, metadata=None) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "x.safetensors")
        save_file(tensors, path, metadata=metadata)
        with open(path, "rb") as f:
            return f.read()


def _bases():
    g = torch.Generator().manual_seed(1)
    return [
        _written({"w": torch.randn(3, 5, generator=g), "b": torch.arange(4, dtype=torch.int64)}),
        _written({"h": torch.randn(7, generator=g).to(torch.bfloat16), "s": torch.tensor(3.0),
                  "e": torch.zeros(0, 2), "u": torch.arange(5, dtype=torch.uint8)}, metadata={"k": "v"}),
        _written({"f8": torch.randn(6, generator=g).to(torch.float8_e5m2), "z": torch.ones(2, 2, dtype=torch.float16)}),
    ]


BASES = _bases()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("fuzz"))


def _split(image: bytes):
    n = struct.unpack("<Q", image[:8])[0]
    return json.loads(image[8:8 + n]), image[8 + n:]


def _join(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def check_image(image: bytes, workdir: str) -> None:
    """The property: accepted inputs load exactly as the reference reads them; others raise typed."""
    try:
        _cpp.testing.parse_file_image(image)
    except ALLOWED:
        pass
    path = os.path.join(workdir, "m.safetensors")
    with open(path, "wb") as f:
        f.write(image)
    try:
        fastsafetensors.load(path, framework="numpy")  # typed arrays: dtype and shape limits too
    except ALLOWED:
        pass
    try:
        out = fastsafetensors.load(path, framework="numpy", raw=True)
    except ALLOWED:
        return
    try:
        ref = dict(safetensors.deserialize(image))
    except Exception:  # the reference rejects what we accepted: nothing to compare with
        return
    assert set(out) == set(ref)
    for name, arr in out.items():
        assert arr.tobytes() == bytes(ref[name]["data"]), name
        assert list(ref[name]["shape"]) == list(read_file_header(path).tensors[name].shape)


@FUZZ
@given(base=st.sampled_from(BASES), flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)),
                                                    min_size=1, max_size=6))
def test_byte_flips(workdir, base, flips):
    image = bytearray(base)
    for pos, value in flips:
        image[pos % len(image)] = value
    check_image(bytes(image), workdir)


@FUZZ
@given(base=st.sampled_from(BASES), cut=st.integers(0, 10**6), extra=st.binary(max_size=16))
def test_truncated_or_extended(workdir, base, cut, extra):
    check_image(base[:cut % (len(base) + 1)] + extra, workdir)


_NUMBERS = st.one_of(st.integers(-2, 70), st.integers(-(2**64), 2**65), st.sampled_from([2**63, 2**64 - 1, 2**32]))
_VALUES = st.one_of(_NUMBERS, st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8), st.none(),
                    st.booleans(), st.lists(_NUMBERS, max_size=70))
_FIELDS = st.sampled_from(["dtype", "shape", "data_offsets", "extra"])
_DTYPES = st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "BOOL", "F4", "F6_E2M3", "F8_E4M3", "C64", "f32", ""])


@FUZZ
@given(base=st.sampled_from(BASES), edits=st.lists(st.tuples(st.integers(0, 50), _FIELDS, st.one_of(_VALUES, _DTYPES)),
                                                    min_size=1, max_size=4), data_delta=st.integers(-3, 3))
def test_header_field_edits(workdir, base, edits, data_delta):
    """Schema-level mutations that keep the JSON well formed, to reach the layout checks."""
    header, data = _split(base)
    names = [k for k in header if k != "__metadata__"]
    for which, field, value in edits:
        entry = header[names[which % len(names)]]
        if field == "extra":
            entry["x" * (which % 3 + 1)] = value
        else:
            entry[field] = value
    data = data[:max(0, len(data) + data_delta)] if data_delta < 0 else data + b"\0" * data_delta
    check_image(_join(header, data), workdir)


@FUZZ
@given(shape=st.lists(st.integers(0, 2**64 - 1), max_size=70), dtype=_DTYPES, nbytes=st.integers(0, 40))
def test_shapes(workdir, shape, dtype, nbytes):
    """One tensor of any unsigned shape: zero-size tensors with enormous dimensions included."""
    check_image(_join({"t": {"dtype": dtype, "shape": shape, "data_offsets": [0, nbytes]}}, b"\x5a" * nbytes), workdir)


def test_negative_shape_is_typed_error(tmp_path):
    """The seed package crashed the interpreter on this one."""
    image = _join({"t": {"dtype": "F32", "shape": [-1, 4], "data_offsets": [0, 16]}}, b"\0" * 16)
    path = tmp_path / "neg.safetensors"
    path.write_bytes(image)
    with pytest.raises(SafeTensorsError, match="negative"):
        fastsafetensors.load(path)
    with pytest.raises(SafeTensorsError):
        _cpp.testing.parse_file_image(image)
