#!/usr/bin/env python3
"""Run upstream fastsafetensors' unit tests against our package, on the CPU, as upstream's CI does.

Test-only tooling, outside the package and outside CI (see README.md). It extracts upstream's
``tests/`` from a fetched git mirror into a scratch folder,
runs each of CI's pytest invocations with TEST_FASTSAFETENSORS_FRAMEWORK=pytorch and our shim
(fst_upstream_shim.py) loaded first, and writes the outcome of every upstream test:
``results.json`` and one junit file per run in --out, and with --doc the markdown table of
docs/compat-upstream.md (outcomes joined with the reasons in classification.py).
"""

from __future__ import annotations

import argparse
import ast
import datetime
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List, Tuple

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DEFAULT_MIRROR = "/work/.mirror/foundation-model-stack+fastsafetensors/repo"
sys.path.insert(0, str(HERE))
from classification import CATEGORIES, classify  # noqa: E402

# upstream CI's runs (.github/workflows/test-torch.yaml), from tests/unit; test_multi also over ranks.
RUNS = [("single", ["test_fastsafetensors.py"]), ("config", ["test_config.py"]),
        ("auto_loader", ["test_auto_loader.py"]), ("threefs", ["threefs"]), ("multi-1", ["test_multi.py"])]


def extract(mirror: str, commit: str, scratch: Path) -> str:
    sha = subprocess.run(["git", "-C", mirror, "rev-parse", commit], check=True, capture_output=True,
                         text=True).stdout.strip()
    archive = subprocess.run(["git", "-C", mirror, "archive", sha, "tests"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(scratch)], input=archive, check=True)
    return sha


def environment(package_root: str) -> Dict[str, str]:
    env = dict(os.environ, TEST_FASTSAFETENSORS_FRAMEWORK="pytorch", CUDA_VISIBLE_DEVICES="")
    # the shim first, then the package under test (in-tree unless --installed), never upstream's
    paths = [str(HERE)] + ([package_root] if package_root else [])
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def pytest_command(targets: List[str], junit: Path) -> List[str]:
    return ["-m", "pytest", "-p", "fst_upstream_shim", "-p", "no:cacheprovider", "-q", "-rA",
            f"--junitxml={junit}", *targets]


def run_one(label: str, targets: List[str], unit: Path, out: Path, env: Dict[str, str], ranks: int,
            timeout: int) -> List[Path]:
    """One CI invocation; over ranks > 1 through torchrun on 127.0.0.1, one junit file per rank."""
    if ranks == 1:
        junits = [out / f"{label}.xml"]
        cmd = [sys.executable, *pytest_command(targets, junits[0])]
    else:
        junits = [out / f"{label}.rank{r}.xml" for r in range(ranks)]
        # rank_pytest.py names each rank's junit file after torchrun's RANK
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc-per-node={ranks}",
               "--master-addr=127.0.0.1", f"--master-port={free_port()}", str(HERE / "rank_pytest.py"),
               str(out / label), *pytest_command(targets, out / "unused.xml")[2:-len(targets) - 1], *targets]
    log = out / f"{label}.log"
    with open(log, "w") as fh:
        try:
            subprocess.run(cmd, cwd=unit, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout,
                           start_new_session=True)
        except subprocess.TimeoutExpired:
            fh.write(f"\n[run.py] {label}: timed out after {timeout}s\n")
    return junits


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_names(path: Path) -> List[str]:
    """Every test function of a module (``Class::test`` for methods), read without importing it."""
    names = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test"):
            names.append(node.name)
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            names += [f"{node.name}::{f.name}" for f in node.body
                      if isinstance(f, ast.FunctionDef) and f.name.startswith("test")]
    return names


def first_line(text: str) -> str:
    for line in (text or "").splitlines():
        if line.strip():
            return line.strip()[:300]
    return ""


def last_error(text: str) -> str:
    """pytest's last ``E   ...`` line: the exception that stopped a collection."""
    errors = [line[1:].strip() for line in text.splitlines() if line.startswith("E ")]
    return errors[-1][:300] if errors else ""


def read_junit(junit: Path, label: str, unit: Path) -> List[dict]:
    if not junit.exists():
        return [{"run": label, "test": f"({junit.name})", "outcome": "error",
                 "message": "no junit written (crash or timeout: see the run's log)"}]
    rows = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        module = case.get("classname", "")
        name = case.get("name", "")
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                outcome = {"failure": "failed"}.get(tag, tag)
                message = first_line(el.get("message", ""))
                if message in ("", "collection failure"):
                    message = last_error(el.text or "") or message
                break
        if outcome == "error" and (not module or name == module.rsplit(".", 1)[-1]):
            outcome = "not collected"
        rows.append({"run": label, "test": node_id(module, name), "outcome": outcome, "message": message})
    return rows


def node_id(classname: str, name: str) -> str:
    """junit's ``threefs.test_threefs.TestX`` + ``test_y`` as ``threefs/test_threefs.py::TestX::test_y``."""
    parts = classname.split(".") if classname else []
    for i in range(len(parts), 0, -1):
        if parts[i - 1].startswith("test"):
            return "::".join(["/".join(parts[:i]) + ".py", *parts[i:], name])
    return name


def expand_uncollected(rows: List[dict], unit: Path) -> List[dict]:
    """A module that failed to import gives one junit row; list each of its tests instead."""
    out = []
    for row in rows:
        if row["outcome"] != "not collected":
            out.append(row)
            continue
        module = row["test"].split("::")[0]
        module = module if module.endswith(".py") else f"{module}.py"
        path = unit / module if module.endswith(".py") else None
        names = test_names(path) if path and path.exists() else []
        out += [dict(row, test=f"{module}::{n}") for n in names] or [dict(row, test=module)]
    return out


def write_doc(path: Path, rows: List[dict], meta: dict) -> None:
    counts: Dict[str, int] = {}
    lines = []
    for row in rows:
        status, reason = row["status"], row["reason"]
        counts[status] = counts.get(status, 0) + 1
        lines.append(f"| `{row['test']}` | {row['run']} | {row['outcome']} | {status} | {reason} |")
    summary = ", ".join(f"{counts[c]} {c}" for c in CATEGORIES if c in counts)
    text = TEMPLATE.format(summary=summary, table="\n".join(lines), **meta)
    path.write_text(text)


TEMPLATE = """# Upstream's test suite against this package

Upstream fastsafetensors' own unit tests (`tests/unit/` of foundation-model-stack/fastsafetensors at
commit `{commit}`), run on the CPU as upstream's CI job runs them (`TEST_FASTSAFETENSORS_FRAMEWORK=pytorch`,
`test_multi.py` also over {ranks} gloo ranks on 127.0.0.1), against this package, through our test-only
adapter `tools/upstream_tests/` (its shim supplies the upstream internals the tests import; see its
README). Upstream's files are not part of this repository: the runner extracts them from a fetched mirror.

Generated {date} on {machine} by:

    {command}

Summary: {summary}.

Statuses: **pass**; **internal** (the test drives an upstream internal we do not have: named);
**difference** (a documented difference of ours, with the reason); **bug** (ours, not fixed yet); **skip** (upstream skips it here); **unclassified** (new, or passing where it failed: look at it
and update `tools/upstream_tests/classification.py`).
A test upstream parametrizes appears once per parameter set.
Upstream's compiled module `fastsafetensors.cpp` is internal here: our engine is the private
`fastsafetensors._cpp` and no client in shared/reference/clients.md imports either, so every
`fastsafetensors.cpp.*` name below is an upstream internal (the shim supplies a placeholder module).

| test | run | outcome here | status | reason |
|---|---|---|---|---|
{table}
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mirror", default=DEFAULT_MIRROR, help="upstream's git directory (a fetched mirror)")
    ap.add_argument("--commit", default="HEAD", help="upstream commit to test (default: the mirror's HEAD)")
    ap.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "fst-upstream-results"),
                    help="folder for results.json, junit files and logs")
    ap.add_argument("--ranks", type=int, default=2, help="gloo ranks for test_multi.py's run over a group "
                    "(CI uses 4; 0 skips it)")
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--package", default=str(REPO), help="source tree whose fastsafetensors to test "
                       "(default: this one, with its in-place engine)")
    which.add_argument("--installed", action="store_true", help="test the installed package instead")
    ap.add_argument("--timeout", type=int, default=900, help="seconds allowed per pytest run")
    ap.add_argument("--doc", help="write the markdown table here (docs/compat-upstream.md)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder (printed)")
    args = ap.parse_args()

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="fst-upstream-"))
    try:
        sha = extract(args.mirror, args.commit, scratch)
        unit = scratch / "tests" / "unit"
        env = environment("" if args.installed else str(Path(args.package).resolve()))
        runs = list(RUNS) + ([(f"multi-{args.ranks}", ["test_multi.py"])] if args.ranks > 1 else [])
        rows: List[dict] = []
        for label, targets in runs:
            ranks = args.ranks if label == f"multi-{args.ranks}" and args.ranks > 1 else 1
            print(f"[run.py] {label}: pytest {' '.join(targets)}" + (f" over {ranks} ranks" if ranks > 1 else ""),
                  flush=True)
            for junit in run_one(label, targets, unit, out, env, ranks, args.timeout):
                run_label = label if ranks == 1 else f"{label}/{junit.name.split('.')[-2]}"
                rows += expand_uncollected(read_junit(junit, run_label, unit), unit)
        for row in rows:
            row["message"] = row["message"].replace(str(scratch), "<scratch>")
            row["status"], row["reason"] = classify(row)
        meta = {"commit": sha, "ranks": args.ranks, "date": datetime.date.today().isoformat(),
                "machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs, "
                           f"Python {platform.python_version()}, no GPU)",
                "command": "python3 tools/upstream_tests/run.py " + " ".join(sys.argv[1:])}
        (out / "results.json").write_text(json.dumps({"meta": meta, "tests": rows}, indent=1))
        if args.doc:
            write_doc(Path(args.doc), rows, meta)
        counts: Dict[Tuple[str, str], int] = {}
        for row in rows:
            counts[(row["outcome"], row["status"])] = counts.get((row["outcome"], row["status"]), 0) + 1
        for (outcome, status), n in sorted(counts.items()):
            print(f"{n:4d} {outcome:14s} {status}")
        print(f"[run.py] results: {out / 'results.json'}")
        return 1 if any(r["status"] == "unclassified" for r in rows) else 0
    finally:
        if args.keep:
            print(f"[run.py] scratch kept: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
