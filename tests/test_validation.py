"""Every validation rule of the format (docs: shared/reference/format.md), one malformed image each.

Each image is checked three ways: through ``read_file_header`` (the message names the file),
through ``load`` (same error before any data is read) and through ``cpp.parse_file_image``
(the in-memory parser). The reference reader must reject the same image, except where our
reader is stricter on purpose (duplicate names).
"""

from __future__ import annotations

import struct

import pytest
from safetensors import safe_open

from fastsafetensors import cpp, errors, load, read_file_header

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
        cpp.parse_file_image(image)
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
    assert cpp.parse_file_image(open(path, "rb").read()).tensors == []


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


def test_extra_fields_in_entries_are_ignored(tmp_path):
    header = ('{"w":{"dtype":"U8","extra":{"a":[1,-2.5e3,null,true,false,"s"]},"shape":[2],'
              '"data_offsets":[0,2],"note":"x"},"__metadata__":null}')
    path = write_raw(tmp_path / "extra.safetensors", header, b"hi")
    assert load(path, framework="numpy")["w"].tobytes() == b"hi"
    with safe_open(path, "numpy") as f:
        assert f.get_tensor("w").tobytes() == b"hi"
