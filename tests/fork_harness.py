"""Forks while another thread loads, many times; each child must load exactly and exit 0.

Run as ``python -m tests.fork_harness MODE ITERATIONS FILE...``: MODE "load" loads with
fastsafetensors.load in the thread and the children; "reader" shares one HostReader between
them (the engine's own pool must survive fork, not just the Python cache of readers). Prints one
line per child ("ok", "failed <rc>" or "hung") and exits 1 unless every child was ok. A child
still running after its deadline is killed.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import fastsafetensors
from fastsafetensors import _cpp
from fastsafetensors._src.api import instantiate
from fastsafetensors._src.files import read_headers
from fastsafetensors.frameworks import get_framework
from fastsafetensors._src.plan import plan_load

from ._hardening import assert_exact

# A child loads a small checkpoint in well under a second; the sanitizers and a busy machine slow it
# many times over, and a child past its deadline counts as hung.
CHILD_SECONDS = 60 if os.environ.get("FST_SANITIZED") else 30


def load_with(reader, paths):
    if reader is None:
        return fastsafetensors.load(paths, threads=4)
    plan = plan_load(read_headers(paths))
    buffers = [_cpp.HostBuffer.allocate(n) for n in plan.buffer_sizes]
    reader.read(plan.sources(), plan.ranges, buffers)
    return instantiate(plan, buffers, get_framework("numpy"))


def wait_child(pid: int) -> str:
    deadline = time.monotonic() + CHILD_SECONDS
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return "ok" if os.waitstatus_to_exitcode(status) == 0 else f"failed {os.waitstatus_to_exitcode(status)}"
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return "hung"


def main() -> int:
    mode, iterations, paths = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    reader = _cpp.HostReader(4) if mode == "reader" else None
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            load_with(reader, paths)

    # One load first: a child forked while the thread is inside its first load's lazy imports (the
    # framework module) waits forever on CPython's lock for that module, which no thread of the child
    # holds. That is Python's import machinery, not the engine's state this harness is about.
    load_with(reader, paths)
    thread = threading.Thread(target=loop)
    thread.start()
    results = []
    try:
        for i in range(iterations):
            time.sleep(0.002 * (i % 7))  # land at different points of the thread's loads
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    assert_exact(load_with(reader, paths), paths)
                    code = 0
                finally:
                    os._exit(code)
            results.append(wait_child(pid))
            print(results[-1], flush=True)
    finally:
        stop.set()
        thread.join()
    return 0 if all(r == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
