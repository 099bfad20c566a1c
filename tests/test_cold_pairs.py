"""benchmarks/cold_pairs.py (issue 14): its report's structure, its statistics, and that its bytes
check fails on a corrupted checkpoint. Run tiny: a few MB, one or two rounds."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")  # the checkpoint is written by safetensors.torch

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
SCRIPT = os.path.join(BENCHMARKS, "cold_pairs.py")
PEER_05 = "/work/.peers/fst05"


def _run(tmp_path, rounds, peer05, name):
    out = tmp_path / f"{name}.json"
    proc = subprocess.run([sys.executable, SCRIPT, "--size", "4MB", "--rounds", str(rounds), "--cache",
                           str(tmp_path / "cache"), "--peer05", peer05, "--json", str(out), "--timeout", "120"],
                          capture_output=True, text=True, timeout=300)
    return proc, json.loads(out.read_text())


def _data_offset(path):
    with open(path, "rb") as f:
        return 8 + int.from_bytes(f.read(8), "little")


def test_no_peer_is_not_run_and_corrupted_bytes_are_not_equal(tmp_path):
    proc, got = _run(tmp_path, 2, str(tmp_path / "no-peer"), "clean")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cases = got["cases"]
    assert cases["fst05-buffered"]["status"] == "not run" and cases["fst05-buffered"]["rounds"] == 0
    assert "no fastsafetensors 0.5.0" in cases["fst05-buffered"]["reason"]
    for key in ("ours-numpy", "ceiling"):
        c = cases[key]
        assert c["status"] == "ok" and c["rounds"] == 2 and len(c["gbps"]) == 2
        assert c["q1"] <= c["median"] <= c["q3"] and c["median"] > 0
    assert cases["ours-numpy"]["bytes"] == "equal"
    if cases["ours-numpy"]["max_resident_after_evict"] is not None:  # fincore present
        assert cases["ours-numpy"]["max_resident_after_evict"] == 0
    assert got["pairs"]["ours-numpy/fst05-buffered"] == {"rounds": 0}
    pair = got["pairs"]["ours-numpy/ceiling"]
    assert pair["rounds"] == 2 and 0 <= pair["wins"] <= 2
    assert pair["ci90"][0] <= pair["median"] <= pair["ci90"][1]
    assert "| fst05-buffered | not run: no fastsafetensors 0.5.0" in proc.stdout
    assert "Before each load at most " in proc.stdout
    order = [line.split()[1:3] for line in proc.stdout.splitlines() if line.startswith("  round ")]
    assert order == [["1/2", "ours-numpy"], ["1/2", "ceiling"], ["2/2", "ceiling"], ["2/2", "ours-numpy"]]

    # One byte of tensor data changed in place: the checkpoint's reference digests stay, ours must differ.
    shard = sorted((tmp_path / "cache" / "llama-4mb").glob("*.safetensors"))[0]
    with open(shard, "r+b") as f:
        f.seek(_data_offset(shard) + 5)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0xFF]))
    proc, got = _run(tmp_path, 1, str(tmp_path / "no-peer"), "corrupt")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert got["cases"]["ours-numpy"]["bytes"] == "NOT equal"
    assert "MISMATCH ours-numpy: 1 tensor(s)" in proc.stdout
    assert "| NOT equal |" in proc.stdout


@pytest.mark.skipif(not os.path.isdir(os.path.join(PEER_05, "fastsafetensors")), reason="no fastsafetensors 0.5.0")
def test_with_peer_every_case_runs_and_pairs(tmp_path):
    proc, got = _run(tmp_path, 1, PEER_05, "peer")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert got["cases"]["fst05-buffered"]["status"] == "ok"
    assert got["cases"]["fst05-buffered"]["bytes"] == "equal"
    assert all(p["rounds"] == 1 for p in got["pairs"].values())


def test_paired_statistics(monkeypatch):
    """Ratios are taken within a round; a round with a failed case drops out of that case's pairs;
    the seeded bootstrap gives the same interval twice."""
    monkeypatch.syspath_prepend(BENCHMARKS)
    import cold_pairs

    cases = {k: cold_pairs.Case(k) for k in ("ours-numpy", "fst05-buffered", "ceiling")}
    cases["ours-numpy"].gbps = [2.0, 1.0, 3.0, 0.5]
    cases["fst05-buffered"].gbps = [1.0, 2.0, 1.0, None]
    cases["ceiling"].gbps = [4.0, 4.0, 4.0, 1.0]
    got = cold_pairs.summarise(cases, seed=3)
    ours_peer = got["pairs"]["ours-numpy/fst05-buffered"]
    assert ours_peer["ratios"] == [2.0, 0.5, 3.0] and ours_peer["median"] == 2.0 and ours_peer["wins"] == 2
    assert 0.5 <= ours_peer["ci90"][0] <= 2.0 <= ours_peer["ci90"][1] <= 3.0
    assert got["pairs"]["ours-numpy/ceiling"]["ratios"] == [0.5, 0.25, 0.75, 0.5]
    assert got["pairs"]["fst05-buffered/ceiling"]["rounds"] == 3
    ours = got["cases"]["ours-numpy"]  # quartiles of 0.5, 1, 2, 3 (inclusive: linear between the rounds)
    assert (ours["q1"], ours["median"], ours["q3"]) == pytest.approx((0.875, 1.5, 2.25))
    assert cold_pairs.summarise(cases, seed=3) == got


def test_other_peers_are_paired_with_ours_and_unknown_ones_refused(tmp_path, monkeypatch):
    """--peers adds cpu_bench cases to each round, each paired with ours and with the ceiling; a
    key cpu_bench does not have is refused before anything runs."""
    proc = subprocess.run([sys.executable, SCRIPT, "--peers", "readinto,no-such-case", "--cache", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no-such-case" in proc.stderr and not os.listdir(tmp_path)
    monkeypatch.syspath_prepend(BENCHMARKS)
    import cold_pairs

    cases = {k: cold_pairs.Case(k) for k in ("ours-numpy", "readinto", "st-torch", "ceiling")}
    for c, rates in zip(cases.values(), ([2.0, 2.0], [1.0, 4.0], [4.0, 1.0], [1.0, 1.0])):
        c.gbps = rates
    pairs = cold_pairs.summarise(cases, seed=0)["pairs"]
    assert set(pairs) == {"ours-numpy/readinto", "ours-numpy/st-torch", "ours-numpy/ceiling", "readinto/ceiling",
                          "st-torch/ceiling"}
    assert pairs["ours-numpy/readinto"]["ratios"] == [2.0, 0.5] and pairs["st-torch/ceiling"]["ratios"] == [4.0, 1.0]
