"""Runs tensor-parallel scenarios in real process groups (gloo on 127.0.0.1) for the tests.

One group per world size runs every scenario of ``tp_worker.py`` (process start-up dominates on a
small machine); each rank reports per scenario "ok" or its traceback. The processes are bounded by
a timeout and always reaped, on failure too.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

from .processes import free_port

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORKER = os.path.join(HERE, "tp_worker.py")
GROUP_TIMEOUT_S = 120


def _write_checkpoint(root: str) -> List[str]:
    """Files written by real writers: safetensors.torch.save_file and transformers save_pretrained."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)

    def randn(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=g).to(dtype)

    hand = os.path.join(root, "hand")
    os.makedirs(hand)
    groups = [
        {"embed": randn(10, 8, dtype=torch.bfloat16), "q": randn(8, 8, dtype=torch.bfloat16),
         "k": randn(4, 8, dtype=torch.bfloat16), "v": randn(4, 8, dtype=torch.bfloat16),
         "o": randn(8, 6, dtype=torch.float16)},
        {"rows5": randn(5, 3), "rows3": torch.arange(12, dtype=torch.int64).reshape(3, 4), "scalar": randn(()),
         "empty": randn(0, 4), "cube": randn(2, 5, 3, dtype=torch.float64)},
        {"fp8": randn(6, 4).to(torch.float8_e4m3fn), "mask": torch.rand(7, generator=g) > 0.5, "norm": randn(8),
         "i8": torch.arange(-9, 9, dtype=torch.int8).reshape(2, 9)},
    ]
    paths = []
    for i, tensors in enumerate(groups):
        paths.append(os.path.join(hand, f"part-{i}.safetensors"))
        save_file(tensors, paths[-1], metadata={"format": "pt"})

    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    model_dir = os.path.join(root, "llama")
    LlamaForCausalLM(config).save_pretrained(model_dir, max_shard_size="4KB", safe_serialization=True)
    paths += sorted(os.path.join(model_dir, f) for f in os.listdir(model_dir) if f.endswith(".safetensors"))
    return paths


@functools.lru_cache(maxsize=None)
def checkpoint() -> List[str]:
    root = tempfile.mkdtemp(prefix="fst-tp-")
    atexit.register(shutil.rmtree, root, True)
    return _write_checkpoint(root)


def run_group(world: int, files: List[str], timeout: float = GROUP_TIMEOUT_S,
              extra_env: Optional[Dict[str, str]] = None, worker: Sequence[str] = (WORKER,)) -> List[Dict[str, str]]:
    """Starts ``world`` ranks, waits at most ``timeout`` seconds, returns each rank's report.

    ``worker``: the arguments after ``python`` that start one rank (the rank's own arguments follow)."""
    work = tempfile.mkdtemp(prefix="fst-tp-run-")
    spec = os.path.join(work, "files.json")
    with open(spec, "w") as f:
        json.dump(files, f)
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", FASTSAFETENSORS_THREADS="2", PYTHONPATH=ROOT, **(extra_env or {}))
    procs = []
    logs = []
    try:
        for rank in range(world):
            log = open(os.path.join(work, f"rank{rank}.log"), "w")
            logs.append(log)
            procs.append(subprocess.Popen([sys.executable, *worker, str(rank), str(world), str(port), spec, work],
                                          cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + timeout
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                break
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        for log in logs:
            log.close()
    reports = []
    for rank in range(world):
        path = os.path.join(work, f"rank{rank}.json")
        report = json.load(open(path)) if os.path.exists(path) else {}
        with open(os.path.join(work, f"rank{rank}.log")) as f:
            report["__log__"] = f.read()[-4000:]
        report["__exit__"] = str(procs[rank].returncode)
        reports.append(report)
    shutil.rmtree(work, ignore_errors=True)
    return reports


@functools.lru_cache(maxsize=None)
def group_reports(world: int, device: str = "cpu") -> List[Dict[str, str]]:
    """Every scenario's outcome on every rank of one ``world``-rank group (run once per session).

    ``device`` is where the loaders put tensors (gloo moves the bytes either way)."""
    return run_group(world, checkpoint(), extra_env={"FST_TP_DEVICE": device})


def assert_scenario(world: int, name: str, device: str = "cpu") -> None:
    reports = group_reports(world, device)
    problems = []
    for rank, report in enumerate(reports):
        status = report.get(name)
        if status != "ok":
            problems.append(f"rank {rank}: {status or 'did not report (hung, crashed or timed out)'}\n"
                            f"exit code {report['__exit__']}; log tail:\n{report['__log__'] if status is None else ''}")
    assert not problems, f"scenario {name} on {world} ranks:\n" + "\n".join(problems)


def scenario_names() -> List[str]:
    """The scenarios tp_worker.py runs (read from its source: importing it would start a rank)."""
    import re

    with open(WORKER) as f:
        return sorted(re.findall(r"^def scenario_(\w+)\(", f.read(), flags=re.M))
