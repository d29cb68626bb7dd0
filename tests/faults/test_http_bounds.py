"""metrics/http.py's bounds against raw sockets (no Prometheus needed): a declared length over
the cap is refused before reading, a server that accepts and says nothing ends at the deadline,
a connection refused is "no answer" (MetricsUnavailable territory), a cut connection is an
error. Each in about its own bound, not the 137 s a trickle once took."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import aiohttp
import pytest

from autoscaler.metrics import http

pytestmark = pytest.mark.faults


@pytest.fixture
def raw_server() -> Iterator[Callable[[bytes | None], str]]:
    """A one-shot TCP server: answers each connection with `reply` (None: silence)."""
    socks: list[socket.socket] = []

    def start(reply: bytes | None) -> str:
        srv = socket.create_server(("127.0.0.1", 0))
        socks.append(srv)

        def serve() -> None:
            while True:
                try:
                    conn, _ = srv.accept()
                except OSError:
                    return
                socks.append(conn)
                conn.recv(65536)
                if reply is not None:
                    conn.sendall(reply)
                    conn.close()

        threading.Thread(target=serve, daemon=True).start()
        return f"http://127.0.0.1:{srv.getsockname()[1]}"

    yield start
    for s in socks:
        s.close()


async def query(url: str, *, deadline_s: float = 1.0, max_bytes: int = 1 << 20) -> tuple[
    http.QueryFailed, float
]:
    start = time.monotonic()
    async with aiohttp.ClientSession() as session:
        with pytest.raises(http.QueryFailed) as info:
            await http.instant_query(session, http.Endpoint(url=url), "up",
                                     deadline_s=deadline_s, max_bytes=max_bytes)
    return info.value, time.monotonic() - start


async def test_declared_length_over_cap_is_refused_before_reading(
    raw_server: Callable[[bytes | None], str],
) -> None:
    url = raw_server(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 900000000\r\n\r\n{")
    failed, took = await query(url, deadline_s=5.0)
    assert (failed.reason, failed.retry) == ("too_large", False)
    assert "900000000" in failed.error
    assert took < 5.0  # not the deadline: refused from the header


async def test_silent_server_ends_at_the_deadline(raw_server: Callable[[bytes | None], str]) -> None:
    failed, took = await query(raw_server(None), deadline_s=0.5)
    assert (failed.reason, failed.answered) == ("timeout", True)
    assert took < 5.0


async def test_refused_connection_is_no_answer() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        failed, _ = await query(f"http://127.0.0.1:{port}")
    assert (failed.reason, failed.answered) == ("unreachable", False)


async def test_body_cut_short_is_an_error(raw_server: Callable[[bytes | None], str]) -> None:
    url = raw_server(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"status\":")
    failed, _ = await query(url)
    assert failed.reason == "error"


async def test_deeply_nested_body_is_malformed(raw_server: Callable[[bytes | None], str]) -> None:
    body = b"[" * 200_000 + b"]" * 200_000
    url = raw_server(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    failed, _ = await query(url)
    assert failed.reason == "malformed"
