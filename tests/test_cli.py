"""The ``fastsafetensors`` command line: load, inspect, verify, bench and demo."""

import json
import os
import re
import subprocess
import sys

import ml_dtypes  # noqa: F401  (lets safetensors.numpy read bf16)
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import fastsafetensors  # noqa: E402
from fastsafetensors._src.files import read_file_header  # noqa: E402
from fastsafetensors._src.synthetic import INDEX_NAME, llama_specs  # noqa: E402
from fastsafetensors._src.cli import main  # noqa: E402

# Subprocesses import the same fastsafetensors as this test (the source tree or an install).
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(fastsafetensors.__file__)))


def _tensors(seed):
    g = torch.Generator().manual_seed(seed)
    return {
        f"w{seed}": torch.randn(17, 33, generator=g).to(torch.bfloat16),
        f"norm{seed}": torch.rand(33, generator=g),
        f"ids{seed}": torch.arange(7, dtype=torch.int64),
        f"scalar{seed}": torch.tensor(3.5, dtype=torch.float16),
        f"empty{seed}": torch.zeros(0, 4),
    }


def _header(path):
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(n))


@pytest.fixture
def sharded(tmp_path):
    """Two shards written by safetensors and the index that names them."""
    d = tmp_path / "ckpt"
    d.mkdir()
    weight_map = {}
    for k in range(2):
        name = f"model-{k + 1:05d}-of-00002.safetensors"
        tensors = _tensors(k)
        save_file(tensors, str(d / name), metadata={"format": "pt"})
        weight_map.update({t: name for t in tensors})
    (d / INDEX_NAME).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return d


def _shards(d):
    return sorted(str(p) for p in d.glob("*.safetensors"))


def _run(*args):
    env = dict(os.environ, PYTHONPATH=PACKAGE_PARENT)
    return subprocess.run([sys.executable, "-m", "fastsafetensors", *args], capture_output=True, text=True,
                          env=env, timeout=240)


# ---------------------------------------------------------------- inspect


def test_inspect_lists_every_tensor(sharded, capsys):
    assert main(["inspect", str(sharded)]) == 0
    out = capsys.readouterr().out
    assert "index: 10 tensors in 2 file(s)" in out
    for path in _shards(sharded):
        header = _header(path)
        assert f"{path}: {len(header) - 1} tensors, {os.path.getsize(path):,} bytes" in out
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            shape = "[" + ", ".join(map(str, entry["shape"])) + "]"
            begin, end = entry["data_offsets"]
            row = rf"\n  {re.escape(name)}\s+{entry['dtype']}\s+{re.escape(shape)}\s+{end - begin:,}\s+\[{begin}, {end}\)\n"
            assert re.search(row, out), f"no row for {name}"
    assert out.count("metadata: format=pt") == 2


# ---------------------------------------------------------------- verify


def test_verify_good_checkpoint(sharded, capsys):
    assert main(["verify", str(sharded)]) == 0
    out = capsys.readouterr().out
    for path in _shards(sharded):
        assert f"OK    {path}: 5 tensors" in out
    assert "OK    index: 10 tensors" in out
    assert "FAIL" not in out


def test_verify_sha256_matches_and_mismatches(sharded, capsys):
    import hashlib

    first, second = _shards(sharded)
    digest = hashlib.sha256(open(first, "rb").read()).hexdigest()
    assert main(["verify", first, "--sha256", digest]) == 0
    assert f"sha256 {digest}" in capsys.readouterr().out
    wrong = hashlib.sha256(b"not the file").hexdigest()
    assert main(["verify", first, second, "--sha256", f"{first}={digest}", f"{second}={wrong}"]) == 1
    out = capsys.readouterr().out
    assert f"OK    {first}" in out
    assert f"FAIL  {second}: IntegrityError" in out


def _digest(path):
    import hashlib

    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_verify_sha256_before_the_path_from_the_shell(sharded):
    first = _shards(sharded)[0]
    proc = _run("verify", "--sha256", _digest(first), first)  # HEX PATH: the path is not taken as a digest
    assert proc.returncode == 0, proc.stderr
    assert f"OK    {first}: 5 tensors" in proc.stdout and f"sha256 {_digest(first)}" in proc.stdout
    proc = _run("verify", "--sha256", first)  # bare --sha256 PATH, outside a Hugging Face cache
    assert proc.returncode == 1, proc.stderr
    assert re.search(rf"^FAIL  {re.escape(first)}: IntegrityError: .*no expected SHA-256", proc.stdout, re.M)


def test_verify_bare_sha256_outside_a_cache_fails(sharded, capsys):
    first = _shards(sharded)[0]
    assert main(["verify", first, "--sha256"]) == 1
    out = capsys.readouterr().out
    assert re.search(rf"^FAIL  {re.escape(first)}: IntegrityError: .*no expected SHA-256", out, re.M)
    assert "OK    " not in out


def test_verify_sha256_for_a_file_not_verified_fails(sharded, capsys):
    first, second = _shards(sharded)
    other = str(sharded / "other.safetensors")
    assert main(["verify", first, "--sha256", f"{other}={_digest(first)}"]) == 1
    out = capsys.readouterr().out
    assert f"FAIL  --sha256 {other}=...: {other} is none of the files verified" in out
    assert re.search(rf"^FAIL  {re.escape(first)}: IntegrityError: .*no expected SHA-256", out, re.M)


def test_verify_directory_files_without_a_digest_fail(sharded, capsys):
    first, second = _shards(sharded)
    assert main(["verify", str(sharded), "--sha256", f"{first}={_digest(first)}"]) == 1
    out = capsys.readouterr().out
    assert f"OK    {first}: 5 tensors, " in out and f"sha256 {_digest(first)}" in out
    assert re.search(rf"^FAIL  {re.escape(second)}: IntegrityError: .*no expected SHA-256", out, re.M)
    assert "1 problem(s) found" in out


def test_verify_blob_is_checked_against_its_own_name(sharded, tmp_path, capsys):
    first = _shards(sharded)[0]
    blobs = tmp_path / "cache" / "blobs"
    blobs.mkdir(parents=True)
    good, bad = blobs / _digest(first), blobs / ("0" * 64)
    for blob in (good, bad):
        blob.write_bytes(open(first, "rb").read())
    assert main(["verify", str(good), "--sha256"]) == 0
    assert f"sha256 {_digest(first)}" in capsys.readouterr().out
    assert main(["verify", str(bad), "--sha256"]) == 1
    assert re.search(rf"^FAIL  {re.escape(str(bad))}: IntegrityError: .*mismatch: expected {'0' * 64}",
                     capsys.readouterr().out, re.M)


@pytest.mark.parametrize("value", ["xyz", "g" * 64, "a" * 63, "=" + "a" * 64 + "0"])
def test_verify_invalid_digest_is_not_a_mismatch(sharded, capsys, value):
    first = _shards(sharded)[0]
    with pytest.raises(SystemExit) as exc_info:
        main(["verify", first, "--sha256", value])
    assert "is not a SHA-256 digest (64 hex digits)" in str(exc_info.value.code)
    assert "mismatch" not in capsys.readouterr().out


def _truncate(path):
    size = os.path.getsize(path)
    os.truncate(path, size - 10)


def _break_json(path):
    with open(path, "r+b") as f:
        f.seek(8)
        f.write(b"[")  # the header's root is no longer an object


def _oversize_header_length(path):
    with open(path, "r+b") as f:
        f.write(os.path.getsize(path).to_bytes(8, "little"))


def _grow(path):
    with open(path, "ab") as f:
        f.write(b"\0" * 3)


@pytest.mark.parametrize("damage, error", [
    (_truncate, "MetadataIncompleteBuffer"),
    (_grow, "MetadataIncompleteBuffer"),
    (_break_json, "InvalidHeaderDeserialization"),
    (_oversize_header_length, "InvalidHeaderLength"),
])
def test_verify_fails_on_a_damaged_file_and_checks_the_others(sharded, capsys, damage, error):
    bad, good = _shards(sharded)
    damage(bad)
    with pytest.raises(Exception) as exc_info:
        read_file_header(bad)
    assert type(exc_info.value).__name__ == error  # the library agrees on what is wrong
    assert main(["verify", str(sharded)]) == 1
    out = capsys.readouterr().out
    assert re.search(rf"^FAIL  {re.escape(bad)}: {error}: .+", out, re.M)
    assert f"OK    {good}: 5 tensors" in out
    assert "1 problem(s) found" in out


def test_verify_fails_when_the_index_disagrees(sharded, capsys):
    index = json.loads((sharded / INDEX_NAME).read_text())
    index["weight_map"]["not_there"] = "model-00001-of-00002.safetensors"
    (sharded / INDEX_NAME).write_text(json.dumps(index))
    assert main(["verify", str(sharded / INDEX_NAME)]) == 1
    out = capsys.readouterr().out
    assert re.search(r"^FAIL  checkpoint: TensorNotFound: .*not_there", out, re.M)


def test_verify_fails_on_a_name_in_two_files(tmp_path, capsys):
    save_file({"w": torch.ones(3)}, str(tmp_path / "a.safetensors"))
    save_file({"w": torch.zeros(3)}, str(tmp_path / "b.safetensors"))
    assert main(["verify", str(tmp_path)]) == 1
    assert re.search(r"^FAIL  checkpoint: DuplicateTensorName: .*`w`", capsys.readouterr().out, re.M)


def test_verify_exit_status_from_the_shell(sharded):
    assert _run("verify", str(sharded)).returncode == 0
    bad = _shards(sharded)[1]
    _truncate(bad)
    proc = _run("verify", bad)
    assert proc.returncode == 1
    assert "MetadataIncompleteBuffer" in proc.stdout


# ---------------------------------------------------------------- load


def test_load_reports_what_it_loaded(sharded, capsys):
    files = _shards(sharded)
    nbytes = sum(os.path.getsize(p) - 8 - int.from_bytes(open(p, "rb").read(8), "little") for p in files)
    assert main(["load", *files, "--framework", "torch", "--threads", "3"]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"^loaded into torch: 10 tensors from 2 file\(s\), {nbytes / 1e9:.3f} GB in [0-9.]+s "
                     r"\([0-9.]+ GB/s; headers [0-9.]+s, .*read [0-9.]+s.*\)$", out, re.M)


def test_load_of_a_missing_file_fails_cleanly(tmp_path, capsys):
    assert main(["load", str(tmp_path / "nope.safetensors")]) == 1
    assert "fastsafetensors load:" in capsys.readouterr().err


# ---------------------------------------------------------------- demo


def test_demo_writes_a_checkpoint_the_reference_reads(tmp_path):
    keep = tmp_path / "demo"
    proc = _run("demo", "--size-mb", "3", "--keep", str(keep))
    assert proc.returncode == 0, proc.stderr
    names = [s.name for s in llama_specs(3_000_000)]
    assert f"checked: all {len(names)} tensors equal what was written" in proc.stdout
    assert "model.layers.0.self_attn.q_proj.weight" in names
    index = json.loads((keep / INDEX_NAME).read_text())
    assert sorted(index["weight_map"]) == sorted(names)
    assert len(set(index["weight_map"].values())) == 3
    ours = fastsafetensors.load(keep, framework="numpy")
    seen = set()
    for path in _shards(keep):
        with safe_open(path, framework="numpy") as f:
            for name in f.keys():
                ref = f.get_tensor(name)
                assert ours[name].dtype == ref.dtype and ours[name].shape == ref.shape
                assert ours[name].tobytes() == ref.tobytes()
                seen.add(name)
    assert seen == set(names)
    dtypes = {str(a.dtype) for a in ours.values()}
    assert dtypes == {"bfloat16", "float32"}


@pytest.mark.parametrize("framework", ["numpy", "torch", "jax"])
def test_demo_removes_its_directory(capsys, framework):
    if framework == "jax":
        pytest.importorskip("jax")
    assert main(["demo", "--size-mb", "1", "--framework", framework]) == 0
    out = capsys.readouterr().out
    directory = re.search(r"^writing .* to (\S+)$", out, re.M).group(1)
    assert not os.path.exists(directory)
    assert re.search(rf"^  model\.embed_tokens\.weight: {framework} ", out, re.M)
    assert "checked: all" in out


# ---------------------------------------------------------------- bench and entry point


def test_bench_compares_with_safetensors(sharded, capsys):
    assert main(["bench", str(sharded), "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    for case in ("fastsafetensors numpy", "fastsafetensors torch", "safetensors numpy",
                 "safetensors torch (mmap, pages touched)"):
        assert re.search(rf"^\| {re.escape(case)} +\| +[0-9.]+ \| +[0-9.]+ \| +[0-9.]+x \|$", out, re.M), case
    assert re.search(r"^\| fastsafetensors numpy +\| .* 1\.00x \|$", out, re.M)
    assert "every case returned the same bytes as safetensors" in out


def test_bench_catches_a_loader_returning_wrong_bytes(sharded):
    from fastsafetensors._src import bench as _bench

    paths = _shards(sharded)
    reference = _bench.reference_digests(paths)

    def broken(p):
        out = fastsafetensors.load(list(p))
        out["w0"] = out["w0"].copy()
        out["w0"].reshape(-1).view(np.uint8)[5] ^= 1
        return out

    with pytest.raises(AssertionError, match="w0"):
        _bench.run_alternating([_bench.Case("broken", broken)], paths, 1, reference)


def test_bench_numpy_memmap_types_every_dtype_numpy_has(tmp_path):
    """The np.memmap case (bench and benchmarks/mmap_bench.py) views each tensor as the NumPy
    backend types it: ints, bools and F64 too, not raw bytes; advise sees each whole mapping.
    bench.py loaded by path, outside its package, as benchmarks/cpu_bench.py's children load it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("fst_bench_by_path", os.path.join(
        os.path.dirname(fastsafetensors.__file__), "_src", "bench.py"))
    _bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = _bench  # dataclasses look their module up there
    spec.loader.exec_module(_bench)

    path = str(tmp_path / "dtypes.safetensors")
    want = {"f64": torch.randn(3, 2, dtype=torch.float64), "i16": torch.arange(-4, 4, dtype=torch.int16),
            "i8": torch.arange(-3, 3, dtype=torch.int8).reshape(2, 3), "u8": torch.arange(5, dtype=torch.uint8),
            "bool": torch.tensor([True, False, True]), "bf16": torch.randn(4).to(torch.bfloat16)}
    save_file(want, path)
    advised = []
    got = _bench.numpy_memmap([path], advised.append, touch=False)
    assert [a.size for a in advised] == [os.path.getsize(path)]
    for name, t in want.items():
        assert str(got[name].dtype) == str(t.dtype).removeprefix("torch."), name
        assert got[name].shape == tuple(t.shape), name
        assert got[name].tobytes() == t.contiguous().view(torch.uint8).numpy().tobytes(), name


def test_module_entry_point_lists_the_commands():
    proc = _run("--help")
    assert proc.returncode == 0
    for cmd in ("load", "inspect", "verify", "bench", "demo"):
        assert cmd in proc.stdout


def test_verify_reads_large_files_in_batches(sharded, capsys, monkeypatch):
    import fastsafetensors._src.cli as cli

    monkeypatch.setattr(cli, "VERIFY_BATCH_BYTES", 100)  # one batch per tensor or two
    assert main(["verify", str(sharded)]) == 0
    assert "all 2 file(s) OK" in capsys.readouterr().out


# ---------------------------------------------------------------- arguments, missing modules, progress


@pytest.mark.parametrize("args, message", [
    (["load", "x.safetensors", "--framework", "tensorflow"], "'tensorflow': choose one of numpy, torch, jax"),
    (["load", "x.safetensors", "--threads", "-3"], "'-3' is not a positive whole number"),
    (["load", "x.safetensors", "--threads", "four"], "'four' is not a positive whole number"),
    (["load", "x.safetensors", "--threads", "1000"], "--threads must be between 1 and 256, not 1000"),
    (["bench", "x.safetensors", "--repeats", "0"], "'0' is not a positive whole number"),
    (["demo", "--shards", "0"], "'0' is not a positive whole number"),
    (["demo", "--size-mb", "-5"], "'-5' is not a positive number of megabytes"),
    (["demo", "--size-mb", "0"], "'0' is not a positive number of megabytes"),
    (["demo", "--size-mb", "nan"], "'nan' is not a positive number of megabytes"),
])
def test_bad_arguments_are_usage_errors(args, message, capsys):
    with pytest.raises(SystemExit) as exc_info:
        main(args)
    assert exc_info.value.code == 2
    assert message in capsys.readouterr().err


def _run_without(module, *args):
    """The CLI in a process where ``module`` cannot be imported."""
    code = (f"import sys; sys.modules[{module!r}] = None\n"
            "from fastsafetensors._src.cli import main\n"
            f"sys.exit(main({list(args)!r}))")
    env = dict(os.environ, PYTHONPATH=PACKAGE_PARENT)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=240)


def test_a_missing_framework_is_one_line_saying_what_to_install(sharded):
    proc = _run_without("torch", "load", str(sharded), "--framework", "torch")
    assert proc.returncode == 1
    assert proc.stderr.strip() == ("fastsafetensors load: needs torch, which is not installed: "
                                   "pip install torch (a CPU build on machines without a GPU)")


def test_bench_without_safetensors_says_which_extra(sharded):
    proc = _run_without("safetensors", "bench", str(sharded), "--repeats", "1")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "pip install 'fastsafetensors[bench]'" in proc.stderr


def test_bench_says_which_cases_it_skipped(sharded):
    proc = _run_without("torch", "bench", str(sharded), "--repeats", "1")
    assert proc.returncode == 0, proc.stderr
    assert "skipped (torch not installed): fastsafetensors torch, safetensors torch" in proc.stdout
    assert "fastsafetensors numpy" in proc.stdout


@pytest.mark.parametrize("quiet", [[], ["--quiet"]])
def test_no_progress_bar_into_a_pipe(sharded, quiet):
    proc = _run("load", str(sharded), *quiet)
    assert proc.returncode == 0 and proc.stdout.startswith("loaded into numpy:")
    assert proc.stderr == ""  # stderr is a pipe here: no bar, no carriage returns in logs
