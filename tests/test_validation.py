"""Every validation rule of the format (docs: shared/reference/format.md), one malformed image each.

Each image is checked three ways: through ``read_file_header`` (the message names the file),
through ``load`` (same error before any data is read) and through ``_cpp.testing.parse_file_image``
(the in-memory parser). The reference reader must reject the same image, except where our
reader is stricter on purpose (duplicate names).
"""

from __future__ import annotations

import json
import os
import random
import struct

import pytest
import torch
from safetensors import deserialize, safe_open
from safetensors.torch import save

from fastsafetensors import _cpp, errors, load
from fastsafetensors._src.files import read_file_header

from .helpers import entry, write_raw

E = errors
F32x2 = entry("F32", [2], 0, 8)

# id -> (header, data, header length override, error class, tensor the message names, reference
# reader's message fragment or None where the reference accepts the image).
CASES = {
    "header_too_small_empty": (None, b"", None, E.HeaderTooSmall, None, "header too small"),
    "header_too_small_5_bytes": (None, b"\x02\x00\x00\x00\x00", None, E.HeaderTooSmall, None, "header too small"),
    "header_too_large": ("{}", b"", 100_000_001, E.HeaderTooLarge, None, "header too large"),
    "header_length_past_eof": ("{}", b"", 64, E.InvalidHeaderLength, None, "invalid header length"),
    "invalid_utf8": (b'{"a\xff":' + b'{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"\x00", None,
                     E.InvalidHeader, None, "utf"),
    "invalid_utf8_overlong": (b'{"\xc0\xaf":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"\x00", None,
                              E.InvalidHeader, None, "utf"),
    "not_json": ("hello world", b"", None, E.InvalidHeaderDeserialization, None, "invalid json"),
    "root_array": ("[]", b"", None, E.InvalidHeaderDeserialization, None, "invalid json"),
    "root_string": ('"x"', b"", None, E.InvalidHeaderDeserialization, None, "invalid json"),
    "unknown_dtype": ({"w": entry("F7", [2], 0, 8)}, bytes(8), None, E.InvalidHeaderDeserialization, "w",
                      "invalid json"),
    "lowercase_dtype": ({"w": entry("f32", [2], 0, 8)}, bytes(8), None, E.InvalidHeaderDeserialization, "w",
                        "invalid json"),
    "negative_shape": ({"w": entry("F32", [-2], 0, 8)}, bytes(8), None, E.InvalidHeaderDeserialization, "w",
                       "invalid json"),
    "float_shape": ({"w": entry("F32", [2.0], 0, 8)}, bytes(8), None, E.InvalidHeaderDeserialization, "w",
                    "invalid json"),
    "string_shape": ({"w": entry("F32", ["2"], 0, 8)}, bytes(8), None, E.InvalidHeaderDeserialization, "w",
                     "invalid json"),
    "offsets_one_value": ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8]}}, bytes(8), None,
                          E.InvalidHeaderDeserialization, "w", "invalid json"),
    "offsets_three_values": ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8, 8]}}, bytes(8), None,
                             E.InvalidHeaderDeserialization, "w", "invalid json"),
    "offsets_negative": ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}}, bytes(8), None,
                         E.InvalidHeaderDeserialization, "w", "invalid json"),
    "missing_dtype": ({"w": {"shape": [2], "data_offsets": [0, 8]}}, bytes(8), None,
                      E.InvalidHeaderDeserialization, "w", "invalid json"),
    "metadata_int_value": ({"__metadata__": {"a": 1}}, b"", None, E.InvalidHeaderDeserialization, None,
                           "invalid json"),
    "metadata_nested": ({"__metadata__": {"a": {"b": "c"}}}, b"", None, E.InvalidHeaderDeserialization, None,
                        "invalid json"),
    "metadata_list": ({"__metadata__": ["a"]}, b"", None, E.InvalidHeaderDeserialization, None, "invalid json"),
    "bom": (b"\xef\xbb\xbf{}", b"", None, E.InvalidHeaderDeserialization, None, "invalid json"),
    "nul_padding": (b"{}\x00\x00\x00\x00\x00\x00", b"", None, E.InvalidHeaderDeserialization, None, "invalid json"),
    "trailing_garbage": ("{} x", b"", None, E.InvalidHeaderDeserialization, None, "invalid json"),
    "two_objects": ("{}{}", b"", None, E.InvalidHeaderDeserialization, None, "invalid json"),
    "offset_gap": ({"a": entry("F32", [1], 0, 4), "b": entry("F32", [1], 8, 12)}, bytes(12), None,
                   E.InvalidOffset, "b", "invalid offset"),
    "offset_overlap": ({"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 4, 12)}, bytes(12), None,
                       E.InvalidOffset, "b", "invalid offset"),
    "offset_shared": ({"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 0, 8)}, bytes(8), None,
                      E.InvalidOffset, "b", "invalid offset"),
    "offset_begin_after_end": ({"a": entry("F32", [1], 0, 4), "b": entry("U8", [0], 4, 2)}, bytes(4), None,
                               E.InvalidOffset, "b", "invalid offset"),
    "offset_not_from_zero": ({"w": entry("F32", [1], 4, 8)}, bytes(8), None, E.InvalidOffset, "w",
                             "invalid offset"),
    "overflow_shape": ({"w": entry("F32", [2**32, 2**32], 0, 0)}, b"", None, E.ValidationOverflow, "w", ""),
    "overflow_bits": ({"w": entry("F64", [2**60], 0, 0)}, b"", None, E.ValidationOverflow, "w", ""),
    "misaligned_f4": ({"w": entry("F4", [3], 0, 2)}, bytes(2), None, E.MisalignedSlice, "w", ""),
    "misaligned_f6": ({"w": entry("F6_E2M3", [2], 0, 2)}, bytes(2), None, E.MisalignedSlice, "w", ""),
    "tensor_invalid_info": ({"w": entry("F32", [3], 0, 8)}, bytes(8), None, E.TensorInvalidInfo, "w",
                            "invalid shape, data type, or offset"),
    "missing_bytes": ({"w": entry("F32", [2], 0, 8)}, bytes(5), None, E.MetadataIncompleteBuffer, None,
                      "incomplete metadata"),
    "extra_bytes": ({"w": entry("F32", [2], 0, 8)}, bytes(12), None, E.MetadataIncompleteBuffer, None,
                    "incomplete metadata"),
    "extra_bytes_empty_header": ({}, bytes(1), None, E.MetadataIncompleteBuffer, None, "incomplete metadata"),
    # Both entries valid on their own: the reference silently keeps the last one.
    "duplicate_tensor_name": ('{"w":' + '{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"w":'
                              '{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', bytes(1), None,
                              E.DuplicateTensorName, "w", None),
}


def _image_file(tmp_path, case_id) -> str:
    header, data, length, *_ = CASES[case_id]
    path = tmp_path / f"{case_id}.safetensors"
    if header is None:  # a file too short to hold the length prefix
        path.write_bytes(data)
        return str(path)
    return write_raw(path, header, data, length=length)


def _check(exc_info, cls, tensor, filename=None):
    exc = exc_info.value
    assert type(exc) is cls, f"{type(exc).__name__}: {exc}"
    assert isinstance(exc, ValueError) and isinstance(exc, E.SafeTensorsError)
    if filename is not None:
        assert filename in str(exc)
        assert exc.filename == filename
    if tensor is not None:
        assert f"`{tensor}`" in str(exc)
        assert exc.tensor == tensor


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_read_file_header_rejects(tmp_path, case_id):
    cls, tensor = CASES[case_id][3:5]
    path = _image_file(tmp_path, case_id)
    with pytest.raises(cls) as exc_info:
        read_file_header(path)
    _check(exc_info, cls, tensor, filename=path)


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_engine_error_carries_the_path(tmp_path, case_id):
    """The engine itself sets ``filename`` (nothing in Python patches it in), with the same message."""
    cls, tensor = CASES[case_id][3:5]
    path = _image_file(tmp_path, case_id)
    with pytest.raises(cls) as exc_info:
        _cpp.read_header(path)
    _check(exc_info, cls, tensor, filename=path)
    assert str(exc_info.value) == str(pytest.raises(cls, read_file_header, path).value)


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_load_rejects(tmp_path, case_id):
    cls, tensor = CASES[case_id][3:5]
    path = _image_file(tmp_path, case_id)
    with pytest.raises(cls) as exc_info:
        load(path, framework="numpy")
    _check(exc_info, cls, tensor, filename=path)


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_parse_file_image_rejects(tmp_path, case_id):
    cls, tensor = CASES[case_id][3:5]
    image = open(_image_file(tmp_path, case_id), "rb").read()
    with pytest.raises(cls) as exc_info:
        _cpp.testing.parse_file_image(image)
    _check(exc_info, cls, tensor)


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_reference_reader_agrees(tmp_path, case_id):
    """The reference rejects the same images (and with the same words), so the cases are real."""
    fragment = CASES[case_id][5]
    path = _image_file(tmp_path, case_id)
    if fragment is None:  # we are stricter than the reference here
        with safe_open(path, "numpy") as f:
            assert len(list(f.keys())) == 1
        return
    with pytest.raises(Exception) as exc_info:
        with safe_open(path, "numpy") as f:
            list(f.keys())
    assert fragment in str(exc_info.value).lower()
    ours = pytest.raises(E.SafeTensorsError, read_file_header, path).value
    assert fragment in str(ours).lower()


@pytest.mark.parametrize("text", [" \t\n\r{}", "{} \n\t\r ", "\n{\n}\n", "{}" + " " * 6])
def test_whitespace_around_json_is_valid(tmp_path, text):
    path = write_raw(tmp_path / "ws.safetensors", text)
    assert read_file_header(path).tensors == {}
    assert load(path, framework="numpy") == {}
    assert len(_cpp.testing.parse_file_image(open(path, "rb").read()).tensors) == 0


def test_whitespace_inside_json_with_tensor(tmp_path):
    header = ' {\n "w" : { "dtype" : "U8" , "shape" : [ 3 ] , "data_offsets" : [ 0 , 3 ] }\t}\r\n'
    path = write_raw(tmp_path / "ws.safetensors", header, b"abc")
    assert load(path, framework="numpy")["w"].tobytes() == b"abc"


def test_header_exactly_at_limit_is_not_too_large(tmp_path):
    # N == 100,000,000 passes check 2 and then fails check 3 (the file is shorter).
    path = write_raw(tmp_path / "limit.safetensors", "{}", length=100_000_000)
    with pytest.raises(E.InvalidHeaderLength):
        read_file_header(path)


def test_header_length_overflow(tmp_path):
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", 2**64 - 1) + b"{}")
    with pytest.raises(E.HeaderTooLarge):
        read_file_header(path)


def test_missing_file_raises_read_error(tmp_path):
    path = str(tmp_path / "absent.safetensors")
    for call in (lambda: read_file_header(path), lambda: load(path, framework="numpy")):
        with pytest.raises(E.ReadError) as exc_info:
            call()
        assert path in str(exc_info.value)
        assert exc_info.value.filename == path
        assert isinstance(exc_info.value, OSError)


@pytest.mark.parametrize("bad", [42, None, b"model.safetensors"])
def test_a_checkpoint_that_is_not_a_path_says_so(bad):
    # 42 and None used to fail deep inside with "'int' object is not iterable".
    with pytest.raises(TypeError, match=r"a checkpoint is a path \(str or os.PathLike\) or a list of paths, "
                                        rf"not {type(bad).__name__}$"):
        load(bad)


def test_extra_fields_in_entries_are_ignored(tmp_path):
    header = ('{"w":{"dtype":"U8","extra":{"a":[1,-2.5e3,null,true,false,"s"]},"shape":[2],'
              '"data_offsets":[0,2],"note":"x"},"__metadata__":null}')
    path = write_raw(tmp_path / "extra.safetensors", header, b"hi")
    assert load(path, framework="numpy")["w"].tobytes() == b"hi"
    with safe_open(path, "numpy") as f:
        assert f.get_tensor("w").tobytes() == b"hi"


# --- differential check against the reference parser ------------------------------------------

_BITS = {"BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8,
         "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
         "I64": 64, "U64": 64, "F64": 64, "C64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6}


def _random_image(rng) -> bytes:
    """A header of a few tensors, each valid or off by one in a random way, and a data section
    that fits or is a byte short or long."""
    header, end = {}, 0
    for j in range(rng.randint(0, 4)):
        dtype = rng.choice(sorted(_BITS))
        shape = [rng.choice([0, 1, 2, 3, 5, 8, 2**33]) for _ in range(rng.randint(0, 3))]
        numel = 1
        for d in shape:
            numel *= d
        begin, stop = end, end + numel * _BITS[dtype] // 8
        fault = rng.random()
        if fault < 0.1:
            stop += rng.choice([-1, 1])
        elif fault < 0.15:
            begin += 1
        elif fault < 0.2:
            begin, stop = stop, begin
        header[f"t{j}"] = {"dtype": dtype, "shape": shape, "data_offsets": [begin, stop]}
        end = max(end, stop)
    if rng.random() < 0.2:
        header["__metadata__"] = rng.choice([None, {"a": "b"}, {}, {"a": 1}, "x", []])
    end = min(end, 1 << 16)
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + bytes(max(0, end + rng.choice([0] * 8 + [1, -1])))


def test_agrees_with_reference_parser_on_random_headers():
    rng = random.Random(1234)
    outcomes = {True: 0, False: 0}
    for _ in range(1500):
        image = _random_image(rng)
        try:
            ref = {name: (t["dtype"], t["shape"], bytes(t["data"])) for name, t in deserialize(image)}
        except Exception:
            ref = None
        try:
            ours = _cpp.testing.parse_file_image(image)
        except E.SafeTensorsError:
            ours = None
        assert (ref is None) == (ours is None), image[8:]
        outcomes[ref is not None] += 1
        if ours is not None:
            start = ours.data_start
            assert {t.name: (t.dtype, list(t.shape), image[start + t.begin:start + t.end]) for t in ours.tensors} == ref
    assert min(outcomes.values()) > 300  # both valid and invalid images were tried


def test_agrees_with_reference_parser_on_mutated_bytes():
    """Byte-level mutations of a real writer's header (syntax errors, escapes, bad UTF-8...)."""
    image = save({"a": torch.zeros(2, 3), "bé": torch.ones(4, dtype=torch.int16), "c": torch.zeros(0)},
                 metadata={"k": "v"})
    n = struct.unpack("<Q", image[:8])[0]
    header, data = image[8:8 + n], image[8 + n:]
    alphabet = b' {}[]",:0123456789-.eE\\u\x00\xff\xc3\xa9\tabF'
    rng = random.Random(99)
    accepted = 0
    for _ in range(3000):
        h = bytearray(header)
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(h))
            op = rng.random()
            if op < 0.4:
                h[i] = rng.choice(alphabet)
            elif op < 0.7:
                h.insert(i, rng.choice(alphabet))
            else:
                del h[i]
        mutated = struct.pack("<Q", len(h)) + bytes(h) + data
        try:
            deserialize(mutated)
            ref_ok = True
        except Exception:
            ref_ok = False
        try:
            _cpp.testing.parse_file_image(mutated)
            ours_ok = True
        except E.SafeTensorsError:
            ours_ok = False
        assert ours_ok == ref_ok, bytes(h)
        accepted += ours_ok
    assert accepted > 20


def test_a_truncated_file_is_called_truncated(tmp_path):
    path = write_raw(tmp_path / "t.safetensors", {"w": entry("F32", [4], 0, 16)}, bytes(16))
    whole = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(whole - 5)
    with pytest.raises(E.MetadataIncompleteBuffer) as exc_info:
        read_file_header(path)
    assert f"truncated: the file has {whole - 5} bytes, its header needs {whole}" in str(exc_info.value)
    with open(path, "r+b") as f:
        f.truncate(12)  # cut inside the header
    with pytest.raises(E.InvalidHeaderLength, match="truncated, or not a safetensors file"):
        read_file_header(path)
