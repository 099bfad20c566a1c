"""SHA-256 integrity checks: the engine's own SHA-256 against hashlib, and load(verify=True)."""

from __future__ import annotations

import hashlib
import os

import pytest

pytest.importorskip("torch")

import fastsafetensors  # noqa: E402
from fastsafetensors import _cpp  # noqa: E402
from fastsafetensors._src.engine import read_into_host  # noqa: E402
from fastsafetensors.errors import IntegrityError  # noqa: E402
from fastsafetensors._src.files import read_headers  # noqa: E402
from fastsafetensors.integrity import hf_cache_digest, sha256_file, verify_file  # noqa: E402
from fastsafetensors.metrics import LoadMetrics  # noqa: E402
from fastsafetensors._src.plan import plan_load  # noqa: E402

from ._hardening import assert_exact, make_checkpoint  # noqa: E402


def _hashlib_file(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.mark.parametrize("length", [0, 1, 3, 55, 56, 57, 63, 64, 65, 119, 120, 127, 128, 129, 1000, 65537, 1 << 20])
def test_sha256_matches_hashlib(length):
    """Both the SHA-NI path (where the CPU has it) and the portable FIPS 180-4 code."""
    data = os.urandom(length)
    assert _cpp.testing.sha256_bytes(data) == hashlib.sha256(data).hexdigest()
    assert _cpp.testing.sha256_bytes(data, portable=True) == hashlib.sha256(data).hexdigest()
    assert _cpp.testing.SHA256_IMPLEMENTATION in ("sha-ni", "portable")


def test_sha256_file_matches_hashlib(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(3 * (1 << 20) + 17))  # crosses the 1 MiB read chunks unevenly
    assert sha256_file(path) == _hashlib_file(path)
    assert _cpp.sha256_file(str(tmp_path / "blob")) == _hashlib_file(path)


@pytest.fixture
def ckpt(tmp_path):
    return make_checkpoint(tmp_path, files=3)


def test_loaded_file_digest_equals_file_digest(ckpt):
    """Hashing from the (64-byte padded) host buffers gives the file's digest, for whole loads
    and for loads of a few tensors (the rest is read from disk once, for the hash only)."""
    files = read_headers(ckpt)
    for names in (None, ["layer0.b", "layer2.idx"], ["layer1.odd"]):
        plan = plan_load(files, names)
        buffers = read_into_host(plan)
        for i, f in enumerate(files):
            assert _cpp.sha256_loaded_file(f.header, f.path, i, plan.ranges, buffers) == _hashlib_file(f.path)


def test_verify_with_given_digests(ckpt):
    digests = {p: _hashlib_file(p) for p in ckpt}
    metrics = LoadMetrics()
    out = fastsafetensors.load(ckpt, verify=True, sha256=digests, metrics=metrics)
    assert_exact(out, ckpt)
    assert "verify" in metrics.seconds
    upper = {os.path.basename(p): d.upper() for p, d in digests.items()}  # keyed by name, any case
    assert_exact(fastsafetensors.load(ckpt, sha256=upper), ckpt)


def test_verify_mismatch_returns_nothing(ckpt):
    digests = {p: _hashlib_file(p) for p in ckpt}
    digests[ckpt[1]] = hashlib.sha256(b"something else").hexdigest()
    before = _cpp.testing.host_live_bytes()
    with pytest.raises(IntegrityError) as ei:
        fastsafetensors.load(ckpt, verify=True, sha256=digests)
    assert ei.value.filename == ckpt[1] and ckpt[1] in str(ei.value)
    assert ei.value.actual == _hashlib_file(ckpt[1])
    assert _cpp.testing.host_live_bytes() == before


def test_verify_detects_a_flipped_data_byte(ckpt):
    digests = {p: _hashlib_file(p) for p in ckpt}
    with open(ckpt[2], "r+b") as f:
        f.seek(-5, os.SEEK_END)
        b = f.read(1)
        f.seek(-5, os.SEEK_END)
        f.write(bytes([b[0] ^ 1]))
    with pytest.raises(IntegrityError, match="SHA-256 mismatch"):
        fastsafetensors.load(ckpt, verify=True, sha256=digests)
    with pytest.raises(IntegrityError):
        verify_file(ckpt[2], digests[ckpt[2]])


def test_verify_needs_a_digest(ckpt):
    with pytest.raises(IntegrityError, match="no expected SHA-256"):
        fastsafetensors.load(ckpt, verify=True)
    with pytest.raises(IntegrityError, match="64 hex digits"):
        fastsafetensors.load(ckpt[0], sha256={ckpt[0]: "abc"})


def _hf_cache(root, ckpt):
    """A Hugging Face hub cache: snapshots/<rev>/<file> -> ../../blobs/<sha256>."""
    blobs = root / "models--org--tiny" / "blobs"
    snap = root / "models--org--tiny" / "snapshots" / "0123abcd"
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    out = []
    for p in ckpt:
        digest = _hashlib_file(p)
        os.replace(p, blobs / digest)
        link = snap / os.path.basename(p)
        os.symlink(os.path.join("..", "..", "blobs", digest), link)
        out.append(str(link))
    return out


def test_verify_from_hf_cache_layout(ckpt, tmp_path):
    links = _hf_cache(tmp_path / "hub", ckpt)
    assert hf_cache_digest(links[0]) == os.path.basename(os.path.realpath(links[0]))
    out = fastsafetensors.load(links, verify=True)
    assert_exact(out, links)
    assert verify_file(links[1]) == _hashlib_file(links[1])
    with open(os.path.realpath(links[1]), "r+b") as f:  # the blob no longer has its name's digest
        f.seek(-50, os.SEEK_END)
        f.write(b"\x00\x01")
    with pytest.raises(IntegrityError) as ei:
        fastsafetensors.load(os.path.dirname(links[0]), verify=True)
    assert ei.value.filename == links[1]
    with pytest.raises(IntegrityError):
        verify_file(links[1])


def test_no_digest_outside_hf_cache(ckpt, tmp_path):
    assert hf_cache_digest(ckpt[0]) is None
    link = tmp_path / "link.safetensors"
    os.symlink(ckpt[0], link)
    assert hf_cache_digest(link) is None  # a symlink, but not to blobs/<sha256>
    assert verify_file(ckpt[0]) == _hashlib_file(ckpt[0])  # nothing to compare: just the digest
