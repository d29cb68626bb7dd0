"""Slowloris against the controller's HTTP servers (issue 17): real sockets on 127.0.0.1.

The external-metrics API runs in a process of its own (tests/faults/slowloris_server.py) so its
RSS can be measured alone; N connections that never finish their request head (most silent
before TLS, some completing TLS and trickling header lines) must leave at most the cap held,
be closed by the server within the deadlines, not stop a kept-alive aggregator connection from
being answered, and grow the server's RSS by a bounded amount (printed for the report).
The controller's plain health/metrics app gets the same attack in-process, and the guard's
own behaviour (heads split across reads, keep-alive past the head deadline, the keep-alive and
TLS handshake timeouts, stop with handshakes pending, validation) has a test each.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import http.client
import json
import os
import selectors
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from autoscaler.server import app as app_mod
from autoscaler.server import limits as limits_mod
from autoscaler.server.store import DecisionStore
from tests.server.certs import Pki, make_pki

pytestmark = pytest.mark.faults

REPO = Path(__file__).resolve().parents[2]
VALUES = "/apis/external.metrics.k8s.io/v1beta1/namespaces/t/pd_desired_replicas"
# Attack size: the 2,000 by default; PD_SLOWLORIS_N lowers it on a starved machine.
ATTACK_N = int(os.environ.get("PD_SLOWLORIS_N", "2000"))
TRICKLERS = 48
# Scheduling slack on a loaded 2-core CI machine: a close may come this much after its
# deadline. Not a speed target: without the guard the connections are never closed at all.
SLACK_S = 4.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


# --- the external-metrics API in its own process ----------------------------------------------


class ServerProcess:
    def __init__(self, pki: Pki, limits: dict[str, Any]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.faults.slowloris_server", str(pki.dir),
             json.dumps(limits)],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        try:
            self.port = int(json.loads(self.proc.stdout.readline())["port"])
        except BaseException:
            self.close()
            raise

    def stats(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        result: dict[str, Any] = json.loads(self.proc.stdout.readline())
        return result

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@contextlib.contextmanager
def server_process(pki: Pki, **limits: Any) -> Iterator[ServerProcess]:
    srv = ServerProcess(pki, limits)
    try:
        yield srv
    finally:
        srv.close()


def client_ctx(pki: Pki) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.crt("serving-ca")))
    ctx.load_cert_chain(*pki.pair("proxy"))
    return ctx


def ask(conn: http.client.HTTPSConnection) -> tuple[int, Any]:
    conn.request("GET", VALUES + "?labelSelector=pool%3Dp%2Crole%3Dprefill",
                 headers={"X-Remote-User": "system:serviceaccount:kube-system:hpa"})
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read())


class Attack:
    """Connections that never finish a request head, and when each was seen closed."""

    def __init__(self) -> None:
        self.opened: dict[socket.socket, float] = {}
        self.closed: dict[socket.socket, float] = {}
        self.failed_connect = 0

    def silent(self, port: int, n: int) -> None:
        for i in range(n):
            if i % 32 == 0:
                self.poll(0)  # see the refused ones closed while they are still arriving
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
            except OSError:
                self.failed_connect += 1
                continue
            s.setblocking(False)
            self.opened[s] = time.monotonic()

    def trickle_start(self, port: int, n: int, ctx: ssl.SSLContext) -> list[ssl.SSLSocket]:
        out = []
        for _ in range(n):
            raw = socket.create_connection(("127.0.0.1", port), timeout=5)
            t0 = time.monotonic()
            s = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            s.setblocking(False)
            self.opened[s] = t0
            out.append(s)
        return out

    def trickle(self, socks: list[ssl.SSLSocket]) -> None:
        for s in socks:
            if s in self.closed:
                continue
            with contextlib.suppress(OSError):
                s.send(b"X-Slow: 1\r\n")

    def poll(self, wait_s: float) -> None:
        """Mark the sockets the server closed (EOF or reset), until nothing more happens for
        a moment or `wait_s` has passed."""
        end = time.monotonic() + wait_s
        while self._poll_once(max(0.0, min(0.2, end - time.monotonic()))) and (
            time.monotonic() < end
        ):
            pass

    def _poll_once(self, wait_s: float) -> bool:
        sel = selectors.DefaultSelector()
        for s in self.opened:
            if s not in self.closed:
                sel.register(s, selectors.EVENT_READ)
        try:
            events = sel.select(wait_s)
            for key, _ in events:
                s = key.fileobj
                assert isinstance(s, socket.socket)
                try:
                    data = s.recv(4096)
                except (ssl.SSLWantReadError, BlockingIOError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    self.closed[s] = time.monotonic()
        finally:
            sel.close()
        return bool(events)

    @property
    def still_open(self) -> int:
        return len(self.opened) - len(self.closed)

    def close(self) -> None:
        for s in self.opened:
            s.close()


@pytest.mark.external_metrics
def test_external_metrics_slowloris_is_bounded(pki: Pki, counts: collections.Counter[str]) -> None:
    """ATTACK_N silent connections plus TLS tricklers against the shipped defaults: the cap is
    never exceeded, the overflow is closed at once, every held one is closed by its deadline,
    the aggregator's kept-alive connection is answered throughout, RSS growth stays bounded."""
    limits = limits_mod.ConnectionLimits()
    cap, head_s = limits.max_connections, limits.head_timeout_s
    with server_process(pki) as srv:
        legit = http.client.HTTPSConnection("127.0.0.1", srv.port, context=client_ctx(pki),
                                            timeout=10)
        assert ask(legit)[0] == 200
        legit_sock = legit.sock
        rss0 = srv.stats()["rss_kb"]
        attack = Attack()
        t_start = time.monotonic()
        try:
            tricklers = attack.trickle_start(srv.port, TRICKLERS,
                                             ssl.create_default_context(
                                                 cafile=str(pki.crt("serving-ca"))))
            attack.silent(srv.port, ATTACK_N)
            t_opened = time.monotonic()
            attack.poll(1.0)
            during = srv.stats()
            held_client_side = attack.still_open
            # The aggregator's connection, opened before the attack, is served under it.
            status, body = ask(legit)
            assert status == 200, body
            assert [i["value"] for i in body["items"]] == ["8"]
            assert legit.sock is legit_sock  # the same kept-alive connection
            rss_peak = max(rss0, during["rss_kb"])
            deadline = t_opened + head_s + SLACK_S
            while attack.still_open and time.monotonic() < deadline:
                attack.trickle(tricklers)
                attack.poll(0.5)
                rss_peak = max(rss_peak, srv.stats()["rss_kb"])
            after = srv.stats()
            # Still the same connection, past the head deadline: only first heads are timed.
            status, _ = ask(legit)
            assert status == 200
            assert legit.sock is legit_sock
            fresh = http.client.HTTPSConnection("127.0.0.1", srv.port,
                                                context=client_ctx(pki), timeout=10)
            assert ask(fresh)[0] == 200
            fresh.close()
        finally:
            attack.close()
            legit.close()
        lifetimes = sorted(attack.closed[s] - attack.opened[s] for s in attack.closed)
        total = len(attack.opened)
        # The (total - cap) quickest closes are the refusals at accept.
        refused = lifetimes[: max(0, total - cap)]
        print(
            f"\nslowloris external-metrics: {ATTACK_N} silent + {TRICKLERS} trickling TLS "
            f"connections in {t_opened - t_start:.1f}s (failed connects: "
            f"{attack.failed_connect}); cap {cap}: server peak open {during['peak_open']} "
            f"(incl. 1 legit), rejected {after['rejected']}, head timeouts "
            f"{after['head_timeouts']}, TLS failures {after['tls_failures']}; still open "
            f"client-side after 1 s: {held_client_side}; all closed after "
            f"{max(lifetimes):.1f}s (head deadline {head_s}s); refusals seen closed after a "
            f"median {refused[len(refused) // 2] if refused else 0:.3f}s, slowest "
            f"{refused[-1] if refused else 0:.2f}s; server RSS {rss0 / 1024:.1f} MB "
            f"-> peak {rss_peak / 1024:.1f} MB (+{(rss_peak - rss0) / 1024:.1f} MB)")
        counts["slowloris connections opened (external metrics)"] += total
        counts["slowloris connections held past their deadline"] += attack.still_open
        counts["slowloris connections over the cap"] += max(0, during["peak_open"] - cap)
        assert during["peak_open"] <= cap
        assert held_client_side <= cap - 1  # the legit connection holds one slot
        assert attack.still_open == 0, f"{attack.still_open} attack connections still open"
        assert max(lifetimes) <= head_s + SLACK_S
        # Everything over the cap was turned away at accept, before any deadline could fire.
        assert after["rejected"] >= total - cap
        assert not refused or refused[-1] < limits.tls_handshake_timeout_s
        assert after["head_timeouts"] + after["tls_failures"] >= total - after["rejected"]
        assert after["open"] == 1  # the legit connection
        # Bounded memory: asyncio keeps a 256 KB read buffer per TLS connection, so about
        # 0.3 MB per held connection; the issue measured +563 MB for 2,000 held.
        assert rss_peak - rss0 < cap * 512


@pytest.mark.external_metrics
def test_tls_handshake_timeout_closes_a_silent_connection(pki: Pki) -> None:
    """A connection that starts no TLS handshake is closed at the handshake timeout, before the
    (longer) head deadline, and counted as a TLS failure."""
    with server_process(pki, tls_handshake_timeout_s=1.0, head_timeout_s=30.0) as srv:
        attack = Attack()
        try:
            attack.silent(srv.port, 3)
            deadline = time.monotonic() + 1.0 + SLACK_S
            while attack.still_open and time.monotonic() < deadline:
                attack.poll(0.25)
            stats = srv.stats()
        finally:
            attack.close()
        assert attack.still_open == 0
        assert stats["tls_failures"] == 3
        assert stats["head_timeouts"] == 0


# --- the controller's plain HTTP app, in-process ----------------------------------------------


@contextlib.asynccontextmanager
async def health_app(
    limits: limits_mod.ConnectionLimits,
) -> AsyncIterator[tuple[int, limits_mod.GuardedSite]]:
    health = app_mod.Health(policy_loaded=True, api_reachable=True)
    app = app_mod.create_app(health=health, store=DecisionStore())
    runner = await app_mod.start(app, host="127.0.0.1", port=0, limits=limits)
    try:
        (site,) = runner.sites
        assert isinstance(site, limits_mod.GuardedSite)
        yield app_mod.bound_port(runner), site
    finally:
        await runner.cleanup()


async def http_get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   path: str = "/healthz") -> int:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    return await read_response(reader)


async def read_response(reader: asyncio.StreamReader) -> int:
    status_line = await asyncio.wait_for(reader.readline(), 5)
    length = 0
    while (line := await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b""):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    await reader.readexactly(length)
    return int(status_line.split()[1])


async def wait_closed(reader: asyncio.StreamReader, within_s: float) -> float | None:
    """Seconds until the server closed the connection, None if it did not within `within_s`."""
    t0 = time.monotonic()
    try:
        while await asyncio.wait_for(reader.read(4096), within_s - (time.monotonic() - t0)):
            pass
    except TimeoutError:
        return None
    except OSError:
        pass
    return time.monotonic() - t0


async def test_health_app_slowloris_is_bounded() -> None:
    """300 connections trickling a head against the health port (cap 32, head 2 s): at most the
    cap held, the rest refused at once, all closed by the deadline, /healthz answered on a
    kept-alive connection throughout."""
    limits = limits_mod.ConnectionLimits(max_connections=32, head_timeout_s=2.0)
    async with health_app(limits) as (port, site):
        probe = await asyncio.open_connection("127.0.0.1", port)
        assert await http_get(*probe) == 200
        conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(300)]
        for _, w in conns:
            w.write(b"GET /healthz HTTP/1.1\r\n")
        await asyncio.sleep(0.5)
        assert site.stats.peak_open <= 32
        assert site.stats.rejected >= 300 - 31
        assert await http_get(*probe) == 200
        closes = await asyncio.gather(*(wait_closed(r, 2.0 + SLACK_S) for r, _ in conns))
        assert all(c is not None for c in closes)
        assert site.stats.head_timeouts == 31
        assert await http_get(*probe) == 200  # 2.5 s after its first request: kept alive
        for _, w in [*conns, probe]:
            w.close()


async def test_head_split_across_reads_is_served() -> None:
    """A head sent a byte at a time (the blank line split across reads) counts as arrived: the
    request is answered and the connection survives the head deadline."""
    async with health_app(limits_mod.ConnectionLimits(head_timeout_s=1.0)) as (port, site):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n":
            writer.write(bytes([b]))
            await writer.drain()
            await asyncio.sleep(0.001)
        assert await read_response(reader) == 200
        await asyncio.sleep(1.5)
        assert await http_get(reader, writer) == 200
        assert site.stats.head_timeouts == 0
        writer.close()


async def test_keepalive_timeout_closes_an_idle_connection() -> None:
    """After its response, an idle connection is closed at keepalive_timeout_s."""
    limits = limits_mod.ConnectionLimits(head_timeout_s=5.0, keepalive_timeout_s=1.0)
    async with health_app(limits) as (port, site):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await http_get(reader, writer) == 200
        closed_after = await wait_closed(reader, 1.0 + SLACK_S)
        assert closed_after is not None
        assert site.stats.open == 0
        writer.close()


async def test_later_head_trickled_on_a_kept_alive_connection_is_closed() -> None:
    """Only the first head has the guard's deadline; a later one trickled on a kept-alive
    connection is bounded by the keep-alive timeout (aiohttp closes a connection still waiting
    for its next complete head then), even though bytes keep arriving."""
    limits = limits_mod.ConnectionLimits(head_timeout_s=5.0, keepalive_timeout_s=1.0)
    async with health_app(limits) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await http_get(reader, writer) == 200
        writer.write(b"GET /healthz HTTP/1.1\r\n")
        t0 = time.monotonic()
        closed = False
        while time.monotonic() - t0 < 1.0 + SLACK_S and not closed:
            with contextlib.suppress(OSError):
                writer.write(b"X-Slow: 1\r\n")
            closed = await wait_closed(reader, 0.2) is not None
        assert closed
        writer.close()


async def test_stop_with_connections_in_their_head_is_prompt() -> None:
    """Stopping the runner closes connections that never reached aiohttp's handler."""
    limits = limits_mod.ConnectionLimits(head_timeout_s=60.0)
    async with health_app(limits) as (port, site):
        conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
        await asyncio.sleep(0.1)
        assert site.stats.open == 5
    closes = await asyncio.gather(*(wait_closed(r, 5.0) for r, _ in conns))
    assert all(c is not None for c in closes)
    for _, w in conns:
        w.close()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("max_connections", 0, id="no-connections"),
        pytest.param("head_timeout_s", 0.0, id="zero-head"),
        pytest.param("tls_handshake_timeout_s", float("inf"), id="inf-handshake"),
        pytest.param("keepalive_timeout_s", float("nan"), id="nan-keepalive"),
        pytest.param("backlog", -1, id="negative-backlog"),
    ],
)
def test_bad_limits_are_rejected_naming_the_field(field: str, value: float) -> None:
    """Each out-of-range limit is a ValueError naming the field and the value."""
    with pytest.raises(ValueError, match=field):
        limits_mod.ConnectionLimits(**{field: value})
