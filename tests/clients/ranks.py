"""Client call sequences in one process and in gloo process groups on 127.0.0.1.

A client test module defines ``seq_<name>(pg, files)`` functions: one client's call sequence,
checking every tensor bit for bit against ``safetensors``. Its tests call them with
``SingleGroup()`` and, through ``assert_ranks``, in a group of 2 ranks: this file started as
``python -m tests.clients.ranks MODULE KIND RANK WORLD PORT FILES_JSON OUT_DIR`` runs every sequence
of ``tests.clients.MODULE`` in one rank of a ``KIND`` group, ``torch`` (torch.distributed) or
``paddle`` (paddle.distributed), gloo on 127.0.0.1 (bounded and reaped by ``tp_harness.run_group``).
"""

from __future__ import annotations

import atexit
import datetime
import functools
import importlib
import json
import os
import shutil
import sys
import tempfile
import traceback
from typing import Callable, Dict, List

import pytest
import torch
from safetensors.torch import load_file, save_file

from fastsafetensors import SingleGroup

from .. import tp_harness
from ..helpers import assert_same_tensor as same  # noqa: F401  (the clients' tests take it from here)


def _write_checkpoint(root: str) -> List[str]:
    """Four files: attention weights, two of experts (large, for filters), and fp4 weights."""
    g = torch.Generator().manual_seed(12)

    def rand(*shape, dtype=torch.float32):
        raw = torch.randint(0, 256, (int(torch.tensor(shape).prod()) * torch.empty(0, dtype=dtype).element_size(),),
                            dtype=torch.uint8, generator=g)
        return raw.view(dtype).reshape(shape)

    groups = [
        {"q": rand(8, 16, dtype=torch.bfloat16), "k": rand(4, 16, dtype=torch.bfloat16),
         "v": rand(4, 16, dtype=torch.bfloat16), "o": rand(16, 8, dtype=torch.float16),
         "norm": torch.randn(16, generator=g), "rows5": torch.randn(5, 3, generator=g),
         "ids": torch.arange(10, dtype=torch.int64)},
        {"experts.0.w": torch.randn(256, 512, generator=g).to(torch.bfloat16),
         "experts.1.w": torch.randn(256, 512, generator=g).to(torch.bfloat16), "router": torch.randn(4, 16, generator=g)},
        {"experts.2.w": torch.randn(256, 512, generator=g).to(torch.bfloat16),
         "experts.3.w": torch.randn(256, 512, generator=g).to(torch.bfloat16), "lm_head": torch.randn(10, 16, generator=g)},
        # F4 stores two values per byte: torch's float4_e2m1fn_x2 (8, 8) is F4 [8, 16] in the file.
        {"wq_f4": rand(8, 8, dtype=torch.float4_e2m1fn_x2), "wk_f4": rand(4, 8, dtype=torch.float4_e2m1fn_x2),
         "wv_f4": rand(4, 8, dtype=torch.float4_e2m1fn_x2), "wo_f4": rand(8, 8, dtype=torch.float4_e2m1fn_x2),
         "scale_e8m0": rand(8, 2, dtype=torch.float8_e8m0fnu)},
    ]
    paths = []
    for i, tensors in enumerate(groups):
        paths.append(os.path.join(root, f"model-{i:05d}-of-{len(groups):05d}.safetensors"))
        save_file(tensors, paths[-1], metadata={"format": "pt"})
    return paths


@functools.lru_cache(maxsize=None)
def checkpoint() -> List[str]:
    root = tempfile.mkdtemp(prefix="fst-clients-")
    atexit.register(shutil.rmtree, root, True)
    return _write_checkpoint(root)


@functools.lru_cache(maxsize=None)
def reference(files: tuple) -> Dict[str, torch.Tensor]:
    return {name: t for f in files for name, t in load_file(f).items()}


def sequences(module) -> Dict[str, Callable]:
    return {k[len("seq_"):]: v for k, v in sorted(vars(module).items()) if k.startswith("seq_")}


def client_tests(module_name: str, group_only: frozenset = frozenset()):
    """A client module's two tests, ``test_single_process, test_two_ranks = client_tests(__name__)``
    after its sequences: each ``seq_*`` (but those in ``group_only``) with ``SingleGroup()``, and
    each in a group of 2 gloo ranks."""
    seqs = sequences(sys.modules[module_name])
    short = module_name.rsplit(".", 1)[-1]

    @pytest.mark.parametrize("name", sorted(set(seqs) - group_only))
    def test_single_process(name):
        seqs[name](SingleGroup(), checkpoint())

    @pytest.mark.timeout(tp_harness.GROUP_TIMEOUT_S + 60)
    @pytest.mark.parametrize("name", sorted(seqs))
    def test_two_ranks(name):
        assert_ranks(short, 2, name, "torch")

    return test_single_process, test_two_ranks


@functools.lru_cache(maxsize=None)
def _reports(module: str, world: int, kind: str) -> tuple:
    return tuple(tp_harness.run_group(world, checkpoint(), worker=("-m", "tests.clients.ranks", module, kind)))


def assert_ranks(module: str, world: int, name: str, kind: str = "torch") -> None:
    """Sequence ``name`` of ``tests.clients.<module>`` passed on every rank of a ``world``-rank group
    of ``kind`` ("torch" or "paddle")."""
    problems = []
    for rank, report in enumerate(_reports(module, world, kind)):
        status = report.get(name)
        if status != "ok":
            problems.append(f"rank {rank}: {status or 'did not report (hung, crashed or timed out)'}\n"
                            f"exit code {report['__exit__']}; log tail:\n{report['__log__'] if status is None else ''}")
    assert not problems, f"{module}.seq_{name} on {world} ranks:\n" + "\n".join(problems)


def _init_group(kind: str, rank: int, world: int, port: int):
    """This rank's gloo group of ``kind`` on 127.0.0.1: the distributed module and the group."""
    if kind == "paddle":
        # paddle.distributed.launch's variables; gloo rendezvous through the store at PADDLE_MASTER
        # (the endpoints are only checked to be set).
        endpoint = f"127.0.0.1:{port}"
        os.environ.update(PADDLE_DISTRI_BACKEND="gloo", PADDLE_TRAINER_ID=str(rank), PADDLE_TRAINERS_NUM=str(world),
                          PADDLE_MASTER=endpoint, PADDLE_CURRENT_ENDPOINT=endpoint,
                          PADDLE_TRAINER_ENDPOINTS=",".join([endpoint] * world))
        import paddle.distributed as dist

        dist.init_parallel_env()
        return dist, dist.get_group()  # FastDeploy's group
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=30))
    return dist, dist.group.WORLD


def main() -> None:
    module = importlib.import_module(f"tests.clients.{sys.argv[1]}")
    kind = sys.argv[2]
    rank, world, port = (int(a) for a in sys.argv[3:6])
    files = json.load(open(sys.argv[6]))
    out = os.path.join(sys.argv[7], f"rank{rank}.json")
    dist, pg = _init_group(kind, rank, world, port)
    report = {}
    for name, fn in sequences(module).items():
        try:
            fn(pg, files)
            report[name] = "ok"
        except (Exception, pytest.fail.Exception):  # noqa: BLE001 - reported to the test (pytest's failures too)
            report[name] = traceback.format_exc()
        with open(out + ".tmp", "w") as f:
            json.dump(report, f)
        os.replace(out + ".tmp", out)
        dist.barrier()  # a sequence failing on one rank must not shift the next one's collectives
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
