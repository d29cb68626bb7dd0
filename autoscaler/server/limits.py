"""Connection limits for the controller's HTTP servers (issue 17: slowloris).

aiohttp alone holds every accepted connection until the client finishes a request head or its
keep-alive timer (an hour by default) fires, and it caps nothing: 2,000 connections that
never finish their request head were all held, and the process grew from 73 to 636 MB.

`GuardedSite` is an aiohttp site whose listening socket is served through a small asyncio
protocol, `_Guard`, placed in front of aiohttp's own per-connection handler:
- over `max_connections` open connections, a new one is aborted as soon as it is accepted,
  before any TLS work (the cap counts connections still in their TLS handshake);
- a connection whose first request head has not arrived `head_timeout_s` after it was
  accepted (TLS handshake included) is aborted;
- TLS is started by the guard itself (`loop.start_tls` with `tls_handshake_timeout_s`), so the
  guard sees, counts and can abort the raw TCP connection at any stage;
- `keepalive_timeout_s` goes to aiohttp (`AppRunner(keepalive_timeout=...)`): an idle
  connection is closed that long after its last response, and aiohttp closes a connection that
  has not completed its next request head by then.

Why not `web.SockSite` plus `ssl_handshake_timeout`: with asyncio's own TLS server, the
application protocol only appears once the handshake is done and is never told about a
handshake that fails, so connections in the handshake could be neither counted nor rejected
before the TLS work. The guard is ~100 lines of asyncio protocol, no aiohttp internals beyond
`BaseSite` (whose `start`/`stop` are the documented extension points) and `runner.server`
(the documented protocol factory).

Saturation is logged once per state change (`connection_limit_reached` / `_cleared`, with the
count rejected meanwhile); each head timeout only at debug level, the totals are in `stats`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import web

log = structlog.get_logger(__name__)

# A request head ends at its first empty line: "\r\n\r\n", or "\n\n" from a lenient client
# (both contain one of these two patterns). The guard keeps the last bytes seen so a pattern
# split across two reads is still found.
_HEAD_ENDS = (b"\n\r\n", b"\n\n")
_TAIL = 2
# Request bytes decrypted between the end of the TLS handshake and the moment aiohttp's
# handler is attached (the same loop iteration, in practice): more than this is a client
# flooding before it could have had an answer.
_MAX_EARLY_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """How many connections a server holds and for how long a silent or slow client may keep
    one. Defaults (and why):

    - `max_connections=256`: the API's legitimate clients are few — the API server's aggregator
      (a handful of kept-alive connections per API server replica), kubelet probes, KEDA and a
      Prometheus scrape. 256 leaves two orders of magnitude of headroom while bounding memory:
      asyncio keeps a 256 KB read buffer per TLS connection, so a held TLS connection costs about
      0.3 MB and the cap about 80 MB (tests/faults/test_slowloris.py prints the measured growth),
      well inside the controller's 512 Mi limit, where 2,000 held connections (+563 MB) were not.
    - `head_timeout_s=10`: from accept to the end of the first request head, TLS handshake
      included. Every legitimate client sends its request at once; 10 s survives a congested
      node, and a slowloris costs at most `max_connections` slots for 10 s each.
    - `tls_handshake_timeout_s=5`: a handshake is a few round trips inside the cluster (ms);
      asyncio's default of 60 s would let a silent client hold a slot six times longer than the
      head deadline allows.
    - `keepalive_timeout_s=60`: the aggregator (Go's HTTP transport, 90 s idle timeout) and KEDA
      reuse connections between queries every ~15-30 s; 60 s keeps them reused, and Go retries
      an idempotent GET on a connection the server closed while idle. aiohttp's default is 3,630 s.
    """

    max_connections: int = 256
    head_timeout_s: float = 10.0
    tls_handshake_timeout_s: float = 5.0
    keepalive_timeout_s: float = 60.0
    backlog: int = 128  # aiohttp's default; the kernel queue before accept

    def __post_init__(self) -> None:
        problems = []
        if not 1 <= self.max_connections <= 65536:
            problems.append(f"max_connections={self.max_connections!r} (1..65536)")
        for name in ("head_timeout_s", "tls_handshake_timeout_s", "keepalive_timeout_s"):
            value = getattr(self, name)
            if not 0 < value <= 3600:
                problems.append(f"{name}={value!r} (0 < s <= 3600)")
        if not 1 <= self.backlog <= 65536:
            problems.append(f"backlog={self.backlog!r} (1..65536)")
        if problems:
            msg = "connection limits: " + "; ".join(problems)
            raise ValueError(msg)

    def runner_kwargs(self) -> dict[str, Any]:
        """What aiohttp's `AppRunner` needs for these limits."""
        return {"keepalive_timeout": self.keepalive_timeout_s}


@dataclass(slots=True)
class ConnectionStats:
    """Counters of one site, for tests, benchmarks and logs."""

    open: int = 0
    peak_open: int = 0
    accepted: int = 0
    rejected: int = 0
    head_timeouts: int = 0
    tls_failures: int = 0
    saturated: bool = False
    _rejected_at_saturation: int = field(default=0, repr=False)


class _Guard(asyncio.Protocol):
    """One accepted connection: counts it, enforces the head deadline, runs the TLS handshake,
    then forwards everything to aiohttp's handler."""

    def __init__(self, site: GuardedSite) -> None:
        self._site = site
        self._raw: asyncio.Transport | None = None
        self._inner: asyncio.Protocol | None = None
        self._early: list[bytes] = []
        self._early_len = 0
        self._head_seen = False
        self._tail = b""
        self._timer: asyncio.TimerHandle | None = None
        self._tls_task: asyncio.Task[None] | None = None
        self._counted = False

    # --- raw connection -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        site = self._site
        self._raw = transport
        if not site.admit(self):
            transport.abort()
            return
        self._counted = True
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(site.limits.head_timeout_s, self._head_deadline)
        if site.ssl_context is None:
            self._attach(transport)
        else:
            # Nothing may reach this protocol before start_tls owns the transport.
            transport.pause_reading()
            self._tls_task = loop.create_task(self._handshake(transport, site.ssl_context))

    async def _handshake(self, raw: asyncio.Transport, ctx: ssl.SSLContext) -> None:
        loop = asyncio.get_running_loop()
        try:
            tls = await loop.start_tls(
                raw, self, ctx, server_side=True,
                ssl_handshake_timeout=self._site.limits.tls_handshake_timeout_s,
            )
        except (OSError, TimeoutError, ssl.SSLError, RuntimeError) as exc:
            # Bad certificate, timeout, reset: start_tls has closed the transport.
            self._site.stats.tls_failures += 1
            log.debug("connection_tls_failed", error=str(exc) or type(exc).__name__)
            raw.abort()
            # asyncio does not always tell the protocol of a failed handshake (a timeout
            # closes the transport without connection_lost): release the slot here.
            self.connection_lost(None)
            return
        if tls is None or tls.is_closing():
            return
        self._attach(tls)

    def _attach(self, transport: asyncio.Transport) -> None:
        server = self._site.runner_server
        if server is None:  # the site stopped during the handshake
            transport.abort()
            return
        inner = server()
        self._inner = inner
        inner.connection_made(transport)
        early, self._early = self._early, []
        for chunk in early:
            inner.data_received(chunk)

    def _head_deadline(self) -> None:
        self._timer = None
        if self._head_seen or self._raw is None or self._raw.is_closing():
            return
        self._site.stats.head_timeouts += 1
        log.debug("connection_head_timeout", timeout_s=self._site.limits.head_timeout_s)
        self._raw.abort()

    # --- application data (plaintext, after TLS when TLS is on) ---------------------------

    def data_received(self, data: bytes) -> None:
        if not self._head_seen:
            seen = self._tail + data
            if any(end in seen for end in _HEAD_ENDS):
                self._head_seen = True
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
            else:
                self._tail = seen[-_TAIL:]
        if self._inner is not None:
            self._inner.data_received(data)
            return
        self._early.append(data)
        self._early_len += len(data)
        if self._early_len > _MAX_EARLY_BYTES and self._raw is not None:
            self._raw.abort()

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._counted:
            self._counted = False
            self._site.release(self)
        inner, self._inner = self._inner, None
        if inner is not None:
            inner.connection_lost(exc)

    def abort(self) -> None:
        if self._tls_task is not None:
            self._tls_task.cancel()
        if self._raw is not None:
            self._raw.abort()

    @property
    def attached(self) -> bool:
        return self._inner is not None


class GuardedSite(web.BaseSite):
    """An aiohttp site on an already bound socket, with `ConnectionLimits` (see the module
    docstring). `runner` must have been set up with `limits.runner_kwargs()`."""

    __slots__ = ("_addr", "_guards", "_name", "_sock", "limits", "ssl_context", "stats")

    def __init__(
        self,
        runner: web.BaseRunner,
        sock: socket.socket,
        *,
        limits: ConnectionLimits,
        ssl_context: ssl.SSLContext | None = None,
        name: str = "http",
    ) -> None:
        super().__init__(runner, backlog=limits.backlog)
        self._sock = sock
        self._addr: tuple[str, int] = sock.getsockname()[:2]
        self._name = name
        self.limits = limits
        self.ssl_context = ssl_context
        self.stats = ConnectionStats()
        self._guards: set[_Guard] = set()

    @property
    def name(self) -> str:
        host, port = self._addr
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://{host}:{port}"

    @property
    def port(self) -> int:
        return int(self._addr[1])

    @property
    def runner_server(self) -> Any:
        return self._runner.server

    def serving(self) -> bool:
        """True while the listener accepts connections (False once closed, by us or not)."""
        server = self._server
        return server is not None and bool(server.is_serving())

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Guard(self), sock=self._sock, backlog=self._backlog
        )

    async def stop(self) -> None:
        await super().stop()
        # Connections aiohttp does not know yet (in their TLS handshake or before their head
        # reached a handler) are ours to close; the runner shuts down the others gracefully.
        for guard in list(self._guards):
            if not guard.attached:
                guard.abort()

    def admit(self, guard: _Guard) -> bool:
        st = self.stats
        if st.open >= self.limits.max_connections:
            st.rejected += 1
            st._rejected_at_saturation += 1
            if not st.saturated:
                st.saturated = True
                log.warning("connection_limit_reached", site=self._name,
                            max_connections=self.limits.max_connections)
            return False
        st.open += 1
        st.accepted += 1
        st.peak_open = max(st.peak_open, st.open)
        self._guards.add(guard)
        return True

    def release(self, guard: _Guard) -> None:
        st = self.stats
        st.open -= 1
        self._guards.discard(guard)
        if st.saturated and st.open < self.limits.max_connections:
            st.saturated = False
            log.info("connection_limit_cleared", site=self._name, open=st.open,
                     rejected=st._rejected_at_saturation)
            st._rejected_at_saturation = 0


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on host:port (0: a free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


async def serve(
    runner: web.BaseRunner,
    *,
    host: str,
    port: int,
    limits: ConnectionLimits,
    ssl_context: ssl.SSLContext | None = None,
    name: str = "http",
) -> GuardedSite:
    """Bind and start a `GuardedSite` on a set-up runner."""
    sock = bind(host, port)
    site = GuardedSite(runner, sock, limits=limits, ssl_context=ssl_context, name=name)
    try:
        await site.start()
    except BaseException:
        with contextlib.suppress(Exception):
            await site.stop()
        sock.close()
        raise
    return site
