"""The adversarial pass of issue 11 (docs/security.md, "Adversarial pass"): each test pins a way a
caller or a crafted checkpoint made the loader do something other than asked without saying so."""

import hashlib
import json
import os
import pathlib
import re

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import fastsafetensors
from fastsafetensors import SafeTensorsFileLoader, SingleGroup
from fastsafetensors._src.api import load_files
from fastsafetensors._src.cli import main
from fastsafetensors.errors import FastSafeTensorsError


@pytest.fixture
def ckpt(tmp_path):
    path = str(tmp_path / "m.safetensors")
    save_file({"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.arange(5, dtype=np.int64)}, path)
    return path


def _exact(out, path):
    want = load_file(path)
    assert sorted(out) == sorted(want)
    for name, t in want.items():
        assert out[name].dtype == t.dtype and out[name].shape == t.shape and out[name].tobytes() == t.tobytes()


@pytest.mark.parametrize("option", ["raw", "mmap", "verify", "direct_io", "progress"])
@pytest.mark.parametrize("value", ["no", "False", b"", 2, 0.0, [False]])
def test_flag_options_must_be_booleans(ckpt, option, value):
    """raw="no" returned raw uint8 bytes and progress="no" drew a bar: any truthy object meant True."""
    with pytest.raises(TypeError, match=option):
        fastsafetensors.load(ckpt, **{option: value})


@pytest.mark.parametrize("value", [False, 0, np.False_])
def test_flag_options_accept_bool_like_values(ckpt, value):
    _exact(fastsafetensors.load(ckpt, raw=value, mmap=value, verify=value, direct_io=value, progress=value), ckpt)


def test_jax_flag_options_must_be_booleans(ckpt):
    jax_load = pytest.importorskip("fastsafetensors.jax").load
    with pytest.raises(TypeError, match="nested"):
        jax_load(ckpt, nested="no")


def _index(directory, text):
    path = os.path.join(directory, "model.safetensors.index.json")
    with open(path, "w") as f:
        f.write(text)
    return path


def test_missing_files_have_the_root(ckpt, tmp_path):
    """A shard the index names that is missing, and a directory with no checkpoint, raised a bare
    FileNotFoundError, which ``except FastSafeTensorsError`` (catches every error, errors.py) missed."""
    index = _index(tmp_path, json.dumps({"weight_map": {"a": "m.safetensors", "b": "gone\n.safetensors"}}))
    with pytest.raises(FastSafeTensorsError) as exc:
        fastsafetensors.load(index)
    assert isinstance(exc.value, FileNotFoundError) and exc.value.filename.endswith("gone\n.safetensors")
    assert "\n" not in str(exc.value)  # the entry is quoted: a name cannot forge lines in a log
    (tmp_path / "empty").mkdir()
    with pytest.raises(FastSafeTensorsError, match="no .safetensors files"):
        fastsafetensors.load(str(tmp_path / "empty"))


@pytest.mark.parametrize("text, why", [
    ('{"weight_map": {}}', "names no tensors"),
    ('{"weight_map": {"a": "other.safetensors", "b": "m.safetensors", "a": "m.safetensors"}}', "'a' appears twice"),
    ('{"weight_map": {"a": "other.safetensors"}, "weight_map": {"a": "m.safetensors", "b": "m.safetensors"}}',
     "'weight_map' appears twice"),
])
def test_ambiguous_or_empty_index_is_refused(ckpt, tmp_path, text, why):
    """An empty weight_map loaded nothing from a directory holding a checkpoint (returned {}); a key
    given twice kept the last value, silently skipping the shard the first one named."""
    save_file({"a": np.ones(2, np.float32)}, str(tmp_path / "other.safetensors"))
    _index(tmp_path, text)
    with pytest.raises(fastsafetensors.errors.IndexMismatch, match=why):
        fastsafetensors.load(str(tmp_path))


def _digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.mark.parametrize("first_key", ["path", "name"])
def test_two_digests_for_one_file_are_refused(ckpt, first_key):
    """sha256={path: right, name: wrong}: the first key naming the file won, so the other digest the
    caller gave was never compared and the load passed (or failed, in the other order)."""
    keys = {"path": ckpt, "name": os.path.basename(ckpt)}
    wrong = "0" * 64
    given = {keys[first_key]: _digest(ckpt).upper(), keys[{"path": "name", "name": "path"}[first_key]]: wrong}
    with pytest.raises(fastsafetensors.errors.IntegrityError, match="2 different expected digests"):
        fastsafetensors.load(ckpt, sha256=given)
    same = {ckpt: _digest(ckpt).upper(), os.path.basename(ckpt): _digest(ckpt)}  # one digest, two spellings
    _exact(fastsafetensors.load(ckpt, sha256=same), ckpt)


def _exit_code(argv):
    try:
        return main(argv)
    except SystemExit as exc:  # a message (exit status 1) or a number
        return exc.code


def test_cli_two_digests_for_one_file_fail(ckpt, capsys):
    """`verify F --sha256 F=WRONG F=RIGHT` kept the last and printed OK."""
    for pair in ([f"{ckpt}={'0' * 64}", f"{ckpt}={_digest(ckpt)}"],
                 [f"{os.path.basename(ckpt)}={'0' * 64}", f"{ckpt}={_digest(ckpt)}"]):
        assert _exit_code(["verify", ckpt, "--sha256", *pair]) not in (0, None)
        assert "OK " not in capsys.readouterr().out


@pytest.mark.parametrize("names", [b"a", [b"a"], ["a", 1], [pathlib.Path("a")]])
def test_names_must_be_strings(ckpt, names):
    """names=b"a" looked for a tensor named 97 (one per byte): a TensorNotFound about a name the caller
    never wrote."""
    with pytest.raises(TypeError, match="names must be tensor names"):
        fastsafetensors.load(ckpt, names=names)


@pytest.mark.parametrize("sha256", ["0" * 64, [("m.safetensors", "0" * 64)]])
def test_sha256_must_be_a_mapping(ckpt, sha256):
    """A bare digest string was read as 64 one-letter file names (ValueError listing them)."""
    with pytest.raises(TypeError, match="sha256= must be a mapping"):
        fastsafetensors.load(ckpt, sha256=sha256)


@pytest.mark.parametrize("option", ["nogds", "set_numa", "debug_log", "direct_read"])
def test_loader03_switches_must_be_booleans(option):
    """SafeTensorsFileLoader(nogds="False", debug_log="no", ...) kept the string, which is truthy:
    the switch did the opposite of what it said (debug_log="no" turned debug logging on)."""
    with pytest.raises(TypeError, match=option):
        SafeTensorsFileLoader(SingleGroup(), "cpu", framework="numpy", **{option: "no"})


def test_loader03_add_filenames_takes_one_path_as_one_file(ckpt):
    """add_filenames({0: "dir/m.safetensors"}) opened each character ("d", "i", ..., "/") as a file."""
    loader = SafeTensorsFileLoader(SingleGroup(), "cpu", framework="numpy")
    loader.add_filenames({0: ckpt})
    buffer = loader.copy_files_to_device()
    _exact({n: buffer.get_tensor(n) for n in loader.get_keys()}, ckpt)
    loader.close()


def test_rewrite_in_place_with_reset_mtime_is_refused(ckpt, tmp_path):
    """A same-size rewrite in place whose writer puts the modification time back (os.utime) kept the
    identity of the file its header was read from: the load returned the new bytes laid out by the
    old header, with no error. utime() sets the status-change time, which the identity now checks."""
    other = str(tmp_path / "other.safetensors")
    save_file({"a": np.full((3, 4), 7, np.float32), "b": np.arange(5, dtype=np.int64)[::-1].copy()}, other)
    files = fastsafetensors._src.files.open_checkpoint(ckpt)
    st = os.stat(ckpt)
    with open(other, "rb") as src, open(ckpt, "r+b") as dst:
        dst.write(src.read())
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(ckpt).st_size == st.st_size and os.stat(ckpt).st_mtime_ns == st.st_mtime_ns
    for mmap in (False, True):
        with pytest.raises(fastsafetensors.errors.FileChangedError, match="status-change time"):
            load_files(files, mmap=mmap)


def test_cli_escapes_control_characters_from_the_checkpoint(tmp_path, capsys):
    """A tensor named "x\\n\\x1b[32mOK ..." printed a forged OK line (and terminal escapes) in
    `inspect`, and in `verify`'s FAIL line."""
    name = "evil\n\x1b[32mOK    forged\u202e"
    path = str(tmp_path / "ctrl.safetensors")
    save_file({name: np.ones(2, np.float32)}, path)
    assert _exit_code(["inspect", path]) == 0
    assert _exit_code(["verify", path, path]) == 1  # the tensor is in both: its name is in the FAIL line
    out = capsys.readouterr().out
    assert not re.search("[\x00-\x09\x0b-\x1f\x7f\u202e]", out)
    assert [line for line in out.splitlines() if "forged" in line] == [
        line for line in out.splitlines() if "evil\\n\\x1b[32mOK    forged\\u202e" in line]
    assert not any(line.startswith("OK    forged") for line in out.splitlines())


def test_index_entries_are_resolved_once_per_shard(ckpt, tmp_path, monkeypatch):
    """An index of 10^6 tensors naming one shard took 26 s before failing: each entry's path was
    normalised and checked, and realpath'd again, once per tensor (now once per shard: 6.7 s, most of
    it json.load)."""
    index = _index(tmp_path, json.dumps({"weight_map": {f"t{i}": "m.safetensors" for i in range(100_000)}}))
    checks, realpaths = [], []
    entry_path, realpath = fastsafetensors._src.files._index_entry_path, os.path.realpath
    monkeypatch.setattr(fastsafetensors._src.files, "_index_entry_path", lambda *a: checks.append(a) or entry_path(*a))
    monkeypatch.setattr(os.path, "realpath", lambda *a, **k: realpaths.append(a) or realpath(*a, **k))
    with pytest.raises(fastsafetensors.errors.TensorNotFound, match="`t0`"):
        fastsafetensors.load(index)
    assert len(checks) == 1 and len(realpaths) < 10


def test_wrong_types_for_paths_names_metrics_and_ranks_are_type_errors(tmp_path):
    path = str(tmp_path / "m.safetensors")
    save_file({"a": np.zeros(2, dtype=np.float32)}, path)
    for kwargs, message in [({"names": 5}, r"names must be tensor names \(a str or an iterable of str\), not int"),
                            ({"metrics": 5}, "metrics must be a LoadMetrics, not int")]:
        with pytest.raises(TypeError, match=message):
            fastsafetensors.load(path, **kwargs)
    with pytest.raises(TypeError, match="not bytes"):
        fastsafetensors.load(path.encode())
    loader = SafeTensorsFileLoader(SingleGroup(), "cpu", nogds=True)
    with pytest.raises(TypeError, match=r"ranks are ints, not float \(0.5\)"):
        loader.add_filenames({0.5: [path]})
    loader.close()
