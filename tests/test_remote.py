"""Checkpoints from object storage: s3:// against moto's S3 server and http:// against nginx, both
on 127.0.0.1, with faults injected by a proxy (tests/remote_servers.py). Every tensor is compared
bit for bit with safetensors reading the local file the objects were uploaded from."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import fastsafetensors
from fastsafetensors import errors
from fastsafetensors._src.files import open_checkpoint

from tests.helpers import RecordingBar, assert_same_tensor, random_tensor, save
from tests.remote_servers import (TEST_CREDENTIALS, Fault, FaultProxy, moto_server, nginx_missing, nginx_server,
                             storage_options, upload)

pytest.importorskip("obstore", reason="the remote tests need obstore (pip install fastsafetensors[remote])")
pytestmark = pytest.mark.timeout(120)

BUCKET = "ckpt"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """The checkpoints, written by safetensors: ``{key: local path}`` as they are uploaded."""
    d = tmp_path_factory.mktemp("remote-src")
    files = {}
    files["one/model.safetensors"] = save(d / "model.safetensors", {
        "big": random_tensor("F32", (1024, 900), 1),  # 3.5 MiB: split into 1 MiB GETs below
        "small_bf16": random_tensor("BF16", (7, 3), 2), "ids": random_tensor("I64", (5,), 3),
        "scalar": random_tensor("F16", (), 4), "empty": torch.empty(0, 3)})
    # Many tensors: a header of ~20 KiB, larger than a 1 KiB first GET.
    files["wide/wide.safetensors"] = save(d / "wide.safetensors",
                                          {f"layer.{i}.weight_with_a_long_name": random_tensor("F16", (4,), 10 + i)
                                           for i in range(300)})
    for k in range(3):
        files[f"multi/part-{k}.safetensors"] = save(d / f"part-{k}.safetensors", {
            f"layer{k}.w": random_tensor("F32", (16, 8 + k), 20 + k),
            f"layer{k}.b": random_tensor("BF16", (9,), 30 + k)})
    weight_map = {}
    for k in range(2):
        name = f"model-0000{k + 1}-of-00002.safetensors"
        tensors = {f"block{k}.{n}": random_tensor("F32", (32, 4 + k), 40 + 2 * k + j) for j, n in enumerate("ab")}
        files[f"sharded/{name}"] = save(d / name, tensors)
        weight_map.update({n: name for n in tensors})
    index = d / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    files["sharded/model.safetensors.index.json"] = str(index)
    escape = d / "escape.index.json"
    escape.write_text(json.dumps({"weight_map": {"x": "../one/model.safetensors"}}))
    files["sharded-bad/model.safetensors.index.json"] = str(escape)
    with open(files["one/model.safetensors"], "rb") as f:
        cut = d / "cut.safetensors"
        cut.write_bytes(f.read()[:-100])
    files["cut/cut.safetensors"] = str(cut)
    (d / "empty.safetensors").write_bytes(b"")
    files["cut/empty.safetensors"] = str(d / "empty.safetensors")
    return files


@pytest.fixture(scope="module")
def s3(local):
    """moto's S3 server holding the checkpoints in bucket ``ckpt``, behind a fault proxy."""
    with moto_server() as endpoint:
        upload(endpoint, BUCKET, local)
        with FaultProxy(endpoint) as proxy:
            yield proxy


@pytest.fixture
def proxy(s3):
    s3.clear()
    yield s3
    s3.clear()


def _expect(local, *keys):
    want = {}
    for key in keys:
        want.update(load_file(local[key]))
    return want


def _same(got, want):
    assert sorted(got) == sorted(want)
    for name, t in want.items():
        assert_same_tensor(got[name], t, name)


def test_one_object_bit_for_bit_and_metrics(local, proxy):
    metrics = fastsafetensors.LoadMetrics()
    got = fastsafetensors.load(f"s3://{BUCKET}/one/model.safetensors", "torch",
                               storage_options=storage_options(proxy.url),
                               metrics=metrics)
    _same(got, _expect(local, "one/model.safetensors"))
    size = os.path.getsize(local["one/model.safetensors"])
    assert metrics.remote_requests == len(proxy.ranges()) and metrics.remote_retries == 0
    assert metrics.bytes_read == size - open_checkpoint(local["one/model.safetensors"])[0].header.data_start
    # The first GET (1 MiB by default) holds the header; the data follows once, nothing else.
    assert metrics.remote_bytes == proxy.body_bytes()
    assert size <= metrics.remote_bytes <= size + (1 << 20)
    assert f"{metrics.remote_requests} requests, 0 retries" in metrics.summary()


def test_progress_bar_counts_the_bytes(local, proxy, monkeypatch):
    from fastsafetensors._src import engine

    bars = []
    monkeypatch.setattr(engine, "progress_bar", lambda total, progress: bars.append(RecordingBar(total())) or bars[-1])
    metrics = fastsafetensors.LoadMetrics()
    fastsafetensors.load(f"s3://{BUCKET}/one/model.safetensors", storage_options=storage_options(proxy.url),
                         progress=True, metrics=metrics)
    assert len(bars) == 1 and bars[0].closed and bars[0].n == bars[0].total == metrics.bytes_read > 0


def test_prefix_list_and_index(local, proxy):
    opts = storage_options(proxy.url)
    multi = [f"multi/part-{k}.safetensors" for k in range(3)]
    _same(fastsafetensors.load(f"s3://{BUCKET}/multi/", "torch", storage_options=opts), _expect(local, *multi))
    _same(fastsafetensors.load(f"s3://{BUCKET}/multi", "torch", storage_options=opts), _expect(local, *multi))
    _same(fastsafetensors.load([f"s3://{BUCKET}/{k}" for k in multi[:2]], "torch", storage_options=opts),
          _expect(local, *multi[:2]))
    shards = [k for k in local if k.startswith("sharded/") and k.endswith(".safetensors")]
    want = _expect(local, *shards)
    _same(fastsafetensors.load(f"s3://{BUCKET}/sharded/", "torch", storage_options=opts), want)
    _same(fastsafetensors.load(f"s3://{BUCKET}/sharded/model.safetensors.index.json", "torch",
                               storage_options=opts), want)


def test_names_fetch_only_their_bytes(local, proxy, monkeypatch):
    monkeypatch.setenv("FASTSAFETENSORS_REMOTE_HEADER_KB", "4")
    got = fastsafetensors.load(f"s3://{BUCKET}/one/model.safetensors", "torch", names="ids",
                               storage_options=storage_options(proxy.url))
    _same(got, {"ids": load_file(local["one/model.safetensors"])["ids"]})
    assert proxy.body_bytes() == 4096 + 40  # the first GET, then the 5 int64 of `ids` alone


def test_header_larger_than_first_get_takes_a_second(local, proxy, monkeypatch):
    monkeypatch.setenv("FASTSAFETENSORS_REMOTE_HEADER_KB", "1")
    files = open_checkpoint(f"s3://{BUCKET}/wide/wide.safetensors", storage_options=storage_options(proxy.url))
    assert files[0].header.header_length > 1024
    assert [r for _, r in proxy.ranges()] == ["bytes=0-1023", f"bytes=1024-{files[0].header.data_start - 1}"]
    proxy.clear()
    monkeypatch.setenv("FASTSAFETENSORS_REMOTE_HEADER_KB", "64")
    open_checkpoint(f"s3://{BUCKET}/wide/wide.safetensors", storage_options=storage_options(proxy.url))
    assert len(proxy.ranges()) == 1


def test_big_ranges_split_small_ones_share_a_get(local, proxy, monkeypatch):
    monkeypatch.setenv("FASTSAFETENSORS_REMOTE_CHUNK_MB", "1")
    monkeypatch.setenv("FASTSAFETENSORS_REMOTE_HEADER_KB", "1")
    got = fastsafetensors.load(f"s3://{BUCKET}/one/model.safetensors", "torch",
                               storage_options=storage_options(proxy.url))
    _same(got, _expect(local, "one/model.safetensors"))
    data = proxy.ranges()[1:]  # after the header's GET
    sizes = [int(r.split("-")[1]) - int(r.split("=")[1].split("-")[0]) + 1 for _, r in data]
    assert max(sizes) == 1 << 20 and len(data) == 4  # 3.5 MiB of `big` in 4 GETs, the small tensors in the last


def test_https_style_urls_against_nginx(local, tmp_path_factory):
    why = nginx_missing()
    if why:
        pytest.skip(why)
    root = tmp_path_factory.mktemp("www")
    for key, path in local.items():
        os.makedirs(root / os.path.dirname(key), exist_ok=True)
        shutil.copy(path, root / key)
    shutil.copy(local["one/model.safetensors"], root / "sharded" / "model.safetensors")  # the index wins
    with nginx_server(str(root)) as endpoint:
        _same(fastsafetensors.load(f"{endpoint}/one/model.safetensors", "torch"),
              _expect(local, "one/model.safetensors"))
        shards = [k for k in local if k.startswith("sharded/") and k.endswith(".safetensors")]
        _same(fastsafetensors.load(f"{endpoint}/sharded/", "torch"), _expect(local, *shards))
        with pytest.raises(errors.RemoteNotFoundError, match="cannot be listed"):
            fastsafetensors.load(f"{endpoint}/multi/")
        with pytest.raises(errors.HeaderTooSmall, match="has 0 bytes"):  # nginx answers 416 to its range
            fastsafetensors.load(f"{endpoint}/cut/empty.safetensors")
        cli = subprocess.run([sys.executable, "-m", "fastsafetensors", "load", f"{endpoint}/sharded/", "-q"],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert cli.returncode == 0 and "4 tensors from 2 file(s)" in cli.stdout, cli.stdout + cli.stderr
        # Rewritten after its header was read: another ETag, so the GETs are refused (412).
        files = open_checkpoint(f"{endpoint}/one/model.safetensors")
        with open(root / "one" / "model.safetensors", "r+b") as f:
            f.seek(-1, os.SEEK_END)
            f.write(b"\x01")
        os.utime(root / "one" / "model.safetensors", (1, 1))
        with pytest.raises(errors.RemoteObjectChangedError, match=f"{endpoint}/one/model.safetensors"):
            fastsafetensors._src.api.load_files(files, "torch")


def test_object_replaced_after_its_header_was_read(local, proxy):
    from tests.remote_servers import s3_client

    url = f"s3://{BUCKET}/replaced/model.safetensors"
    upload(proxy.url, BUCKET, {"replaced/model.safetensors": local["one/model.safetensors"]})
    files = open_checkpoint(url, storage_options=storage_options(proxy.url))
    s3_client(proxy.url).upload_file(local["multi/part-0.safetensors"], BUCKET, "replaced/model.safetensors")
    with pytest.raises(errors.RemoteObjectChangedError, match=url) as info:
        fastsafetensors._src.api.load_files(files, "torch")
    assert isinstance(info.value, errors.FileChangedError)


@pytest.mark.parametrize("fault", [Fault("status", status=503, times=2), Fault("status", status=500, times=1),
                                   Fault("status", status=429, times=2),
                                   Fault("drop", times=2), Fault("truncate", times=1),
                                   Fault("delay", seconds=0.2, times=3)], ids=lambda f: f"{f.kind}{f.status}")
def test_transient_faults_are_retried(local, proxy, fault):
    metrics = fastsafetensors.LoadMetrics()
    expected_retries = 0 if fault.kind == "delay" else fault.times
    proxy.inject(fault)
    got = fastsafetensors.load(f"s3://{BUCKET}/multi/part-1.safetensors", "torch",
                               storage_options=storage_options(proxy.url),
                               metrics=metrics)
    _same(got, _expect(local, "multi/part-1.safetensors"))
    assert metrics.remote_retries == expected_retries


def _without_allow_http(proxy):
    return {k: v for k, v in storage_options(proxy.url).items() if k != "allow_http"}


def test_allow_http_from_the_environment(local, proxy, monkeypatch):
    """AWS_ALLOW_HTTP=true is honoured like storage_options' allow_http (the explicit client options
    fastsafetensors passes used to replace the environment's)."""
    monkeypatch.setenv("AWS_ALLOW_HTTP", "true")
    metrics = fastsafetensors.LoadMetrics()
    got = fastsafetensors.load(f"s3://{BUCKET}/multi/part-0.safetensors", "torch",
                               storage_options=_without_allow_http(proxy), metrics=metrics)
    _same(got, _expect(local, "multi/part-0.safetensors"))
    assert metrics.remote_retries == 0


def test_plain_http_without_allow_http_fails_at_once_saying_what_to_set(proxy, monkeypatch):
    monkeypatch.delenv("AWS_ALLOW_HTTP", raising=False)
    url = f"s3://{BUCKET}/multi/part-0.safetensors"
    metrics = fastsafetensors.LoadMetrics()
    with pytest.raises(errors.UnsupportedURLError, match="allow_http") as info:
        fastsafetensors.load(url, storage_options=_without_allow_http(proxy), metrics=metrics)
    shown = str(info.value)
    assert url in shown and proxy.url in shown and "AWS_ALLOW_HTTP=true" in shown
    assert TEST_CREDENTIALS["aws_secret_access_key"] not in shown and "Debug" not in shown
    assert metrics.remote_requests == 1 and metrics.remote_retries == 0 and proxy.requests == []


def test_a_request_past_the_timeout_is_retried(local, proxy, monkeypatch):
    monkeypatch.setenv("FASTSAFETENSORS_REMOTE_TIMEOUT", "0.5")
    proxy.inject(Fault("delay", seconds=2.0, times=1))
    metrics = fastsafetensors.LoadMetrics()
    got = fastsafetensors.load(f"s3://{BUCKET}/multi/part-0.safetensors", "torch",
                               storage_options=storage_options(proxy.url), metrics=metrics)
    _same(got, _expect(local, "multi/part-0.safetensors"))
    assert metrics.remote_retries == 1


@pytest.mark.parametrize("kind,status,error", [
    ("status", 503, errors.RemoteReadError), ("status", 500, errors.RemoteReadError),
    ("drop", 0, errors.RemoteReadError), ("truncate", 0, errors.ReadError),
    ("status", 403, errors.RemoteAccessDeniedError), ("status", 404, errors.RemoteNotFoundError)])
def test_persistent_faults_raise_typed_errors(proxy, monkeypatch, kind, status, error):
    monkeypatch.setenv("FASTSAFETENSORS_REMOTE_RETRIES", "2")
    url = f"s3://{BUCKET}/multi/part-2.safetensors"
    proxy.inject(Fault(kind, status=status, times=1000))
    metrics = fastsafetensors.LoadMetrics()
    with pytest.raises(error, match=url) as info:
        fastsafetensors.load(url, "torch", storage_options=storage_options(proxy.url), metrics=metrics)
    assert info.value.filename == url
    retried = error in (errors.RemoteReadError, errors.ReadError)
    assert metrics.remote_retries == (2 if retried else 0)
    assert len(proxy.requests) == (3 if retried else 1)


def test_fault_mid_load_returns_nothing(local, proxy, monkeypatch):
    """The header reads fine; a data GET fails every time: the load raises, no partial dict."""
    monkeypatch.setenv("FASTSAFETENSORS_REMOTE_RETRIES", "1")
    monkeypatch.setenv("FASTSAFETENSORS_REMOTE_CHUNK_MB", "1")
    live = fastsafetensors._cpp.testing.host_live_bytes()
    proxy.inject(Fault("truncate", times=1000, match=lambda m, p, h: "bytes=0-" not in h.get("range", "bytes=0-")))
    with pytest.raises(errors.ReadError, match=f"s3://{BUCKET}/one/model.safetensors") as info:
        fastsafetensors.load(f"s3://{BUCKET}/one/model.safetensors", storage_options=storage_options(proxy.url))
    assert info.value.offset > 0  # a data GET failed, not the header's
    # Freed at once, though the error's traceback (held by `info`) still holds the load's frames.
    assert fastsafetensors._cpp.testing.host_live_bytes() <= live


_INTERRUPTED_LOAD = """
import sys, time
import fastsafetensors
url, endpoint = sys.argv[1:3]
opts = {"endpoint": endpoint, "allow_http": True, "access_key_id": "AKIATESTKEYID0000000",
        "secret_access_key": "s3cr3t-test-KEY-do-not-log", "region": "us-east-1"}
try:
    fastsafetensors.load(url, storage_options=opts)
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""


def test_ctrl_c_aborts_the_gets_in_flight(proxy, monkeypatch):
    """Ctrl-C while data GETs wait on a slow server: the load raises KeyboardInterrupt and the process
    ends within seconds, not when the GETs reach the 60 s timeout (or the 20 s server delay)."""
    monkeypatch.setenv("FASTSAFETENSORS_REMOTE_CHUNK_MB", "1")
    # Not the header's GET (obstore sends the header in lower case: `range`).
    proxy.inject(Fault("delay", seconds=20, times=1000, match=lambda m, p, h: "bytes=0-" not in h.get("range", "bytes=0-")))
    child = subprocess.Popen([sys.executable, "-c", _INTERRUPTED_LOAD, f"s3://{BUCKET}/one/model.safetensors",
                              proxy.url], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while sum(1 for r in proxy.requests if r.fault == "delay") < 2:  # data GETs waiting
            assert child.poll() is None and time.monotonic() < deadline, child.stderr and child.stderr.read()
            time.sleep(0.05)
        interrupted = time.monotonic()
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=15)
        assert child.returncode == 0 and out.strip() == "interrupted", err
        assert time.monotonic() - interrupted < 5
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()


def test_missing_objects_and_buckets(proxy):
    opts = storage_options(proxy.url)
    for url in (f"s3://{BUCKET}/one/nothing.safetensors", "s3://no-such-bucket/x.safetensors"):
        with pytest.raises(errors.RemoteNotFoundError, match=url) as info:
            fastsafetensors.load(url, storage_options=opts)
        assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(errors.RemoteNotFoundError, match="no .safetensors objects"):
        fastsafetensors.load(f"s3://{BUCKET}/nothing-here/", storage_options=opts)


@pytest.mark.parametrize("name,error", [("cut", errors.SafeTensorsError), ("empty", errors.HeaderTooSmall)])
def test_truncated_or_empty_object_is_a_format_error(proxy, name, error):
    url = f"s3://{BUCKET}/cut/{name}.safetensors"
    with pytest.raises(error, match=url):
        fastsafetensors.load(url, storage_options=storage_options(proxy.url))


def test_index_entries_stay_under_the_prefix(proxy):
    with pytest.raises(errors.IndexPathError, match="not inside"):
        fastsafetensors.load(f"s3://{BUCKET}/sharded-bad/", storage_options=storage_options(proxy.url))


@pytest.mark.parametrize("url,match", [
    ("ftp://host/x.safetensors", "unsupported URL scheme 'ftp'"),
    ("http://example.com/x.safetensors", "loopback"),
    ("s3://AKIA:hunter2@bucket/x.safetensors", "credentials in a URL"),
    ("s3://bucket/x.safetensors?X-Amz-Signature=hunter2", "query"),
])
def test_unsupported_urls(url, match):
    with pytest.raises(errors.UnsupportedURLError, match=match) as info:
        fastsafetensors.load(url)
    assert "hunter2" not in str(info.value)


def test_urls_and_paths_do_not_mix(local):
    with pytest.raises(errors.UnsupportedURLError, match="not both"):
        fastsafetensors.load([local["one/model.safetensors"], f"s3://{BUCKET}/x.safetensors"])
    with pytest.raises(ValueError, match="storage_options"):
        fastsafetensors.load(local["one/model.safetensors"], storage_options={"region": "x"})


def test_secrets_never_in_errors_or_logs(proxy, caplog):
    secret = TEST_CREDENTIALS["aws_secret_access_key"]
    caplog.set_level(logging.DEBUG)
    proxy.inject(Fault("status", status=403, times=10))
    with pytest.raises(errors.RemoteAccessDeniedError) as denied:
        fastsafetensors.load(f"s3://{BUCKET}/multi/part-0.safetensors", storage_options=storage_options(proxy.url))
    with pytest.raises(errors.UnsupportedURLError) as bad_option:
        fastsafetensors.load(f"s3://{BUCKET}/multi/part-0.safetensors",
                             storage_options={**storage_options(proxy.url), "no_such_option": secret})
    ok = fastsafetensors.LoadMetrics()
    proxy.clear()
    fastsafetensors.load(f"s3://{BUCKET}/multi/part-0.safetensors",
                         storage_options=storage_options(proxy.url), metrics=ok)
    for exc in (denied.value, bad_option.value):
        shown = f"{exc} {exc!r} {exc.__cause__!r}"
        assert secret not in shown and TEST_CREDENTIALS["aws_access_key_id"] not in shown
    assert secret not in caplog.text and secret not in ok.summary()


def test_03_loaders_read_urls(local, proxy):
    """fastsafe_open over a prefix, SafeTensorsFileLoader's getters and ParallelLoader, one process."""
    from fastsafetensors import ParallelLoader, SafeTensorsFileLoader, fastsafe_open

    opts = storage_options(proxy.url)
    multi = [f"multi/part-{k}.safetensors" for k in range(3)]
    want = _expect(local, *multi)
    with fastsafe_open(f"s3://{BUCKET}/multi/", storage_options=opts) as f:
        _same({n: f.get_tensor(n) for n in f.keys()}, want)
    loader = SafeTensorsFileLoader(None, "cpu", storage_options=opts)
    loader.add_filenames({0: [f"s3://{BUCKET}/one/model.safetensors"]})
    fb = loader.copy_files_to_device()
    one = _expect(local, "one/model.safetensors")
    _same({n: fb.get_tensor(n) for n in fb.get_keys()}, one)
    assert_same_tensor(fb.get_sharded("big", 1), one["big"], "big")
    _same(dict(ParallelLoader(None, [f"s3://{BUCKET}/{k}" for k in multi], storage_options=opts).iterate_weights()),
          want)


def test_parallel_loader_gets_each_header_once_and_keeps_it_pinned(local, proxy, monkeypatch):
    """Its batches reuse the headers read when it was made: one header GET per object, whatever the
    number of batches, and an object replaced since fails its batch instead of being read anew."""
    from fastsafetensors import ParallelLoader
    from tests.remote_servers import s3_client

    monkeypatch.setenv("FASTSAFETENSORS_REMOTE_HEADER_KB", "1")  # header GETs are bytes=0-1023, data GETs are not
    multi = [f"multi/part-{k}.safetensors" for k in range(3)]
    loader = ParallelLoader(None, [f"s3://{BUCKET}/{k}" for k in multi], storage_options=storage_options(proxy.url))
    _same(dict(loader.iterate_weights()), _expect(local, *multi))
    headers = sorted(path for path, r in proxy.ranges() if r == "bytes=0-1023")
    assert headers == sorted(f"/{BUCKET}/{k}" for k in multi)

    key = "replaced-pl/part-1.safetensors"
    upload(proxy.url, BUCKET, {"replaced-pl/part-0.safetensors": local[multi[0]], key: local[multi[1]]})
    loader = ParallelLoader(None, [f"s3://{BUCKET}/replaced-pl/part-{k}.safetensors" for k in range(2)], storage_options=storage_options(proxy.url))
    s3_client(proxy.url).upload_file(local[multi[2]], BUCKET, key)  # replaced after the headers were read
    got = {}
    with pytest.raises(errors.RemoteObjectChangedError, match=f"s3://{BUCKET}/{key}"):
        for name, tensor in loader.iterate_weights():
            got[name] = tensor
    _same(got, _expect(local, multi[0]))  # the first batch, read before


def test_one_prefix_string_stands_for_its_objects(local, proxy):
    """ParallelLoader, SafeTensorsFileLoader.add_filenames and fastsafe_open take one prefix (or an
    index) as load() does; among other URLs it is refused, never GET as one object."""
    from fastsafetensors import ParallelLoader, SafeTensorsFileLoader, fastsafe_open

    opts = storage_options(proxy.url)
    multi = [f"multi/part-{k}.safetensors" for k in range(3)]
    want = _expect(local, *multi)
    for spec in (f"s3://{BUCKET}/multi/", f"s3://{BUCKET}/multi"):
        proxy.clear()
        _same(dict(ParallelLoader(None, spec, storage_options=opts).iterate_weights()), want)
        assert len([r for r in proxy.requests if r.method == "GET" and "list-type" in r.path]) == 1
    shards = [k for k in local if k.startswith("sharded/") and k.endswith(".safetensors")]
    _same(dict(ParallelLoader(None, f"s3://{BUCKET}/sharded/model.safetensors.index.json",
                              storage_options=opts).iterate_weights()), _expect(local, *shards))
    _same(dict(ParallelLoader(None, local["multi/part-0.safetensors"]).iterate_weights()), _expect(local, multi[0]))
    loader = SafeTensorsFileLoader(None, "cpu", storage_options=opts)
    loader.add_filenames({0: f"s3://{BUCKET}/multi/"})
    assert sorted(loader.get_keys()) == sorted(want)
    mixed = [f"s3://{BUCKET}/multi/", f"s3://{BUCKET}/one/model.safetensors"]
    for refused in (lambda: ParallelLoader(None, mixed, storage_options=opts),
                    lambda: SafeTensorsFileLoader(None, "cpu", storage_options=opts).add_filenames({0: mixed}),
                    lambda: fastsafe_open(mixed[::-1], storage_options=opts),
                    lambda: fastsafetensors.load([f"s3://{BUCKET}/sharded/model.safetensors.index.json", mixed[1]],
                                                 storage_options=opts)):
        proxy.clear()
        with pytest.raises(errors.UnsupportedURLError, match="only when it is the only URL given: pass it alone"):
            refused()
        assert proxy.requests == []


def test_03_loaders_read_urls_in_a_gloo_group(proxy, tmp_path):
    """Two gloo ranks; credentials and endpoint from the environment (tests/clients/remote_urls.py):
    each rank GETs its objects and shares their tensors, or GETs only its own slices (direct_read
    None and True, per-rank filters), counting the bytes; objects replaced mid-load."""
    from tests import tp_harness
    from tests.clients import remote_urls
    from tests.clients.ranks import checkpoint, sequences

    files = checkpoint()
    one_row = save(tmp_path / "one-row.safetensors", {"one_row": random_tensor("F32", (1, 64), 7)})
    upload(proxy.url, "ranks", {**{os.path.basename(f): f for f in files},
                                **{f"fault/{os.path.basename(f)}": f for f in files},
                                "fault/one-row.safetensors": one_row})
    env = {"AWS_ENDPOINT": proxy.url, "AWS_ALLOW_HTTP": "true", "AWS_ACCESS_KEY_ID": TEST_CREDENTIALS["aws_access_key_id"],
           "AWS_SECRET_ACCESS_KEY": TEST_CREDENTIALS["aws_secret_access_key"],
           "AWS_REGION": TEST_CREDENTIALS["aws_region"], "FASTSAFETENSORS_REMOTE_HEADER_KB": "8"}
    reports = tp_harness.run_group(2, files, extra_env=env, worker=("-m", "tests.clients.ranks", "remote_urls", "torch"))
    for rank, report in enumerate(reports):
        for name in sequences(remote_urls):
            assert report.get(name) == "ok", f"rank {rank}, {name}: {report.get(name)}\n{report.get('__log__')}"


def test_03_loaders_refuse_what_urls_cannot_do(local, proxy):
    from fastsafetensors import SafeTensorsFileLoader
    from fastsafetensors.st_types import Device

    loader = SafeTensorsFileLoader(None, "cpu", storage_options=storage_options(proxy.url))
    loader.add_filenames({0: f"s3://{BUCKET}/one/model.safetensors"})
    loader.device = Device.from_str("cuda:0")  # a GPU load without GDS switched off (this machine may have no GPU)
    with pytest.raises(errors.UnsupportedURLError, match="nogds=True"):
        loader.copy_files_to_device()

    with pytest.raises(errors.InvalidArgumentError, match="storage_options"):
        SafeTensorsFileLoader(None, "cpu", storage_options={}).add_filenames({0: [local["one/model.safetensors"]]})
    with pytest.raises(TypeError, match="storage_option"):
        SafeTensorsFileLoader(None, "cpu", storage_option={})


def test_no_obstore_import_until_a_url_and_a_typed_error_without_it():
    code = ("import sys; import fastsafetensors; assert 'obstore' not in sys.modules, 'imported'\n"
            "sys.modules['obstore'] = None\n"
            "try:\n    fastsafetensors.load('s3://b/x.safetensors')\n"
            "except fastsafetensors.errors.RemoteUnavailableError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "pip install fastsafetensors[remote]" in out.stdout


def test_jax_sharded_load_reads_each_device_shard(local, proxy):
    jax = pytest.importorskip("jax")
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    import fastsafetensors.jax as fj

    devices = jax.devices()[:4]
    mesh = Mesh(devices, ("d",))
    url = f"s3://{BUCKET}/one/model.safetensors"
    metrics = fj.JaxLoadMetrics()
    out = fj.load(url, {"big": NamedSharding(mesh, P("d", None))}, storage_options=storage_options(proxy.url),
                  metrics=metrics)
    ref = load_file(local["one/model.safetensors"])["big"].numpy()
    for shard in out["big"].addressable_shards:
        assert shard.data.tobytes() == ref[shard.index].tobytes()
    assert metrics.remote_bytes <= ref.nbytes + (1 << 20)  # the header GET plus `big` once


def test_plan_gets_split_merge_and_gaps():
    from fastsafetensors._cpp import ReadRange
    from fastsafetensors._src.remote.reader import plan_gets

    ranges = [ReadRange(0, 0, 100, 10, 0), ReadRange(0, 1, 0, 50, 0),  # out of order: sorted by offset
              ReadRange(0, 0, 115, 30, 10),  # 5 bytes after the first: shares its GET (gap 8)
              ReadRange(0, 0, 200, 10, 40),  # 55 bytes on: a GET of its own
              ReadRange(1, 0, 0, 25, 0)]  # another object: another GET, split at the chunk of 16
    gets = plan_gets(ranges, chunk=16 * 10, gap=8)
    assert [(g.file, g.start, g.end) for g in gets] == [(0, 0, 50), (0, 100, 145), (0, 200, 210), (1, 0, 25)]
    assert gets[1].parts == [(100, 10, 0, 0), (115, 30, 0, 10)]
    small = plan_gets(ranges, chunk=16, gap=8)
    assert max(g.end - g.start for g in small) == 16
    assert sum(g.wanted for g in small) == sum(r.length for r in ranges)
    # A range cut across GETs lands contiguously in its destination.
    big = [p for g in small for p in g.parts if p[2] == 1 and g.file == 0]
    assert [(p[0], p[3]) for p in big] == [(0, 0), (16, 16), (32, 32), (48, 48)]


def test_pieces_go_into_the_host_buffers_by_bounds_checked_writes(monkeypatch):
    """The reader copies each response piece with HostBuffer.write (pages mapped in first, no GIL):
    pieces cut across the parts land at their offsets; a write past the buffer or of strided bytes
    raises instead of copying."""
    import types

    import numpy as np

    from fastsafetensors import _cpp
    from fastsafetensors._cpp import ReadRange
    from fastsafetensors._src.remote import reader
    from fastsafetensors._src.remote.requests import Counters

    size, piece_size = 3 << 20, (1 << 20) + 7  # pieces straddle the two parts below
    data = bytes(range(251)) * (size // 251 + 1)

    def stream_range(obj, start, end, counters, deliver):  # the response in pieces, no network
        for at in range(start, end, piece_size):
            deliver(at, data[at:min(end, at + piece_size)])

    monkeypatch.setattr(reader, "stream_range", stream_range)
    ranges = [ReadRange(0, 0, 0, size // 2, 64), ReadRange(0, 1, size // 2, size - size // 2, 0)]
    plan = types.SimpleNamespace(ranges=ranges, files=[types.SimpleNamespace(remote=None)])
    buffers = [_cpp.HostBuffer.allocate(size // 2 + 64), _cpp.HostBuffer.allocate(size - size // 2)]
    assert reader.read_ranges(plan, buffers, Counters(), concurrency=2) == ([size], 0)
    got = [np.from_dlpack(b.view(0, [b.size], 1, 8)).tobytes() for b in buffers]
    assert got[0][64:] == data[:size // 2] and got[1] == data[size // 2:size]

    small = _cpp.HostBuffer.allocate(16)
    small.write(8, b"12345678")
    with pytest.raises(ValueError, match="outside its buffer"):
        small.write(9, b"12345678")
    with pytest.raises(ValueError, match="outside its buffer"):
        small.write(1 << 62, b"")
    with pytest.raises(ValueError, match="contiguous"):
        small.write(0, memoryview(b"abcdefgh")[::2])
    assert np.from_dlpack(small.view(8, [8], 1, 8)).tobytes() == b"12345678"


@pytest.mark.parametrize("argv,match", [(["inspect", "s3://bucket/x.safetensors"], "read local files"),
                                        (["verify", "s3://bucket/x.safetensors"], "read local files"),
                                        (["load", "ftp://bucket/x.safetensors"], "unsupported URL scheme")])
def test_command_line_says_what_it_does_with_urls(argv, match, capsys):
    from fastsafetensors._src.cli import main

    assert main(argv) == 1
    assert match in capsys.readouterr().err


def test_pieces_count_each_file_once_local_or_remote(local, proxy):
    """LoadMetrics.files counts each file read from once, however many reads touched it, whether
    the pieces come from local files (preadv) or from objects (ranged GETs)."""
    import numpy as np

    from fastsafetensors._src.direct_read import read_pieces
    from fastsafetensors._src.distributed import Entry, Piece

    keys = [f"multi/part-{k}.safetensors" for k in range(3)]
    want = _expect(local, *keys)
    for paths, opts in (([local[k] for k in keys], None),
                        ([f"s3://{BUCKET}/{k}" for k in keys], storage_options(proxy.url))):
        metrics = fastsafetensors.LoadMetrics()
        files = open_checkpoint(paths, storage_options=opts)
        pieces = [Piece(Entry(info.name, 0, 0, f, i), -1, 0, 0) for f in files for i, info in enumerate(f.infos)]
        for _ in range(2):  # two reads of the same files: still three files
            buffer, offsets = read_pieces(pieces, metrics=metrics)
            for p, at in zip(pieces, offsets):
                got = np.from_dlpack(buffer.view(at, [p.nbytes], 1, 8)).tobytes()
                assert got == want[p.entry.name].contiguous().view(torch.uint8).numpy().tobytes(), p.entry.name
        assert metrics.files == 3, (paths[0], metrics.files)
