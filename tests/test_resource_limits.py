"""Headers built to exhaust memory or time are rejected, or parsed within bounded memory and time.

Each hostile header is about 100 MB (the format's limit on header length) and is parsed in a
fresh process, whose peak RSS growth must stay under 10x the header's size and whose time under
30 s. docs/security.md records the bounds and the figures measured.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap

import pytest

import fastsafetensors
from fastsafetensors._src.files import read_file_header
from fastsafetensors.errors import HeaderTooLarge, InvalidHeaderLength, TensorInvalidInfo, ValidationOverflow

HEADER_BYTES = 100_000_000 - 64  # just under the 100,000,000-byte limit
MAX_GROWTH = 10  # peak RSS growth, in header sizes
MAX_SECONDS = 30

_CHILD = textwrap.dedent("""
    import json, sys, time
    def peak():
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM"))
    import fastsafetensors, fastsafetensors._src.api, fastsafetensors._src.files
    base, start = peak(), time.perf_counter()
    try:
        f = fastsafetensors._src.files.read_file_header(sys.argv[1])
        outcome = {"ok": len(f.infos), "metadata": len(f.metadata or {})}
        names = [t.name for t in f.infos[-1:]]  # then plan and load one tensor of it
        outcome["loaded"] = len(fastsafetensors._src.api.load_files([f], names=names))
    except fastsafetensors.errors.SafeTensorsError as e:
        outcome = {"error": type(e).__name__, "message": str(e)[-200:]}
    print(json.dumps({**outcome, "seconds": time.perf_counter() - start, "growth": peak() - base}))
""")


def _write(path, chunks, data: bytes = b"") -> int:
    """Writes a file whose header is the concatenated ``chunks``; returns the header length."""
    chunks = list(chunks)
    n = sum(len(c) for c in chunks)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", n))
        for c in chunks:
            f.write(c)
        f.write(data)
    return n


def _many_entries():
    """As many (zero-size) tensor entries as fit."""
    size, i, batch, out = 2, 0, [], [b"{"]
    while True:
        entry = b'"t%d":{"dtype":"U8","shape":[0],"data_offsets":[0,0]},' % i
        if size + len(entry) > HEADER_BYTES:
            break
        batch.append(entry)
        size, i = size + len(entry), i + 1
        if len(batch) == 10000:
            out.append(b"".join(batch))
            batch = []
    out.append(b"".join(batch))
    out[-1] = out[-1][:-1] + b"}"  # no trailing comma
    return out


def _deep_nesting():
    head = b'{"t":{"dtype":"U8","shape":[0],"data_offsets":[0,0],"ignored":'
    depth = (HEADER_BYTES - len(head) - 2) // 2
    return [head, b"[" * depth, b"]" * depth, b"}}"]


def _many_dimensions():
    head, tail = b'{"t":{"dtype":"U8","data_offsets":[0,1],"shape":[', b"1]}}"
    return [head, b"1," * ((HEADER_BYTES - len(head) - len(tail)) // 2), tail]


def _whitespace():
    return [b"{", b" " * (HEADER_BYTES - 2), b"}"]


def _one_long_name():
    head, tail = b'{"', b'":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}'
    return [head, b"n" * (HEADER_BYTES - len(head) - len(tail)), tail]


CASES = {
    # name: (header chunks, data section, expected outcome)
    "many_entries": (_many_entries, b"", "ok"),
    "deep_nesting_in_ignored_field": (_deep_nesting, b"", "InvalidHeaderDeserialization"),
    "many_dimensions": (_many_dimensions, b"x", "InvalidHeaderDeserialization"),
    "whitespace": (_whitespace, b"", "ok"),
    "one_long_name": (_one_long_name, b"x", "ok"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_header_is_bounded(case, tmp_path):
    make, data, expected = CASES[case]
    path = tmp_path / f"{case}.safetensors"
    n = _write(path, make(), data)
    assert 0.99 * HEADER_BYTES <= n <= HEADER_BYTES
    try:
        proc = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True,
                              timeout=120, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    finally:
        os.unlink(path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(case, result)
    if expected == "ok":
        assert "ok" in result, result
        assert result["loaded"] == min(1, result["ok"])
    else:
        assert result.get("error") == expected, result
    if os.environ.get("FST_SANITIZED"):
        return  # tests/sanitize.sh: shadow memory and slower code make the bounds meaningless
    assert result["seconds"] < MAX_SECONDS, result
    assert result["growth"] < MAX_GROWTH * n, result


def test_header_length_limits_are_checked_before_allocating(tmp_path):
    path = tmp_path / "x.safetensors"
    for declared, error in ((100_000_001, HeaderTooLarge), (2**63, HeaderTooLarge), (2**64 - 1, HeaderTooLarge),
                            (99_999_999, InvalidHeaderLength)):
        path.write_bytes(struct.pack("<Q", declared) + b"{}")
        with pytest.raises(error):
            read_file_header(path)


def test_huge_shape_product_overflows(tmp_path):
    path = tmp_path / "x.safetensors"
    for shape in ([2**32, 2**32, 2**32], [2**64 - 1, 2], [2**63, 2**63, 0, 5, 2**40]):
        header = json.dumps({"t": {"dtype": "F32", "shape": shape, "data_offsets": [0, 4]}}).encode()
        path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
        with pytest.raises((ValidationOverflow, TensorInvalidInfo)):
            fastsafetensors.load(path)
