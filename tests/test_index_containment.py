"""An index file is text that travels with a download: what it names must stay inside its
checkpoint, and a hostile one must fail fast with a typed error that leaks nothing."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
from safetensors.numpy import load_file

import fastsafetensors
from fastsafetensors import errors
from fastsafetensors._src import files

from .helpers import random_tensor
from .helpers import save as save_in

INDEX = "model.safetensors.index.json"


def save(path, tensors) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return save_in(path, tensors)


@pytest.fixture
def outside(tmp_path):
    """A valid safetensors file beside (not inside) the checkpoint directory."""
    return save(tmp_path / "elsewhere" / "stolen.safetensors", {"secret": random_tensor("F32", (4,), 1)})


@pytest.fixture
def ckpt(tmp_path):
    d = tmp_path / "model"
    save(d / "model-1.safetensors", {"a": random_tensor("F32", (3, 5), 2)})
    save(d / "model-2.safetensors", {"b": random_tensor("BF16", (7,), 3)})
    return d


def write_index(d, weight_map) -> str:
    path = d / INDEX
    path.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return str(path)


@pytest.mark.parametrize("how", ["dotdot", "absolute", "dotdot_inside_then_out", "the_directory"])
def test_index_cannot_name_files_outside_its_directory(ckpt, outside, how):
    entry = {"dotdot": "../elsewhere/stolen.safetensors", "absolute": outside,
             "dotdot_inside_then_out": "sub/../../elsewhere/stolen.safetensors", "the_directory": "."}[how]
    index = write_index(ckpt, {"a": "model-1.safetensors", "b": "model-2.safetensors", "secret": entry})
    for source in (index, str(ckpt)):
        with pytest.raises(errors.IndexPathError) as exc_info:
            fastsafetensors.load(source)
        assert exc_info.value.filename == index and exc_info.value.tensor == "secret"
        assert "not inside the index's directory" in str(exc_info.value)


def test_non_string_entries_are_named(ckpt):
    index = write_index(ckpt, {"a": "model-1.safetensors", "b": ["model-2.safetensors"]})
    with pytest.raises(errors.IndexPathError, match=r"weight_map\[`b`\] is list") as exc_info:
        fastsafetensors.load(index)
    assert exc_info.value.tensor == "b"


def test_paths_that_stay_inside_load(ckpt):
    os.makedirs(ckpt / "sub")
    index = write_index(ckpt, {"a": "sub/../model-1.safetensors", "b": "./model-2.safetensors"})
    out = fastsafetensors.load(index)
    ref = {**load_file(str(ckpt / "model-1.safetensors")), **load_file(str(ckpt / "model-2.safetensors"))}
    assert sorted(out) == ["a", "b"]
    assert all(out[k].tobytes() == ref[k].tobytes() for k in ref)


def test_hugging_face_cache_snapshot_links_into_blobs(tmp_path):
    """snapshots/<rev>/<shard> are symlinks to ../../blobs/<sha256>: they keep loading."""
    repo = tmp_path / "models--org--name"
    staging = tmp_path / "staging"
    shards = {"model-1.safetensors": {"a": random_tensor("F16", (4, 4), 5)},
              "model-2.safetensors": {"b": random_tensor("I64", (3,), 6)}}
    snap = repo / "snapshots" / "0123abcd"
    os.makedirs(repo / "blobs")
    os.makedirs(snap)
    for name, tensors in shards.items():
        data = open(save(staging / name, tensors), "rb").read()
        digest = hashlib.sha256(data).hexdigest()
        (repo / "blobs" / digest).write_bytes(data)
        os.symlink(f"../../blobs/{digest}", snap / name)
    write_index(snap, {"a": "model-1.safetensors", "b": "model-2.safetensors"})
    out = fastsafetensors.load(str(snap), verify=True)
    for name in shards:
        for k, v in load_file(str(staging / name)).items():
            assert out[k].tobytes() == v.tobytes()


def test_deeply_nested_index_is_an_index_error(ckpt):
    (ckpt / INDEX).write_text('{"weight_map": {}, "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(errors.IndexMismatch, match="nested too deeply"):
        fastsafetensors.load(str(ckpt))


def test_missing_shards_fail_before_any_header_is_read(ckpt, monkeypatch):
    weight_map = {"a": "model-1.safetensors", "b": "model-2.safetensors"}
    weight_map.update({f"t{i}": f"missing-{i:06d}.safetensors" for i in range(100_000)})
    index = write_index(ckpt, weight_map)
    read = []
    monkeypatch.setattr(files, "read_file_header", lambda p: read.append(p))
    with pytest.raises(FileNotFoundError, match="missing-000000.safetensors', which does not exist"):
        fastsafetensors.load(index)
    assert read == []


def test_one_bad_file_stops_the_header_reads(tmp_path, monkeypatch):
    bad = tmp_path / "0-bad.safetensors"
    bad.write_text("not a checkpoint")
    good = save(tmp_path / "good.safetensors", {"a": random_tensor("U8", (2,), 0)})
    paths = [str(bad)] + [good] * 3000
    read = []
    real = files.read_file_header
    monkeypatch.setattr(files, "read_file_header", lambda p: (read.append(p), real(p))[1])
    with pytest.raises(errors.HeaderTooLarge):
        files.read_headers(paths)
    assert len(read) < len(paths)


def test_error_messages_do_not_echo_file_contents(tmp_path):
    secret = b"hunter2-password-of-the-admin"
    path = tmp_path / "model.safetensors"
    path.write_bytes(secret)
    with pytest.raises(errors.HeaderTooLarge) as exc_info:
        fastsafetensors.load(str(path))
    message = str(exc_info.value)
    assert str(int.from_bytes(secret[:8], "little")) not in message and "hunter2" not in message
    assert "not a safetensors file" in message and str(path) in message
