"""Every Python example in README.md and docs/usage.md runs as written."""

import os
import re

import pytest

pytest.importorskip("torch")
pytest.importorskip("jax")
from fastsafetensors import host_cache  # noqa: E402
from fastsafetensors._synthetic import save_with_safetensors, write_checkpoint  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md", "docs/usage.md"]


def _python_blocks(doc):
    with open(os.path.join(ROOT, doc), encoding="utf-8") as f:
        return re.findall(r"^```python\n(.*?)^```$", f.read(), re.S | re.M)


@pytest.mark.parametrize("doc", DOCS)
def test_examples_run(doc, tmp_path, monkeypatch):
    blocks = _python_blocks(doc)
    assert blocks, f"{doc} has no Python examples"
    write_checkpoint(str(tmp_path / "model"), 3_000_000, 3, save=save_with_safetensors)
    monkeypatch.chdir(tmp_path)
    bounds = host_cache.stats()  # an example sets the host cache's bounds for the whole process
    try:
        for i, code in enumerate(blocks):
            exec(compile(code, f"{doc} example {i + 1}", "exec"), {"__name__": f"example_{i}"})
    finally:
        host_cache.configure(bounds["limit"], bounds["hold_seconds"])
