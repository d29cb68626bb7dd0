"""A real Prometheus for tests: installed from Debian when absent, run on a free local port.

Each server has its own config, storage and file_sd directory; targets are added and removed by
writing file_sd JSON (Prometheus watches the files), so a test changes what is scraped without
a restart. The scrape interval is 1 s so `rate()` over a few seconds has enough samples.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

JOBS = ("vllm", "controller", "exporter")
# Jobs whose targets serve many pods' series (namespace and pod labels in the exposition, as a
# federating or aggregating exporter does): those labels are kept, not overwritten by the
# target's.
HONOR_LABELS = frozenset({"exporter"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_prometheus() -> str:
    """Path of a prometheus binary; installs Debian's package when there is none.

    Debian's package enables a systemd unit on :9090. In a container policy-rc.d usually stops
    it from starting; on a real host it would start, so it is stopped and disabled here: the
    tests never use it (each server below has its own port and storage)."""
    found = shutil.which("prometheus")
    if found:
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update"], check=True, env=env, capture_output=True)
    subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", "prometheus"],
        check=True,
        env=env,
        capture_output=True,
    )
    if shutil.which("systemctl"):
        # Best effort: without systemd as PID 1 this fails harmlessly.
        subprocess.run(
            ["systemctl", "disable", "--now", "prometheus"], check=False, capture_output=True
        )
    found = shutil.which("prometheus")
    assert found, "apt-get install prometheus did not provide a prometheus binary"
    return found


class PromServer:
    """One Prometheus process; `stop()`/`start()` keep port and storage (a restart)."""

    def __init__(self, workdir: Path, *, binary: str, scrape_interval_s: float = 1.0) -> None:
        self.binary = binary
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        for job in JOBS:
            (self.dir / "sd" / job).mkdir(parents=True, exist_ok=True)
        interval = f"{int(scrape_interval_s * 1000)}ms"
        jobs = [
            {
                "job_name": job,
                "scrape_interval": interval,
                "scrape_timeout": f"{int(scrape_interval_s * 900)}ms",
                "file_sd_configs": [
                    {"files": [str(self.dir / "sd" / job / "*.json")], "refresh_interval": "1s"}
                ],
                "honor_labels": job in HONOR_LABELS,
            }
            for job in JOBS
        ]
        config = {"global": {"scrape_interval": interval, "evaluation_interval": interval}}
        config["scrape_configs"] = jobs  # type: ignore[assignment]
        # JSON is YAML; no YAML writer needed.
        (self.dir / "prometheus.yml").write_text(json.dumps(config, indent=1))

    def start(self) -> None:
        log = (self.dir / "prometheus.log").open("ab")
        self.proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
                "--storage.tsdb.retention.time=2h",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = (self.dir / "prometheus.log").read_text()[-2000:]
                raise RuntimeError(f"prometheus exited: {tail}")
            try:
                if requests.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError("prometheus did not become ready in 30 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def set_targets(self, job: str, name: str, entries: list[dict[str, Any]]) -> None:
        """Write (atomically) one file_sd file of `job`; an empty list removes its targets."""
        path = self.dir / "sd" / job / f"{name}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(entries))
        tmp.replace(path)

    def query(self, promql: str) -> list[dict[str, Any]]:
        r = requests.post(f"{self.url}/api/v1/query", data={"query": promql}, timeout=10)
        r.raise_for_status()
        body = r.json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def self_counter(self, name: str, **labels: str) -> float:
        """A counter from Prometheus' own /metrics (not via a scrape: no lag)."""
        text = requests.get(f"{self.url}/metrics", timeout=5).text
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name + "{"):
                continue
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total


def eventually(check: Callable[[], Any], *, timeout: float = 30.0, every: float = 0.5) -> Any:
    """Call `check` until it returns without AssertionError (or a truthy value); re-raise the
    last failure at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        else:
            if result is None or result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"still false after {timeout}s: {result!r}")
        time.sleep(every)


async def eventually_async(
    check: Callable[[], Awaitable[None]],
    *,
    timeout: float = 20.0,  # noqa: ASYNC109 - a polling deadline, not an I/O timeout
    every: float = 0.5,
) -> None:
    """Await `check` until it stops raising AssertionError; re-raise the last one at the
    deadline."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        else:
            return
        await asyncio.sleep(every)


TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"
"""The classic exposition format's content type (what vLLM's prometheus-client answers)."""

Answer = tuple[bytes, str] | int
"""What an exposition handler returns for a GET: (body, content type), or an HTTP error code."""


def serve_expositions(answer: Callable[[str, str], Answer]) -> ThreadingHTTPServer:
    """An HTTP server on 127.0.0.1 (a free port), already serving in a daemon thread, that
    answers each GET with `answer(path, accept_header)`; the caller shuts it down (`shutdown()`
    then `server_close()`). The scrape targets of the tests' fake exporters."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            got = answer(self.path, self.headers.get("Accept", ""))
            if isinstance(got, int):
                self.send_error(got)
                return
            body, content_type = got
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd
