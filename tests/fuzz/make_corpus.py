"""Writes the fuzz seed corpus (tests/fuzz/corpus/): valid files from safetensors' own writer and
malformed variants of them, each under 4 KiB. Rerun after changing it; the files are committed."""

from __future__ import annotations

import json
import os
import struct
import tempfile

import torch
from safetensors.torch import save_file

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def written(tensors, metadata=None) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "x.safetensors")
        save_file(tensors, path, metadata=metadata)
        with open(path, "rb") as f:
            return f.read()


def image(header: dict, data: bytes = b"", raw_json: bytes = None) -> bytes:
    text = raw_json if raw_json is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def valid() -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "valid_f32": written({"w": torch.randn(3, 4, generator=g), "b": torch.zeros(4)}),
        "valid_dtypes": written({
            "bf16": torch.randn(5, generator=g).to(torch.bfloat16), "f16": torch.randn(2, 3, generator=g).half(),
            "i64": torch.arange(3), "u8": torch.arange(7, dtype=torch.uint8), "bool": torch.tensor([True, False]),
            "f8": torch.randn(4, generator=g).to(torch.float8_e4m3fn), "f64": torch.randn(1, generator=g).double(),
        }),
        "valid_metadata": written({"t": torch.ones(2)}, metadata={"format": "pt", "ünï": "cödé"}),
        "valid_edge": written({"scalar": torch.tensor(1.5), "empty": torch.zeros(0, 3), "one": torch.ones(1)}),
        "valid_empty": image({}),
        "valid_metadata_only": image({"__metadata__": {"a": "b"}}),
        "valid_f4": image({"p": {"dtype": "F4", "shape": [2, 3], "data_offsets": [0, 3]}}, b"\x12\x34\x56"),
        "valid_ignored_field": image({"t": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2],
                                            "extra": [1, {"x": None}, 2.5e3, True]}}, b"ab"),
    }


def malformed(good: bytes) -> dict:
    n = struct.unpack("<Q", good[:8])[0]
    return {
        "bad_short": good[:5],
        "bad_too_large": struct.pack("<Q", 100_000_001) + good[8:],
        "bad_length_past_end": struct.pack("<Q", len(good)) + good[8:],
        "bad_truncated_data": good[:-3],
        "bad_trailing_bytes": good + b"\0\0",
        "bad_utf8": image(None, b"", b'{"\xff": 1}'),
        "bad_not_object": image(None, b"", b"[1, 2]"),
        "bad_trailing_json": image(None, b"", b"{} {}"),
        "bad_negative_shape": image({"t": {"dtype": "U8", "shape": [-1], "data_offsets": [0, 0]}}),
        "bad_float_shape": image({"t": {"dtype": "U8", "shape": [1.5], "data_offsets": [0, 1]}}, b"a"),
        "bad_overflow_shape": image({"t": {"dtype": "F32", "shape": [2**32, 2**32, 2**32], "data_offsets": [0, 0]}}),
        "bad_overflow_offsets": image({"t": {"dtype": "U8", "shape": [1], "data_offsets": [2**64 - 1, 2**64]}}),
        "bad_gap": image({"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
                          "b": {"dtype": "U8", "shape": [1], "data_offsets": [2, 3]}}, b"abc"),
        "bad_overlap": image({"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},
                              "b": {"dtype": "U8", "shape": [2], "data_offsets": [1, 3]}}, b"abc"),
        "bad_backwards": image({"a": {"dtype": "U8", "shape": [0], "data_offsets": [1, 0]}}, b"a"),
        "bad_size_mismatch": image({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"abcd"),
        "bad_f4_odd": image({"p": {"dtype": "F4", "shape": [3], "data_offsets": [0, 1]}}, b"a"),
        "bad_unknown_dtype": image({"a": {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}}, b"a" * 16),
        "bad_duplicate": image(None, b"aa", b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
                                            b'"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}'),
        "bad_metadata_type": image({"__metadata__": {"a": 1}}),
        "bad_deep_nesting": image(None, b"", b'{"t":{"dtype":"U8","shape":[0],"data_offsets":[0,0],"x":'
                                           + b"[" * 200 + b"]" * 200 + b"}}"),
        "bad_lone_surrogate": image(None, b"", b'{"\\ud800":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}'),
        "bad_header_cut": good[:8] + good[8:8 + n // 2],
    }


def main() -> None:
    os.makedirs(HERE, exist_ok=True)
    seeds = valid()
    seeds.update(malformed(seeds["valid_f32"]))
    for name, data in seeds.items():
        assert len(data) < 4096, name
        with open(os.path.join(HERE, name), "wb") as f:
            f.write(data)
    print(f"wrote {len(seeds)} seeds to {HERE}")


if __name__ == "__main__":
    main()
