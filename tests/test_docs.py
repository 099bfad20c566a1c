"""Every Python example in README.md and docs/*.md runs as written.

The blocks of one page run in order in one namespace, in a directory holding a small Llama-shaped
checkpoint in ``model/``. A block that is a fragment of a larger program says so in the page and
is completed by a hidden prelude right above it: ``<!-- prelude: CODE -->`` runs CODE first (in
the same namespace). ``<!-- ranks: N -->`` marks a block written for ``torchrun``: it runs in N
processes joined by gloo on 127.0.0.1, with the checkpoint's files as its arguments.
"""

import glob
import os
import re
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("torch")
pytest.importorskip("jax")
from fastsafetensors import host_cache  # noqa: E402
from fastsafetensors._src.synthetic import save_with_safetensors, write_checkpoint  # noqa: E402
from .processes import free_port  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md"] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))
_BLOCK = re.compile(r"(?:^<!-- (prelude|ranks):\s*(.*?)-->\n)?^```python\n(.*?)^```$", re.S | re.M)
RANKS_TIMEOUT = 120


def _python_blocks(doc):
    """[(kind of marker or None, its text, code)] in page order."""
    with open(os.path.join(ROOT, doc), encoding="utf-8") as f:
        return _BLOCK.findall(f.read())


def _run_ranks(code: str, ranks: int, cwd) -> None:
    """Runs ``code`` as a script in ``ranks`` processes of one gloo group, as torchrun would."""
    script = cwd / "doc_example.py"
    script.write_text(code)
    files = sorted(glob.glob(str(cwd / "model" / "*.safetensors")))
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE=str(ranks),
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(script), *files], cwd=cwd, env=dict(env, RANK=str(r)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(ranks)]
    try:
        outputs = [p.communicate(timeout=RANKS_TIMEOUT)[0] for p in procs]
    finally:
        for p in procs:  # a rank that hangs (or whose peer died) never outlives the test
            if p.poll() is None:
                p.kill()
                p.wait()
    for r, (p, out) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"rank {r} exited with {p.returncode}:\n{out}"


def test_every_page_with_examples_is_tested():
    assert [d for d in DOCS if _python_blocks(d)], "no page has Python examples"
    for d in DOCS:
        with open(os.path.join(ROOT, d), encoding="utf-8") as f:
            assert f.read().count("```python") == len(_python_blocks(d)), f"{d}: a block this test cannot parse"


@pytest.mark.parametrize("doc", [d for d in DOCS if _python_blocks(d)])
def test_examples_run(doc, tmp_path, monkeypatch):
    write_checkpoint(str(tmp_path / "model"), 3_000_000, 3, save=save_with_safetensors)
    monkeypatch.chdir(tmp_path)
    bounds = host_cache.stats()  # an example sets the host cache's bounds for the whole process
    namespace = {"__name__": f"doc_{doc}"}
    try:
        for i, (marker, arg, code) in enumerate(_python_blocks(doc)):
            where = f"{doc} example {i + 1}"
            if marker == "ranks":
                _run_ranks(code, int(arg), tmp_path)
                continue
            if marker == "prelude":
                exec(compile(textwrap.dedent(arg), f"{where} (prelude)", "exec"), namespace)
            exec(compile(code, where, "exec"), namespace)
    finally:
        host_cache.configure(bounds["limit"], bounds["hold_seconds"])
