"""The cuFile (GDS) path of the device reader, run on the CPU: a stand-in libcufile.so.0 built
here reads with pread into HostDevice memory, so splitting, routing, short reads and error
reporting of the GDS path are tested without a GPU. Runs in a subprocess: the engine loads
cuFile once per process, and the real library must never see host memory."""

import shutil
import subprocess
import sys
import textwrap

import pytest

FAKE_CUFILE = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>
typedef struct { int err; int cu_err; } E;
typedef struct { int type; union { int fd; void* h; } handle; const void* ops; } D;
static const E ok = {0, 0};
static long reads = 0, registered = 0;
E cuFileDriverOpen(void) { return ok; }
E cuFileDriverClose_v2(void) { return ok; }
E cuFileDriverGetProperties(void* p) { memset(p, 0, 64); return ok; }
E cuFileHandleRegister(void** fh, D* d) {
  if (getenv("FAKE_CUFILE_FAIL_HANDLE")) { E e = {5030, 0}; return e; }
  char path[64];
  snprintf(path, sizeof path, "/proc/self/fd/%d", d->handle.fd);
  int fd = open(path, O_RDONLY);  /* buffered: host memory is not aligned for O_DIRECT */
  *fh = (void*)(long)(fd + 1);
  return ok;
}
void cuFileHandleDeregister(void* fh) { close((int)(long)fh - 1); }
E cuFileBufRegister(const void* p, size_t n, int f) { registered++; return ok; }
E cuFileBufDeregister(const void* p) { registered--; return ok; }
ssize_t cuFileRead(void* fh, void* base, size_t size, off_t off, off_t boff) {
  reads++;
  if (getenv("FAKE_CUFILE_FAIL_READ")) return -5;
  size_t n = size < 65536 ? size : 65536;  /* short reads, as cuFile may return */
  return pread((int)(long)fh - 1, (char*)base + boff, n, off);
}
long fake_reads(void) { return reads; }
"""

CHILD = r"""
import ctypes, os, sys
sys.path.insert(0, os.getcwd())
from fastsafetensors import _cpp, errors
# Loaded first, under a path the engine is not told about: it must find the copy in the process.
lib = ctypes.CDLL(os.path.join(sys.argv[1], "libcufile.so.0"))
sys.path.insert(0, os.path.join(os.getcwd(), "tests"))
from test_device_pipeline import _check, _read, _checkpoint, per_tensor_plan
from fastsafetensors._src.files import read_headers
from fastsafetensors._src.plan import plan_load

status = _cpp.gds_status()
assert status["available"] and status["compat_mode"], status
assert sys.argv[1] in status["library"] and "already loaded" in status["library"], status
paths = [_checkpoint(os.path.join(sys.argv[2], f"g{i}.safetensors"), seed=i, prefix=f"g{i}.") for i in range(2)]
plan = plan_load(read_headers(paths))
dev = _cpp.testing.HostDevice(copy_delay_us=5)
reader = _cpp.DeviceReader(dev, 3, 3 * 2 * 8192, 1)
for p in (plan, per_tensor_plan(plan)):
    bufs, stats = _read(reader, p, dev, gds="direct", gds_register_bytes=4096)
    _check(paths, p, bufs)
    assert stats["gds_bytes"] == p.total_bytes and stats["gds_files"] == 2, stats
assert lib.fake_reads() > len(plan.ranges)
# auto: cached files are read buffered, uncached ones through cuFile
bufs, stats = _read(reader, plan, dev, gds="auto", warm_fraction=1.5)
_check(paths, plan, bufs)
assert stats["gds_bytes"] == plan.total_bytes
bufs, stats = _read(reader, plan, dev, gds="auto")
_check(paths, plan, bufs)
assert stats["gds_bytes"] == 0 and stats["staged_bytes"] + stats["mapped_bytes"] == plan.total_bytes
os.environ["FAKE_CUFILE_FAIL_READ"] = "1"
try:
    _read(reader, plan, dev, gds="direct")
    raise SystemExit("a failed cuFileRead did not raise")
except RuntimeError as exc:
    assert "gds" in str(exc) and ("g0.safetensors" in str(exc) or "g1.safetensors" in str(exc)), exc
del os.environ["FAKE_CUFILE_FAIL_READ"]
os.environ["FAKE_CUFILE_FAIL_HANDLE"] = "1"
try:
    _read(reader, plan, dev, gds="direct")
    raise SystemExit("a failed cuFileHandleRegister did not raise")
except errors.GdsError as exc:
    assert str(exc).startswith("gds:"), exc
del os.environ["FAKE_CUFILE_FAIL_HANDLE"]
bufs, stats = _read(reader, plan, dev, gds="direct")  # usable after errors
_check(paths, plan, bufs)
print("fake cuFile ok")
"""


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")
def test_gds_path_with_stand_in_cufile(tmp_path):
    lib_dir = tmp_path / "lib"
    lib_dir.mkdir()
    (tmp_path / "fake.c").write_text(FAKE_CUFILE)
    subprocess.run(["cc", "-shared", "-fPIC", "-O1", "-o", str(lib_dir / "libcufile.so.0"), str(tmp_path / "fake.c")],
                   check=True)
    data = tmp_path / "data"
    data.mkdir()
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(CHILD), str(lib_dir), str(data)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "fake cuFile ok" in r.stdout
