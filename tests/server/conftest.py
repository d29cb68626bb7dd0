"""Fixtures for the server tests: a throw-away PKI, a store holding a real decision, and the
external-metrics API running over TLS in a background thread (so sync clients, hypothesis and
raw sockets can hit it like the aggregator would)."""

from __future__ import annotations

import asyncio
import http.client
import json
import ssl
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from autoscaler import testing
from autoscaler.server import external_metrics as em
from autoscaler.server.store import DecisionStore
from autoscaler.types import Decision

from .certs import Pki, make_pki

pytestmark = pytest.mark.external_metrics


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def sample_decision() -> tuple[Decision, Any]:
    """Pool `p` in namespace `t`: prefill on queue_depth (target 5), decode on kv_cache (0.8).
    prefill: 2 replicas x 20 waiting -> ceil(40 / 5) = 8 (panic: 8 >= 2 x 2 ready);
    decode: 3 replicas at 0.5 -> 2 wanted, but the 300 s down window holds 3."""
    policy = testing.pool_policy(
        prefill={
            "signals": [{"signal": "queue_depth", "target": 5}],
            # The whole queue need at once (the stock step has its own core tests).
            "behavior": {"stock_max_step": None},
        },
        decode={"signals": [{"signal": "kv_cache", "target": 0.8}]},
    )
    ticker = testing.Ticker(policy)
    ticker.tick(0, prefill=testing.obs(2, queue_depth=20), decode=testing.obs(3, kv_cache=0.5))
    return ticker.decisions[-1], policy


@pytest.fixture
def store() -> DecisionStore:
    s = DecisionStore()
    decision, policy = sample_decision()
    s.update(decision, policy)
    return s


class ThreadedServer:
    """An ExternalMetricsServer on its own event loop in a daemon thread."""

    def __init__(self, server: em.ExternalMetricsServer) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> ThreadedServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    @property
    def port(self) -> int:
        return self.server.port


def client_ctx(pki: Pki, cert: str | None = "proxy") -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.crt("serving-ca")))
    if cert is not None:
        ctx.load_cert_chain(*pki.pair(cert))
    return ctx


def get(
    port: int,
    path: str,
    *,
    ctx: ssl.SSLContext,
    headers: dict[str, str] | None = None,
    method: str = "GET",
) -> tuple[int, Any]:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    try:
        h = {
            "X-Remote-User": "system:serviceaccount:kube-system:horizontal-pod-autoscaler",
            "X-Remote-Group": "system:serviceaccounts",
        }
        h.update(headers or {})
        conn.request(method, path, headers=h)
        resp = conn.getresponse()
        body = resp.read()
        try:
            return resp.status, json.loads(body)
        except ValueError:
            return resp.status, body.decode(errors="replace")
    finally:
        conn.close()


def start_server(
    pki: Pki,
    store: DecisionStore,
    *,
    allowed: tuple[str, ...] = ("front-proxy-client",),
    authorizer: em.Authorizer | None = None,
    options: em.ExternalMetricsOptions | None = None,
) -> ThreadedServer:
    settings = em.ExternalMetricsSettings(
        cert_file=pki.crt("server"),
        key_file=pki.key("server"),
        host="127.0.0.1",
        port=0,
        requestheader_ca_file=pki.crt("front-proxy-ca"),
        requestheader_allowed_names=allowed,
        authorize_with_sar=False,
        options=options or em.ExternalMetricsOptions(),
    )
    return ThreadedServer(em.ExternalMetricsServer(store, settings, authorizer=authorizer))


@pytest.fixture
def api_server(pki: Pki, store: DecisionStore) -> Iterator[ThreadedServer]:
    with start_server(pki, store) as srv:
        yield srv


@pytest.fixture(scope="module")
def shared_server(pki: Pki) -> Iterator[tuple[ThreadedServer, DecisionStore]]:
    """One server for the fuzz tests (starting one per hypothesis example would dominate)."""
    s = DecisionStore()
    decision, policy = sample_decision()
    s.update(decision, policy)
    with start_server(pki, s) as srv:
        yield srv, s
