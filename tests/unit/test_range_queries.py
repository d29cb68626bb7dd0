"""Range queries for the forecast backfill: their PromQL, and `PrometheusSource.range_rates`
(chunking, the evaluation grid, errors) against a scripted HTTP server. The same against a real
Prometheus is in tests/prom/test_range.py."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np
import pytest
from aiohttp import web

from autoscaler import errors
from autoscaler.metrics import queries
from autoscaler.metrics.prometheus import PrometheusSource
from autoscaler.metrics.settings import PrometheusSettings
from autoscaler.metrics.source import RoleTarget
from autoscaler.spec import RoleSpec
from autoscaler.types import Role


def _target(**metrics: Any) -> RoleTarget:
    spec = RoleSpec.model_validate({
        "deployment": {"namespace": "llm", "name": "llama-prefill"},
        "max_replicas": 8,
        "signals": [{"signal": "queue_depth", "target": 4}],
        "metrics": metrics,
    })
    return RoleTarget(pool="llama", role=Role.PREFILL, spec=spec)


def _builder(window_s: float = 120) -> tuple[queries.Builder, queries.RoleSelector]:
    sel = queries.role_selector(_target(), pod_label="pod", namespace_label="namespace")
    return queries.Builder(names=queries.Names.all(), rate_window_s=window_s), sel


def test_role_total_of_a_rate_is_the_instant_rate_summed() -> None:
    """The per-pod rate of the instant query, for one role, NaN/Inf pods filtered, summed."""
    b, sel = _builder()
    promql = b.role_total("prompt_tokens_rate", sel)
    per_pod = b.rate(queries.Family.PROMPT_TOKENS, [sel])
    assert promql == f"sum(({per_pod}) > -Inf < +Inf)"
    # The role's ReplicaSet pod names exactly, as the instant queries derive them.
    pods = 'pod=~"llama\\\\-prefill-[a-z0-9]{1,10}-[a-z0-9]{5}"'
    assert f'rate(vllm:prompt_tokens_total{{namespace="llm",{pods}}}[120s])' in promql
    assert "vllm_prompt_tokens_total{" in promql  # the escaped spelling too
    assert '"pd_role", "prefill"' in promql
    assert "decode" not in promql


def test_role_total_of_running_is_the_gauge_without_its_age() -> None:
    """`running` sums the pods' running gauges (engines folded as the instant query does)."""
    b, sel = _builder()
    promql = b.role_total("running", sel)
    assert promql.startswith("sum(((sum by (pd_pool, pd_role, pod) (max by (pd_pool, pd_role, "
                             "pod, engine) (label_replace(label_replace(vllm:num_requests_"
                             "running{")
    assert "timestamp(" not in promql
    assert "rate(" not in promql


def test_role_total_refuses_other_series() -> None:
    b, sel = _builder()
    with pytest.raises(ValueError, match="no range query for series 'kv_cache'"):
        b.role_total("kv_cache", sel)


class StubPrometheus:
    """An HTTP server answering `/api/v1/query_range` from a script, recording each request.

    Each scripted answer is a list of matrix rows (a success) or (status, JSON body); with the
    script empty it answers Prometheus' grid (start, start + step, ... <= end) with value t/1000.
    """

    def __init__(self, answers: list[Any] | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.answers = answers or []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.calls.append({
            "path_qs": request.path_qs, "query": form["query"], "first": float(form["start"]),
            "end": float(form["end"]), "step": float(form["step"]), "timeout": form["timeout"],
        })
        status, body = 200, None
        if self.answers:
            answer = self.answers.pop(0)
            if isinstance(answer, tuple):
                status, body = answer
            else:
                body = {"status": "success", "data": {"resultType": "matrix", "result": answer}}
        if body is None:
            t, out = float(form["start"]), []
            while t <= float(form["end"]):
                out.append([t, str(t / 1000)])
                t += float(form["step"])
            body = {"status": "success",
                    "data": {"resultType": "matrix", "result": [{"metric": {}, "values": out}]}}
        return web.json_response(body, status=status)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/api/v1/query_range", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def stub() -> AsyncIterator[Callable[..., Awaitable[StubPrometheus]]]:
    started: list[StubPrometheus] = []

    async def make(answers: list[Any] | None = None) -> StubPrometheus:
        server = StubPrometheus(answers)
        await server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        await server.stop()


def _source(url: str, **settings: Any) -> PrometheusSource:
    base: dict[str, Any] = {"url": url, "retries": 1, "backoff_s": 0.0}
    return PrometheusSource(PrometheusSettings(**{**base, **settings}))


Stub = Callable[..., Awaitable[StubPrometheus]]


async def test_range_rates_splits_long_ranges_on_one_grid(stub: Stub) -> None:
    """A range longer than range_points_per_query is several requests whose points continue
    one grid: the middle of every step, none lost or repeated, oldest first. The PromQL is in
    the form-encoded body, never in the URL."""
    prom = await stub()
    src = _source(prom.url, range_points_per_query=4)
    start = 1_700_000_000.0
    ts, values = await src.range_rates(_target(), "request_rate", start=start,
                                       end=start + 10 * 60, step=60)
    assert len(prom.calls) == 3
    assert ts.tolist() == [start + 30 + 60 * i for i in range(10)]
    np.testing.assert_allclose(values, ts / 1000)
    assert {c["step"] for c in prom.calls} == {60.0}
    assert prom.calls[0]["timeout"] == "30000ms"
    assert {c["path_qs"] for c in prom.calls} == {"/api/v1/query_range"}
    assert src.stats.range_queries == 3


async def test_range_rates_widens_the_rate_window_to_the_step(stub: Stub) -> None:
    """With steps longer than rate_window_s each point's rate covers its whole step."""
    prom = await stub()
    src = _source(prom.url, rate_window_s=120)
    await src.range_rates(_target(), "generation_tokens_rate", start=0.0, end=3600.0, step=300)
    assert "[300s]" in prom.calls[0]["query"]
    await src.range_rates(_target(), "generation_tokens_rate", start=0.0, end=3600.0, step=60)
    assert "[120s]" in prom.calls[1]["query"]


async def test_range_rates_no_data_is_empty(stub: Stub) -> None:
    prom = await stub([[]])
    ts, values = await _source(prom.url).range_rates(
        _target(), "running", start=0.0, end=600.0, step=60
    )
    assert (ts.size, values.size) == (0, 0)


def _error(status: int, kind: str) -> tuple[int, dict[str, str]]:
    return status, {"status": "error", "errorType": kind, "error": f"HTTP {status} {kind}"}


async def test_range_rates_failure_raises_after_retries(stub: Stub) -> None:
    """A request that fails after its retries fails the whole range, naming role and series;
    a 5xx is retried, a 4xx is not; a refused connection is "unreachable"."""
    prom = await stub([_error(503, "unavailable"), _error(503, "unavailable")])
    src = _source(prom.url)
    with pytest.raises(errors.MetricsUnavailable, match="range query running of llama/prefill "
                       r"failed \(error\).*503"):
        await src.range_rates(_target(), "running", start=0.0, end=600.0, step=60)
    assert len(prom.calls) == 2
    assert src.stats.problems[("range_running", "error")] == 1

    prom = await stub([_error(400, "bad_data")])
    with pytest.raises(errors.MetricsUnavailable):
        await _source(prom.url).range_rates(_target(), "running", start=0.0, end=600.0, step=60)
    assert len(prom.calls) == 1

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        with pytest.raises(errors.MetricsUnavailable, match="unreachable"):
            await _source(url).range_rates(_target(), "running", start=0.0, end=600.0, step=60)


async def test_range_rates_bad_selector_or_series_is_a_value_error() -> None:
    src = _source("http://prom.invalid:9090")
    with pytest.raises(ValueError, match="pod_regex"):
        await src.range_rates(_target(pod_regex="("), "running", start=0.0, end=60.0, step=60)
    with pytest.raises(ValueError, match="no range query"):
        await src.range_rates(_target(), "queue_depth", start=0.0, end=60.0, step=60)


async def test_range_rates_drops_malformed_and_impossible_points(stub: Stub) -> None:
    """Issue 17: a negative (counter reset), absurd, non-numeric or misshapen point is dropped
    like a missing step; rows that are not objects are skipped; nothing raises."""
    rows: list[Any] = [
        {"metric": {}, "values": [[60, "-5"], [120, "abc"], [180, "1e308"], [240, "2"], "x",
                                  [300], [360, None], ["NaN", "3"]]},
        None,
        {"values": None},
        "row",
    ]
    prom = await stub([rows])
    ts, values = await _source(prom.url).range_rates(
        _target(), "running", start=0.0, end=600.0, step=600
    )
    assert ts.tolist() == [240.0]
    assert values.tolist() == [2.0]


async def test_range_rates_body_that_is_no_matrix_is_unavailable(stub: Stub) -> None:
    """`data: null` (or any body that is not a range matrix) is a failed range query (reason
    malformed, not retried: the same answer would come again), not an exception out of the
    backfill."""
    prom = await stub([(200, {"status": "success", "data": None})])
    src = _source(prom.url)
    with pytest.raises(errors.MetricsUnavailable, match=r"failed \(malformed\)"):
        await src.range_rates(_target(), "running", start=0.0, end=600.0, step=60)
    assert src.stats.problems[("range_running", "malformed")] == 1
    assert len(prom.calls) == 1
