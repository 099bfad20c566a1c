"""Worker processes for the multi-process tests: a free port for their rendezvous, started together,
bounded in time, never left behind."""

from __future__ import annotations

import socket
import subprocess
from typing import List, Mapping, Sequence


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a rendezvous or a test server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_all(argvs: Sequence[Sequence[str]], *, env: Mapping[str, str], cwd: str, log_dir, timeout: float) -> None:
    """Runs every argv at once and waits for all of them (``timeout`` seconds each); a process still
    running then is killed. Fails, with the tail of every process's output, unless all exit 0."""
    logs = [open(f"{log_dir}/log{i}.txt", "w+") for i in range(len(argvs))]
    procs = [subprocess.Popen(list(argv), env=dict(env), cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
             for argv, log in zip(argvs, logs)]
    try:
        for p in procs:
            p.wait(timeout=timeout)
    finally:
        for p in procs:  # a process that hangs (or whose peer died) never outlives the test
            if p.poll() is None:
                p.kill()
            p.wait()
    outputs: List[str] = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read()[-3000:])
        log.close()
    assert [p.returncode for p in procs] == [0] * len(procs), "\n".join(outputs)
