"""Range queries for the forecast backfill: their PromQL, and `PrometheusSource.range_rates`
(chunking, the evaluation grid, errors) against a stubbed HTTP client. The same against a real
Prometheus is in tests/prom/test_range.py."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np
import pytest
import requests
from prometheus_api_client.exceptions import PrometheusApiClientException

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


class StubClient:
    """PrometheusConnect's custom_query_range, recording calls; scripted answers."""

    def __init__(self, answers: list[Any] | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.answers = answers or []
        self.headers: dict[str, str] | None = None

    def custom_query_range(self, query: str, *, start_time: datetime, end_time: datetime,
                           step: str, params: dict[str, str], timeout: float) -> Any:
        first, last = start_time.timestamp(), end_time.timestamp()
        self.calls.append({"query": query, "first": first, "end": last, "step": float(step),
                           "params": params, "timeout": timeout})
        if self.answers:
            answer = self.answers.pop(0)
            if isinstance(answer, BaseException):
                raise answer
            return answer
        # Prometheus' grid: first, first + step, ... <= end (first and end rounded).
        t, out = float(round(first)), []
        while t <= round(last):
            out.append([t, str(t / 1000)])
            t += float(step)
        return [{"metric": {}, "values": out}]

    def close(self) -> None:
        pass


def _source(stub: StubClient, **settings: Any) -> PrometheusSource:
    base: dict[str, Any] = {"url": "http://prom.invalid:9090", "retries": 1, "backoff_s": 0.0}
    src = PrometheusSource(PrometheusSettings(**{**base, **settings}))
    src._client = stub
    return src


async def test_range_rates_splits_long_ranges_on_one_grid() -> None:
    """A range longer than range_points_per_query is several requests whose points continue
    one grid: the middle of every step, none lost or repeated, oldest first."""
    stub = StubClient()
    src = _source(stub, range_points_per_query=4)
    start = 1_700_000_000.0
    ts, values = await src.range_rates(_target(), "request_rate", start=start,
                                       end=start + 10 * 60, step=60)
    assert len(stub.calls) == 3
    assert ts.tolist() == [start + 30 + 60 * i for i in range(10)]
    np.testing.assert_allclose(values, ts / 1000)
    assert {c["step"] for c in stub.calls} == {60.0}
    assert stub.calls[0]["params"] == {"timeout": "30000ms"}
    assert src.stats.range_queries == 3


async def test_range_rates_widens_the_rate_window_to_the_step() -> None:
    """With steps longer than rate_window_s each point's rate covers its whole step."""
    stub = StubClient()
    src = _source(stub, rate_window_s=120)
    await src.range_rates(_target(), "generation_tokens_rate", start=0.0, end=3600.0, step=300)
    assert "[300s]" in stub.calls[0]["query"]
    await src.range_rates(_target(), "generation_tokens_rate", start=0.0, end=3600.0, step=60)
    assert "[120s]" in stub.calls[1]["query"]


async def test_range_rates_no_data_is_empty() -> None:
    src = _source(StubClient(answers=[[]]))
    ts, values = await src.range_rates(_target(), "running", start=0.0, end=600.0, step=60)
    assert (ts.size, values.size) == (0, 0)


async def test_range_rates_failure_raises_after_retries() -> None:
    """A request that fails after its retries fails the whole range, naming role and series;
    a 5xx is retried, a 4xx is not."""
    http500 = PrometheusApiClientException("HTTP Status Code 503 (b'overloaded')")
    stub = StubClient(answers=[http500, http500])
    src = _source(stub)
    with pytest.raises(errors.MetricsUnavailable, match="range query running of llama/prefill "
                       r"failed \(error\).*503"):
        await src.range_rates(_target(), "running", start=0.0, end=600.0, step=60)
    assert len(stub.calls) == 2
    assert src.stats.problems[("range_running", "error")] == 1

    http400 = PrometheusApiClientException("HTTP Status Code 400 (b'bad_data')")
    stub = StubClient(answers=[http400])
    with pytest.raises(errors.MetricsUnavailable):
        await _source(stub).range_rates(_target(), "running", start=0.0, end=600.0, step=60)
    assert len(stub.calls) == 1

    stub = StubClient(answers=[requests.exceptions.ConnectionError("refused")] * 2)
    with pytest.raises(errors.MetricsUnavailable, match="unreachable"):
        await _source(stub).range_rates(_target(), "running", start=0.0, end=600.0, step=60)


async def test_range_rates_bad_selector_or_series_is_a_value_error() -> None:
    src = _source(StubClient())
    with pytest.raises(ValueError, match="pod_regex"):
        await src.range_rates(_target(pod_regex="("), "running", start=0.0, end=60.0, step=60)
    with pytest.raises(ValueError, match="no range query"):
        await src.range_rates(_target(), "queue_depth", start=0.0, end=60.0, step=60)


async def test_range_rates_drops_malformed_and_impossible_points() -> None:
    """Issue 17: a negative (counter reset), absurd, non-numeric or misshapen point is dropped
    like a missing step; rows that are not objects are skipped; nothing raises."""
    rows: list[Any] = [
        {"metric": {}, "values": [[60, "-5"], [120, "abc"], [180, "1e308"], [240, "2"], "x",
                                  [300], [360, None], ["NaN", "3"]]},
        None,
        {"values": None},
        "row",
    ]
    src = _source(StubClient(answers=[rows]))
    ts, values = await src.range_rates(_target(), "running", start=0.0, end=600.0, step=600)
    assert ts.tolist() == [240.0]
    assert values.tolist() == [2.0]


async def test_range_rates_body_the_client_cannot_index_is_unavailable() -> None:
    """`data: null` makes the client library raise TypeError: reported as a failed range query
    (reason malformed), not an exception out of the backfill."""
    stub = StubClient(answers=[TypeError("'NoneType' object is not subscriptable")] * 2)
    src = _source(stub)
    with pytest.raises(errors.MetricsUnavailable, match=r"failed \(malformed\)"):
        await src.range_rates(_target(), "running", start=0.0, end=600.0, step=60)
    assert src.stats.problems[("range_running", "malformed")] == 1
