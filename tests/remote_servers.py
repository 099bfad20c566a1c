"""Object-store servers on 127.0.0.1 for the remote tests and benchmarks, and a fault proxy.

Each is a context manager that yields an endpoint URL and always stops what it started:

- ``moto_server()``: moto's standalone S3 server (``python -m moto.server``), yields
  ``http://127.0.0.1:PORT``; ``s3_client(endpoint)`` and ``upload(endpoint, bucket, files)`` fill it,
  ``storage_options(endpoint)`` is what ``fastsafetensors.load(..., storage_options=)`` needs for it.
- ``nginx_server(root)``: nginx serving the directory ``root`` with Range and ETag (plain HTTP),
  yields ``http://127.0.0.1:PORT``; ``nginx_missing()`` says why it cannot run (None when it can).
- ``stop_server(proc)``: stops a server process started in its own session (the benchmarks use it).
- ``FaultProxy(upstream)``: an HTTP proxy in front of either that records every request and injects
  faults on chosen ones (drop, truncate, status, delay); yields itself, ``proxy.url`` is its endpoint.

Waits are bounded (``START_TIMEOUT``); nothing here reaches beyond the loopback interface.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Tuple

from .processes import free_port

__all__ = ["START_TIMEOUT", "free_port", "stop_server", "moto_server", "storage_options", "s3_client", "upload", "nginx_server",
           "nginx_missing", "FaultProxy", "Fault", "TEST_CREDENTIALS"]

START_TIMEOUT = 30.0
HOST = "127.0.0.1"
# moto accepts any credentials; these are what the tests pass (and check never leak into messages).
TEST_CREDENTIALS = {"aws_access_key_id": "AKIATESTKEYID0000000", "aws_secret_access_key": "s3cr3t-test-KEY-do-not-log",
                    "aws_region": "us-east-1"}


def _wait_listening(port: int, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} before listening on port {port}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"{what} did not listen on port {port} within {START_TIMEOUT}s")


def stop_server(proc: subprocess.Popen) -> None:
    """Ends the process group a server started with ``start_new_session=True`` (nginx's workers
    too), by its id: SIGTERM, then SIGKILL after 10 s."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """moto's S3-compatible server on a free loopback port; yields its endpoint URL."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_listening(port, proc, "moto server")
        yield f"http://{HOST}:{port}"
    finally:
        stop_server(proc)


def storage_options(endpoint: str) -> Dict[str, object]:
    """``storage_options=`` for fastsafetensors (obstore's keys) reaching moto at ``endpoint``."""
    return {"endpoint": endpoint, "allow_http": True, "access_key_id": TEST_CREDENTIALS["aws_access_key_id"],
            "secret_access_key": TEST_CREDENTIALS["aws_secret_access_key"], "region": TEST_CREDENTIALS["aws_region"]}


def s3_client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name=TEST_CREDENTIALS["aws_region"],
                        aws_access_key_id=TEST_CREDENTIALS["aws_access_key_id"],
                        aws_secret_access_key=TEST_CREDENTIALS["aws_secret_access_key"])


def upload(endpoint: str, bucket: str, files: Mapping[str, str]) -> None:
    """Creates ``bucket`` (if missing) and puts each local file under its key (``{key: path}``)."""
    client = s3_client(endpoint)
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists):
        client.create_bucket(Bucket=bucket)
    for key, path in files.items():
        client.upload_file(os.fspath(path), bucket, key)


def nginx_missing() -> Optional[str]:
    """Why nginx cannot run here, or None."""
    if shutil.which("nginx") is None and not os.path.exists("/usr/sbin/nginx"):
        return "nginx is not installed (apt-get install -y nginx)"
    return None


_NGINX_CONF = """
{user}
worker_processes 2;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
daemon off;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    default_type application/octet-stream;
    sendfile on;
    server {{
        listen {host}:{port};
        root {root};
        autoindex off;
    }}
}}
"""


@contextlib.contextmanager
def nginx_server(root: str) -> Iterator[str]:
    """nginx serving ``root`` (static files: Range, ETag, If-Match) on a free loopback port."""
    why = nginx_missing()
    if why:
        raise RuntimeError(why)
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="fst-nginx-") as prefix:
        # As root, workers would switch to `nobody`, which may not read the test's files.
        user = "user root;" if os.geteuid() == 0 else ""
        conf = os.path.join(prefix, "nginx.conf")
        with open(conf, "w") as f:
            f.write(_NGINX_CONF.format(user=user, prefix=prefix, host=HOST, port=port, root=os.path.abspath(root)))
        proc = subprocess.Popen([binary, "-p", prefix, "-c", conf], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            _wait_listening(port, proc, "nginx")
            yield f"http://{HOST}:{port}"
        finally:
            stop_server(proc)


@dataclass
class Fault:
    """What the proxy does to a matching request, ``times`` times (then it passes requests on).

    kind: "drop" (close the connection before any response), "truncate" (send the upstream's
    headers and half of its body, then close), "status" (answer ``status`` without asking the
    upstream), "delay" (wait ``seconds``, then pass the request on).
    """

    kind: str
    times: int = 1
    status: int = 503
    seconds: float = 0.0
    match: Callable[[str, str, Mapping[str, str]], bool] = lambda method, path, headers: True


@dataclass
class Request:
    method: str
    path: str
    headers: Dict[str, str]
    fault: Optional[str] = None
    status: Optional[int] = None
    body_bytes: int = 0


class FaultProxy:
    """An HTTP/1.1 proxy to ``upstream`` (``http://host:port``) that logs requests and injects faults.

    ``proxy.inject(Fault(...))`` arms a fault; ``proxy.requests`` lists every request seen (a
    ``Request`` with method, path, headers, the fault applied and the bytes of body sent).
    """

    def __init__(self, upstream: str):
        host, _, port = upstream.removeprefix("http://").rstrip("/").partition(":")
        self._upstream = (host, int(port or 80))
        self._lock = threading.Lock()
        self._faults: List[Fault] = []
        self.requests: List[Request] = []
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        assert self._server is not None, "the proxy is not running"
        return f"http://{HOST}:{self._server.server_address[1]}"

    def inject(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            self.requests.clear()

    def _take_fault(self, method: str, path: str, headers: Mapping[str, str]) -> Optional[Fault]:
        with self._lock:
            for fault in self._faults:
                if fault.times > 0 and fault.match(method, path, headers):
                    fault.times -= 1
                    return fault
        return None

    def _record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def __enter__(self) -> "FaultProxy":
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _handle(self) -> None:
                headers = {k: v for k, v in self.headers.items()}
                record = Request(self.command, self.path, headers)
                proxy._record(record)
                fault = proxy._take_fault(self.command, self.path, headers)
                record.fault = fault.kind if fault else None
                if fault and fault.kind == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if fault and fault.kind == "status":
                    record.status = fault.status
                    body = b"<Error><Code>ServiceUnavailable</Code><Message>injected</Message></Error>"
                    self.send_response(fault.status)
                    self.send_header("Content-Length", str(len(body)))
                    self.send_header("Content-Type", "application/xml")
                    self.end_headers()
                    self.wfile.write(body)
                    return
                if fault and fault.kind == "delay":
                    time.sleep(fault.seconds)
                self._forward(record, truncate=bool(fault and fault.kind == "truncate"))

            def _forward(self, record: Request, truncate: bool) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                conn = http.client.HTTPConnection(*proxy._upstream, timeout=60)
                try:
                    fwd = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
                    conn.request(self.command, self.path, body=body, headers=fwd)
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                record.status = resp.status
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("connection", "keep-alive", "transfer-encoding", "content-length"):
                        self.send_header(k, v)
                # A HEAD's Content-Length is the object's size, though no body follows.
                size = resp.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", size or str(len(data)))
                self.end_headers()
                if self.command == "HEAD":
                    return
                if truncate:
                    data = data[:len(data) // 2]
                    self.close_connection = True
                self.wfile.write(data)
                self.wfile.flush()
                record.body_bytes = len(data)
                if truncate:
                    self.connection.shutdown(socket.SHUT_RDWR)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _handle

        self._server = ThreadingHTTPServer((HOST, 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="fault-proxy")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def ranges(self) -> List[Tuple[str, Optional[str]]]:
        """(path, Range header) of every GET seen so far."""
        with self._lock:
            return [(r.path, r.headers.get("Range") or r.headers.get("range")) for r in self.requests
                    if r.method == "GET"]

    def body_bytes(self) -> int:
        with self._lock:
            return sum(r.body_bytes for r in self.requests)
