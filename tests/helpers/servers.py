"""Servers for tests and benchmarks (never shipped with the package): the one free-port and wait-until-it-answers
helper, a plain local ``mlflow server``, and a loopback HTTP proxy in front of a tracking server that misbehaves
on purpose (outage drills, ``benchmarks/bench_tracking_overhead.py``, the tests of metric delivery).

Modes: ``--delay S`` answers every request S seconds late; ``--fail-first N --status CODE`` answers the first N
requests with CODE (503, 429, ...) and forwards the rest; ``--blackhole`` accepts connections and never answers.

    python tests/helpers/servers.py --port 5099 --target http://127.0.0.1:5000 --delay 2
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


class FaultyProxy:
    """Runs in a thread; ``url`` is where to point ``MLFLOW_TRACKING_URI``. ``requests`` counts what came in."""

    def __init__(self, target: str = "", delay_s: float = 0.0, fail_first: int = 0, status: int = 503,
                 blackhole: bool = False, port: int = 0) -> None:
        self.target = urllib.parse.urlsplit(target) if target else None
        self.delay_s, self.fail_first, self.status, self.blackhole = delay_s, fail_first, status, blackhole
        self.requests = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _handle(self) -> None:
                with proxy._lock:
                    proxy.requests += 1
                    number = proxy.requests
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if proxy.blackhole:
                    time.sleep(3600)
                    return
                time.sleep(proxy.delay_s)
                if number <= proxy.fail_first:
                    self._answer(proxy.status, b'{"error_code": "TEMPORARILY_UNAVAILABLE"}', "application/json")
                    return
                conn = http.client.HTTPConnection(proxy.target.hostname, proxy.target.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
                conn.request(self.command, self.path, body=body or None, headers=headers)
                response = conn.getresponse()
                self._answer(response.status, response.read(), response.getheader("Content-Type", "text/plain"))
                conn.close()

            def _answer(self, status: int, payload: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "FaultyProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_answers(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 180) -> None:
    """Wait until ``url`` answers 200 (a server ``proc`` is starting); its log's end in the error otherwise."""
    deadline = time.time() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"{url} did not answer: {log.read_text()[-2000:] if log.exists() else ''}")
        time.sleep(0.5)


@contextlib.contextmanager
def local_server(root: str | os.PathLike, port: int | None = None) -> Iterator[str]:
    """A plain ``mlflow server`` on loopback (SQLite store, artifacts under ``root``) for the block; yields its URL.
    Its output goes to ``root/mlflow-server.log``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    log = open(root / "mlflow-server.log", "w")
    proc = subprocess.Popen([mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
                             "--artifacts-destination", str(root / "artifacts")],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=root)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answers(f"{url}/health", proc, root / "mlflow-server.log")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--target", default="", help="the tracking server, e.g. http://127.0.0.1:5000")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds added to every request")
    parser.add_argument("--fail-first", type=int, default=0, help="answer the first N requests with --status")
    parser.add_argument("--status", type=int, default=503)
    parser.add_argument("--blackhole", action="store_true", help="accept connections, never answer")
    args = parser.parse_args()
    with FaultyProxy(args.target, args.delay, args.fail_first, args.status, args.blackhole, args.port) as proxy:
        print(f"proxy on {proxy.url} -> {args.target or 'nowhere'}", flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
