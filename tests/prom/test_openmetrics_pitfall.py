"""The OpenMetrics pitfall, observed: what Prometheus stores when a prometheus-client exporter
answers its OpenMetrics Accept header.

prometheus-client (0.26 here, as a vLLM image may ship) writes, in OpenMetrics, `# TYPE
vllm:num_requests_waiting gauge` but the sample line `vllm_num_requests_waiting{...}` (escaped).
The classic text format keeps `vllm:` on both. This pins what Debian's Prometheus (2.42) makes of
each, so docs/prometheus.md can say what users will see: the series are stored under the escaped
name, so dashboards and queries written for `vllm:` find nothing, while PrometheusSource (which
queries both spellings) still reads them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.openmetrics import exposition as om

from autoscaler.metrics.source import RoleTarget
from autoscaler.testing import pool_policy
from autoscaler.types import Role
from tests.prom import fleet as fl
from tests.prom.promserver import TEXT_FORMAT, Answer, PromServer, eventually, serve_expositions

pytestmark = pytest.mark.prometheus


@pytest.fixture(scope="module")
def negotiating_exporter(prom: PromServer) -> Iterator[dict[str, str]]:
    """Two pods of a prometheus-client exporter: one negotiates (OpenMetrics when asked, as
    prometheus-client's own handlers do), one always answers the classic format."""
    registry = CollectorRegistry()
    Gauge("vllm:num_requests_waiting", "w", ["model_name"], registry=registry).labels("m").set(3)
    Counter("vllm:prompt_tokens", "p", ["model_name"], registry=registry).labels("m").inc(5)
    Histogram("vllm:time_to_first_token_seconds", "t", ["model_name"], registry=registry).labels(
        "m"
    ).observe(0.2)
    seen: dict[str, str] = {}

    def answer(path: str, accept: str) -> Answer:
        seen[path] = accept
        if path == "/negotiating" and "application/openmetrics-text" in accept:
            return om.generate_latest(registry), om.CONTENT_TYPE_LATEST
        return generate_latest(registry), TEXT_FORMAT

    httpd = serve_expositions(answer)
    addr = f"127.0.0.1:{httpd.server_address[1]}"
    prom.set_targets(
        "vllm",
        "om",
        [
            {
                "targets": [addr],
                "labels": {"__metrics_path__": f"/{kind}", "namespace": "om", "pod": kind},
            }
            for kind in ("negotiating", "classic")
        ],
    )
    eventually(lambda: len(seen) == 2 and len(prom.query('up{namespace="om"}')) == 2)
    time.sleep(2.5)
    yield seen
    prom.set_targets("vllm", "om", [])
    httpd.shutdown()
    httpd.server_close()


def test_prometheus_asks_for_openmetrics(negotiating_exporter: dict[str, str]) -> None:
    """Prometheus 2.x puts OpenMetrics first in its Accept header."""
    assert negotiating_exporter["/negotiating"].startswith("application/openmetrics-text")


def test_client_escapes_sample_names_in_openmetrics() -> None:
    """The sample name no longer matches its TYPE line in prometheus-client's OpenMetrics."""
    registry = CollectorRegistry()
    Gauge("vllm:x", "x", registry=registry).set(1)
    text = om.generate_latest(registry).decode()
    assert "# TYPE vllm:x gauge" in text
    assert "\nvllm_x 1.0" in text


def test_what_prometheus_stores(prom: PromServer, negotiating_exporter: dict[str, str]) -> None:
    """Classic format: stored as vllm:. Negotiated OpenMetrics (Debian's Prometheus 2.42 with
    prometheus-client 0.26): every series is stored, but under the escaped vllm_ name only;
    the target is up and scrapes as many samples, so nothing but the names shows it."""

    def names(pod: str) -> set[str]:
        rows = prom.query(f'{{namespace="om",pod="{pod}",__name__=~"vllm.*"}}')
        return {r["metric"]["__name__"] for r in rows}

    classic, negotiated = names("classic"), names("negotiating")
    assert "vllm:num_requests_waiting" in classic
    assert all(n.startswith("vllm:") for n in classic)
    assert negotiated == {n.replace("vllm:", "vllm_", 1) for n in classic}
    scraped = {
        r["metric"]["pod"]: r["value"][1]
        for r in prom.query('scrape_samples_scraped{namespace="om"}')
    }
    assert scraped["negotiating"] == scraped["classic"]


async def test_source_reads_the_escaped_series(
    prom: PromServer, negotiating_exporter: dict[str, str]
) -> None:
    """PrometheusSource finds the negotiated pod's queue under its escaped name."""
    pf = pool_policy(
        aggregated=fl.role("om", "om", metrics={"pod_regex": "negotiating"}), pool={"name": "om"}
    )
    targets = [RoleTarget(pool="om", role=Role.AGGREGATED, spec=pf.pools[0].roles[Role.AGGREGATED])]
    src = fl.source(prom.url)
    try:
        samples = await src.fetch(targets, now=0.0)
    finally:
        src.close()
    q = samples[("om", Role.AGGREGATED)]["queue_depth"]
    assert (q.value, q.replicas) == (3.0, 1)
