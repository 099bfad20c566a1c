"""Engine reliability (issue 11): bounded reader pools and refused threads, fork safety, only
regular files, verify bound to what was parsed, and Ctrl-C between batches.

Anything that could hang or abort the interpreter on a regression runs in a child process with a
timeout, so a failure is a failed test rather than a wedged or killed pytest.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import fastsafetensors
from fastsafetensors._src.files import read_file_header
from fastsafetensors import _cpp
from fastsafetensors._src.engine import MAX_THREADS, get_reader
from fastsafetensors.errors import ResourceError

from ._hardening import assert_exact, make_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def ckpt(tmp_path):
    paths = make_checkpoint(tmp_path, files=2)
    yield paths
    _cpp.testing.clear_faults()


def _run_child(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Runs ``code`` in a fresh interpreter with this checkout's package; a hang fails the test."""
    try:
        return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"child process hung (killed after {timeout} s): {exc.stdout!r} {exc.stderr!r}")


def _os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


# --- thread pools -------------------------------------------------------------------------------

def test_refused_thread_raises_and_next_load_works(ckpt):
    # On main the pool's constructor let std::system_error escape past joinable threads: SIGABRT.
    child = _run_child("""
        import sys
        import fastsafetensors
        from fastsafetensors import _cpp
        from fastsafetensors.errors import ResourceError
        from tests._hardening import assert_exact
        paths = sys.argv[1:]
        _cpp.testing.fail_thread_starts(3, 1)
        try:
            fastsafetensors.load(paths, threads=7)
        except ResourceError as exc:
            assert "thread" in str(exc) and exc.errno, exc
        else:
            raise SystemExit("no ResourceError")
        _cpp.testing.clear_faults()
        assert_exact(fastsafetensors.load(paths, threads=7), paths)
        print("ok")
    """, *ckpt)
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.strip() == "ok"


def test_refused_thread_leaves_no_thread_running(ckpt):
    before = _os_threads()
    _cpp.testing.fail_thread_starts(5, 1)
    with pytest.raises(ResourceError):
        _cpp.HostReader(12)
    assert _os_threads() == before


def test_readers_are_bounded(ckpt):
    fastsafetensors.load(ckpt, threads=1)
    before = _os_threads()
    for n in range(1, 41):
        assert_exact(fastsafetensors.load(ckpt, threads=n), ckpt)
    # Each distinct count used to keep its pool: 1 + 2 + ... + 39 = 780 threads; now the last two.
    assert _os_threads() - before <= 40 + 39


def test_same_threads_reuse_one_reader():
    assert get_reader(3) is get_reader(3)
    a, b = get_reader(5), get_reader(6)
    assert get_reader(5) is a and get_reader(6) is b  # alternating two settings keeps both


BAD_THREADS = [(True, TypeError), (1.5, TypeError), ("4", TypeError), (-1, ValueError), (0, ValueError),
               (MAX_THREADS + 1, ValueError)]


@pytest.mark.parametrize("value, error", BAD_THREADS)
def test_threads_validated_by_load(ckpt, value, error):
    with pytest.raises(error, match=r"threads must be"):
        fastsafetensors.load(ckpt, threads=value)


@pytest.mark.parametrize("value, error", BAD_THREADS)
def test_threads_validated_by_jax_load(ckpt, value, error):
    import fastsafetensors.jax as fjax

    with pytest.raises(error, match=r"threads must be"):
        fjax.load(ckpt, threads=value)


@pytest.mark.parametrize("value, error", BAD_THREADS)
def test_max_threads_validated_by_03_loader(value, error):
    from fastsafetensors import SafeTensorsFileLoader

    with pytest.raises(error, match=r"max_threads must be"):
        SafeTensorsFileLoader(None, "cpu", max_threads=value, framework="pytorch")


# --- fork safety --------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["load", "reader"])
def test_fork_during_loads(tmp_path, mode):
    # On main a child forked while the thread's load held the pool's mutexes waited for workers
    # that do not exist in it: it hung on its first load.
    paths = make_checkpoint(tmp_path, files=2, scale=16)
    try:
        child = subprocess.run([sys.executable, "-m", "tests.fork_harness", mode, "30", *paths], cwd=ROOT,
                               capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"fork harness hung: {exc.stdout!r}")
    assert child.returncode == 0, (child.stdout, child.stderr[-2000:])
    assert child.stdout.split() == ["ok"] * 30


# --- only regular files; EINTR retries stay interruptible ---------------------------------------

_FIFO_CHILD = """
    import sys
    import fastsafetensors
    from fastsafetensors import integrity
    from fastsafetensors.errors import NotRegularFileError
    from fastsafetensors._src.files import read_file_header
    call = {"load": fastsafetensors.load, "header": read_file_header,
            "verify": integrity.verify_file}[sys.argv[1]]
    try:
        call(sys.argv[2])
    except NotRegularFileError as exc:
        print(exc)
    else:
        raise SystemExit("no NotRegularFileError")
"""


@pytest.mark.parametrize("call", ["load", "header", "verify"])
def test_fifo_is_refused(tmp_path, call):
    # On main open(2) waited for a writer forever (and retried on EINTR, so Ctrl-C did not help).
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    child = _run_child(_FIFO_CHILD, call, str(fifo), timeout=30)
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.strip() == f"{fifo}: not a regular file (a FIFO)"


def test_fifo_in_checkpoint_dir_is_refused(tmp_path):
    make_checkpoint(tmp_path, files=1)
    os.mkfifo(tmp_path / "model-00009.safetensors")
    child = _run_child(_FIFO_CHILD, "load", str(tmp_path), timeout=30)
    assert child.returncode == 0, child.stderr[-2000:]
    assert "model-00009.safetensors: not a regular file (a FIFO)" in child.stdout


def test_fifo_index_is_refused(tmp_path):
    # On main open() of the index waited for a writer forever.
    os.mkfifo(tmp_path / "model.safetensors.index.json")
    child = _run_child("""
        import sys
        import fastsafetensors
        from fastsafetensors.errors import IndexMismatch
        try:
            fastsafetensors.load(sys.argv[1])
        except IndexMismatch as exc:
            print(exc)
    """, str(tmp_path), timeout=30)
    assert child.returncode == 0, child.stderr[-2000:]
    assert "model.safetensors.index.json: not a regular file (a FIFO)" in child.stdout


def test_directory_is_refused(tmp_path):
    from fastsafetensors.errors import NotRegularFileError

    with pytest.raises(NotRegularFileError, match=r"not a regular file \(a directory\)"):
        read_file_header(tmp_path)


@pytest.mark.parametrize("stage", ["header", "data"])
def test_ctrl_c_stops_endless_eintr(ckpt, stage):
    # Every read interrupted (EINTR), forever: the retry loop must still let SIGINT through. On
    # main it retried without end.
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys
        import fastsafetensors
        from fastsafetensors import _cpp
        from fastsafetensors._src.api import load_files
        from fastsafetensors._src.files import read_headers
        from fastsafetensors.frameworks import get_framework
        stage, paths = sys.argv[1], sys.argv[2:]
        files = read_headers(paths) if stage == "data" else None
        get_framework("numpy")  # imported now: a slow import must not be what the SIGINT interrupts
        _cpp.testing.set_fault("eintr", 0, -1)
        print("reading", flush=True)
        try:
            load_files(files, threads=1) if files else read_headers(paths[:1])
        except KeyboardInterrupt:
            print("interrupted", _cpp.testing.faults_injected() > 0, flush=True)
    """), stage, *ckpt], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "reading"
        time.sleep(0.5)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("SIGINT did not stop a read retried on EINTR")
    finally:
        child.kill()
        child.wait()
    assert child.returncode == 0, err[-2000:]
    assert out.strip() == "interrupted True"


# --- verify binds what was parsed to what was read ----------------------------------------------

def _twin_files(tmp_path):
    """Two files of the same size and header length whose tensors differ (name, shape, bytes)."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(5)
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    save_file({"x": torch.randn(64, 32, generator=g)}, str(a))
    save_file({"y": torch.randn(32, 64, generator=g)}, str(b))
    assert a.stat().st_size == b.stat().st_size
    return a.read_bytes(), b.read_bytes()


def test_file_swapped_after_header_is_refused(tmp_path):
    # On main the data of the swapped-in file was read with the first file's layout, and its digest
    # (hashed from a fresh read of the file) matched: tensor `x` came back holding `y`'s bytes.
    from fastsafetensors._src.api import load_files
    from fastsafetensors.errors import FileChangedError
    from fastsafetensors._src.files import read_headers
    from fastsafetensors.integrity import sha256_file

    a, b = _twin_files(tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(a)
    files = read_headers([str(path)])
    (tmp_path / "new").write_bytes(b)
    os.replace(tmp_path / "new", path)
    with pytest.raises(FileChangedError, match="replaced or modified after its header was read"):
        load_files(files, sha256={str(path): sha256_file(path)})


def test_verify_under_racing_swaps(tmp_path):
    # Loads with the expected digest of `a` while another thread renames copies of `a` and `b` over
    # the path: every load raises a typed error or returns exactly `a`'s tensors. On main some
    # loads returned `b`'s bytes as tensor `x` (the issue measured 55 of 400).
    import threading

    import numpy as np
    from safetensors.numpy import load as st_load

    from fastsafetensors.errors import IntegrityError, ReadError, SafeTensorsError
    from fastsafetensors.integrity import sha256_file

    a, b = _twin_files(tmp_path)
    want = st_load(a)
    path = tmp_path / "model.safetensors"
    path.write_bytes(a)
    digest = {str(path): sha256_file(path)}
    stop = threading.Event()

    def swap():
        k = 0
        while not stop.is_set():
            tmp = tmp_path / f"tmp{k % 2}"
            tmp.write_bytes(b if k % 2 else a)
            os.replace(tmp, path)
            k += 1

    thread = threading.Thread(target=swap)
    thread.start()
    outcomes = {"exact": 0, "refused": 0}
    try:
        for _ in range(300):
            try:
                out = fastsafetensors.load(str(path), sha256=digest)
            except (IntegrityError, ReadError, SafeTensorsError):
                outcomes["refused"] += 1
                continue
            assert set(out) == set(want)
            assert all(np.array_equal(out[k], want[k]) and out[k].tobytes() == want[k].tobytes() for k in want)
            outcomes["exact"] += 1
    finally:
        stop.set()
        thread.join()
    assert outcomes["exact"] + outcomes["refused"] == 300


# --- Ctrl-C between batches ---------------------------------------------------------------------

def test_ctrl_c_between_batches_without_progress_bar(tmp_path):
    # 16 reads of 1 MiB, each slowed to 250 ms (4 s in all), on one thread, in batches of 1 MiB; a
    # SIGINT after 1 s must stop the load at the next batch. On main, without a progress bar, the
    # whole plan was one read call: KeyboardInterrupt came only after every byte was read.
    import numpy as np
    from safetensors.numpy import save_file

    path = tmp_path / "big.safetensors"
    save_file({f"t{i}": np.full((1 << 18,), i, dtype=np.float32) for i in range(16)}, str(path))
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, time
        from fastsafetensors import _cpp
        from fastsafetensors._src import engine
        from fastsafetensors._src.files import read_headers
        from fastsafetensors._src.plan import plan_load
        engine._BATCH_BYTES = 1 << 20
        plan = plan_load(read_headers([sys.argv[1]]))
        _cpp.testing.set_fault("slow", 0, -1)
        print("reading", flush=True)
        start = time.monotonic()
        try:
            engine.read_into_host(plan, threads=1, chunk_bytes=1 << 20, progress=False)
        except KeyboardInterrupt:
            print("interrupted", _cpp.testing.pread_calls(), round(time.monotonic() - start, 2), flush=True)
    """), str(path)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "reading"
        time.sleep(1.0)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=30)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == 0, err[-2000:]
    word, reads, seconds = out.split()
    assert word == "interrupted"
    assert int(reads) < 12 and float(seconds) < 3.0, out  # all 16 reads take 4 s
