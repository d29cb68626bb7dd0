"""dashboards/pd-autoscaler.json against the real Prometheus: every expression parses and
returns data.

The Prometheus scrapes the fake vLLM fleet and an exporter of `telemetry.Telemetry`, fed by a
real control loop (`loop.Loop`) ticking every second on PrometheusSource readings of that fleet,
so no panel can query a metric or label that the controller or vLLM does not produce.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from autoscaler import telemetry
from autoscaler.actuator.base import WorkloadStatus
from autoscaler.loop import Loop
from autoscaler.metrics.prometheus import PrometheusSource
from autoscaler.spec import DeploymentRef
from tests.prom import fleet as fl
from tests.prom.promserver import PromServer, eventually

pytestmark = pytest.mark.prometheus

DASHBOARD = Path(__file__).resolve().parents[2] / "dashboards" / "pd-autoscaler.json"
# Grafana's variables, as the test resolves them: every pool, role and namespace; windows
# long enough for rate() at a 1 s scrape interval.
VARIABLES = {
    "$__rate_interval": "10s",
    "$__interval": "5s",
    "$__range": "1m",
    "$pool": ".*",
    "$role": ".*",
    "$namespace": ".*",
}


class _Actuator:
    """Two ready replicas everywhere; scale() is accepted and forgotten."""

    async def status(self, ref: DeploymentRef) -> WorkloadStatus:
        return WorkloadStatus(replicas=2, ready=2, pending=0)

    async def scale(self, ref: DeploymentRef, replicas: int, *, reason: str) -> None:
        return None


@pytest.fixture(scope="module")
def controller(fleet: fl.Fleet) -> Iterator[telemetry.Telemetry]:
    tel = telemetry.Telemetry()
    stop = threading.Event()

    async def run() -> None:
        source = PrometheusSource(fl.settings(fleet.prom.url), telemetry=tel)
        loop = Loop(
            fleet.policy,
            telemetry.InstrumentedSource(source, tel),
            _Actuator(),
            hooks=[tel.record_decision],
        )
        tel.config_reload(ok=True)
        tel.set_leader(leader=True)
        tel.kubernetes_api_error(operation="patch_scale", code=409)
        try:
            while not stop.is_set():
                start = time.perf_counter()
                await loop.tick(time.monotonic())
                tel.observe_tick(time.perf_counter() - start)
                for pool in fleet.policy.pools:
                    for role in pool.roles:
                        tel.record_forecast(
                            pool.name, role.value, series="request_rate", value=4.0, horizon_s=120
                        )
                await asyncio.sleep(1.0)
        finally:
            source.close()

    ticker = threading.Thread(target=asyncio.run, args=(run(),), daemon=True)
    ticker.start()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = tel.render()
            self.send_response(200)
            self.send_header("Content-Type", telemetry.CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    port = httpd.server_address[1]
    fleet.prom.set_targets("controller", "pd", [{"targets": [f"127.0.0.1:{port}"]}])
    eventually(lambda: fleet.prom.query("pd_autoscaler_desired_replicas"))
    time.sleep(6)  # several scrapes, so rate() over 10 s has at least two samples
    yield tel
    stop.set()
    ticker.join(timeout=30)
    fleet.prom.set_targets("controller", "pd", [])
    httpd.shutdown()
    httpd.server_close()


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def expressions() -> list[tuple[str, str]]:
    out = []
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            out.append((f"{panel['title']} [{target['refId']}]", target["expr"]))
    return out


def resolve(expr: str) -> str:
    # Longest names first: $__rate_interval before $__range/$__interval.
    for name in sorted(VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, VARIABLES[name])
    assert "$" not in expr, f"unresolved variable in {expr}"
    return expr


def test_dashboard_shape() -> None:
    """Datasource is a template variable used by every panel; pool/role variables exist."""
    d = dashboard()
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert {"pool", "role", "namespace"} <= set(variables)
    for panel in d["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]


@pytest.mark.parametrize(("where", "expr"), expressions(), ids=[w for w, _ in expressions()])
def test_panel_expression_returns_data(
    controller: telemetry.Telemetry, prom: PromServer, where: str, expr: str
) -> None:
    """Each panel query parses in Prometheus and returns at least one series."""
    promql = resolve(expr)
    eventually(lambda: prom.query(promql), timeout=15)


def test_variable_queries_return_values(controller: telemetry.Telemetry, prom: PromServer) -> None:
    """The pool, role and namespace variables' label_values() selectors have series with
    those labels."""
    for v in dashboard()["templating"]["list"]:
        if v["type"] != "query":
            continue
        m = re.fullmatch(r"label_values\((.+), (\w+)\)", v["definition"])
        assert m, v["definition"]
        rows = prom.query(resolve(m.group(1)))
        assert any(m.group(2) in r["metric"] for r in rows), v["name"]
