"""The kind overlay and the dashboard, against a real Prometheus scraping simulated vLLM pods.

What `kubectl apply -k manifests/overlays/kind` would run, without a cluster: the overlay is
rendered with kubectl; each simulated vLLM Deployment's container args run as a local process
(`pd-autoscaler sim serve ...`, host and port moved to 127.0.0.1 and a free port); Debian's
Prometheus runs the overlay's own scrape config, in which the only change is that pod discovery
reads a file listing the pods with the `__meta_kubernetes_*` labels Kubernetes discovery would
give them (namespace, pod name, phase, IP, the Deployment's annotations), so the overlay's
relabelling rules are what picks the targets, paths and labels. The global scrape interval is
lowered to 1 s so rate() has samples within seconds.

A real control loop (`loop.Loop` over `PrometheusSource`, the rendered policy plus a quick
forecast on each role, its clock sped up: see CLOCK_RATE) ticks every second and exports its telemetry over HTTP; that endpoint is
listed as the controller pod with the rendered controller Deployment's annotations. Then:
the simulated pods are scraped under the names the policy matches, the controller reads every
configured signal from them, the controller pod is scraped, and every dashboard panel's query
(and variable) returns data. One series is set by hand (see the fixture): Kubernetes API errors.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from autoscaler import telemetry
from autoscaler.actuator.base import WorkloadStatus
from autoscaler.loop import Loop
from autoscaler.metrics.prometheus import PrometheusSource
from autoscaler.metrics.settings import PrometheusSettings
from autoscaler.policy.load import parse_policy
from autoscaler.spec import DeploymentRef, PolicyFile
from autoscaler.types import Role
from tests import kubectl
from tests.prom.promserver import PromServer, eventually, free_port, serve_expositions

pytestmark = pytest.mark.prometheus

ROOT = Path(__file__).resolve().parents[2]
OVERLAY = ROOT / "manifests" / "overlays" / "kind"
DASHBOARD = ROOT / "dashboards" / "pd-autoscaler.json"
ANNOTATION = "__meta_kubernetes_pod_annotation_"
# Grafana's variables as the test resolves them: every pool, role, namespace; windows that
# hold several 1 s scrapes.
VARIABLES = {
    "$__rate_interval": "10s",
    "$__interval": "5s",
    "$__range": "1m",
    "$pool": ".*",
    "$role": ".*",
    "$namespace": ".*",
}
# A forecast that produces a value within about a minute: the loop's clock runs CLOCK_RATE
# times faster than the wall clock (the data in Prometheus stays real-time; only the
# controller's own timers, bins and windows are compressed), 10 s bins, a 10 s horizon, 25
# validation bins (a fit needs 4 x horizon + 10 + validation bins and 20 validation errors), the
# last value as the model, a fixed capacity (no learning period).
CLOCK_RATE = 10.0
QUICK_FORECAST = {
    "kind": "forecast",
    "model": "last_value",
    "bin_s": 10,
    "min_bin_s": 10,  # a compressed clock: 10-s bins are minutes of the loop's time
    "horizon_s": 10,
    "min_history_s": 60,
    "validation_s": 250,
    "holt_window_s": 600,
    "refit_every_s": 60,
    "capacity_per_replica": 1000,
}


def render() -> list[dict[str, Any]]:
    return kubectl.kustomize(OVERLAY)


def one(docs: list[dict[str, Any]], kind: str, name: str, namespace: str | None = None
        ) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name
              and (namespace is None or d["metadata"].get("namespace") == namespace)]
    return doc


def sim_deployments(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["namespace"] == "llm"]


def overlay_policy(docs: list[dict[str, Any]]) -> PolicyFile:
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap"
             and d["metadata"].get("labels", {}).get("pd-autoscaler.io/policy") == "true"]
    (text,) = cm["data"].values()
    return parse_policy(text, source="kind overlay policy")


# --- static wiring ----------------------------------------------------------------------------


def test_overlay_wires_controller_to_its_prometheus() -> None:
    """The controller's default URL names the overlay's Prometheus Service; the simulated pods
    replace the GPU servers under the names the policy scales; the controller is scraped."""
    docs = render()
    ctrl = one(docs, "Deployment", "pd-autoscaler", "pd-autoscaler")
    env = {e["name"]: e.get("value") for e in ctrl["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["PD_AUTOSCALER_PROMETHEUS_URL"] == "http://prometheus-operated.monitoring.svc:9090"
    assert env["PD_AUTOSCALER_DRY_RUN"] == "true"
    svc = one(docs, "Service", "prometheus-operated", "monitoring")
    assert [p["port"] for p in svc["spec"]["ports"]] == [9090]
    assert ctrl["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    policy = overlay_policy(docs)
    targets = {(r.deployment.namespace, r.deployment.name)
               for p in policy.pools for r in p.roles.values()}
    sims = sim_deployments(docs)
    assert {("llm", d["metadata"]["name"]) for d in sims} == targets
    for d in sims:
        c = d["spec"]["template"]["spec"]["containers"][0]
        assert c["image"] == "pd-autoscaler:dev"
        assert c["args"][:2] == ["sim", "serve"]
        assert "nvidia.com/gpu" not in json.dumps(c["resources"])
    # No missing-data floor in the shipped policy: without Prometheus the role holds.
    for p in policy.pools:
        for r in p.roles.values():
            assert r.missing_data.floor_replicas is None


# --- the running overlay ----------------------------------------------------------------------


@dataclass
class Pod:
    namespace: str
    name: str
    port: int
    annotations: dict[str, str]

    def sd_entry(self) -> dict[str, Any]:
        labels = {
            "__meta_kubernetes_namespace": self.namespace,
            "__meta_kubernetes_pod_name": self.name,
            "__meta_kubernetes_pod_phase": "Running",
            "__meta_kubernetes_pod_ip": "127.0.0.1",
        }
        for k, v in self.annotations.items():
            labels[ANNOTATION + re.sub(r"[^a-zA-Z0-9_]", "_", k)] = v
        # The annotated port is the container's; locally it is the free port the process got.
        labels[ANNOTATION + "prometheus_io_port"] = str(self.port)
        return {"targets": [f"127.0.0.1:{self.port}"], "labels": labels}


def local_args(args: list[str], port: int) -> list[str]:
    out = list(args)
    out[out.index("--host") + 1] = "127.0.0.1"
    out[out.index("--port") + 1] = str(port)
    return out


def prom_config(docs: list[dict[str, Any]], sd_file: Path) -> dict[str, Any]:
    cm = one(docs, "ConfigMap", "prometheus-config", "monitoring")
    config: dict[str, Any] = yaml.safe_load(cm["data"]["prometheus.yml"])
    config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    for job in config["scrape_configs"]:
        assert job.pop("kubernetes_sd_configs")[0]["role"] == "pod"
        job["file_sd_configs"] = [{"files": [str(sd_file)], "refresh_interval": "1s"}]
    return config


class _Actuator:
    """One ready replica per role (shadow mode: nothing is ever written)."""

    async def status(self, ref: DeploymentRef) -> WorkloadStatus:
        return WorkloadStatus(replicas=1, ready=1, pending=0)

    async def scale(self, ref: DeploymentRef, replicas: int, *, reason: str) -> None:
        raise AssertionError("the kind overlay runs in shadow mode")


def with_forecasts(policy: PolicyFile) -> PolicyFile:
    data = policy.model_dump(mode="json", exclude_none=True)
    data["dry_run"] = True
    for pool in data["pools"]:
        for spec in pool["roles"].values():
            # Added to the shipped kinds (the slo default), not in their place: the dashboard's
            # panels are checked against what the shipped policy exports.
            spec["policies"] = [*spec.get("policies", []), copy.deepcopy(QUICK_FORECAST)]
    return PolicyFile.model_validate(data)


@dataclass
class Running:
    prom: PromServer
    pods: list[Pod]
    policy: PolicyFile
    tel: telemetry.Telemetry


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, prom_binary: str) -> Iterator[Running]:
    docs = render()
    tmp = tmp_path_factory.mktemp("kind")
    procs: list[subprocess.Popen[str]] = []
    pods: list[Pod] = []
    stop = threading.Event()
    httpd: ThreadingHTTPServer | None = None
    ticker: threading.Thread | None = None
    prom = PromServer(tmp / "prometheus", binary=prom_binary)
    try:
        for d in sim_deployments(docs):
            tpl = d["spec"]["template"]
            port = free_port()
            args = local_args(tpl["spec"]["containers"][0]["args"], port)
            proc = subprocess.Popen([sys.executable, "-m", "autoscaler", *args],
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            procs.append(proc)
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == f"http://127.0.0.1:{port}"
            pods.append(Pod("llm", f"{d['metadata']['name']}-5d8c7b9f4-x2k7q", port,
                            tpl["metadata"]["annotations"]))

        policy = with_forecasts(overlay_policy(docs))
        tel = telemetry.Telemetry()

        httpd = serve_expositions(lambda path, accept: (tel.render(), telemetry.CONTENT_TYPE))
        ctrl = one(docs, "Deployment", "pd-autoscaler", "pd-autoscaler")
        pods.append(Pod("pd-autoscaler", "pd-autoscaler-6f9c8d7b5-q8z2m", httpd.server_address[1],
                        ctrl["spec"]["template"]["metadata"]["annotations"]))

        sd_file = tmp / "pods.json"
        sd_file.write_text(json.dumps([p.sd_entry() for p in pods]), encoding="utf-8")
        (prom.dir / "prometheus.yml").write_text(json.dumps(prom_config(docs, sd_file)))
        prom.start()

        async def run() -> None:
            source = PrometheusSource(
                PrometheusSettings(url=prom.url, rate_window_s=6.0, max_sample_age_s=15.0),
                telemetry=tel,
            )
            loop = Loop(policy, telemetry.InstrumentedSource(source, tel), _Actuator(),
                        hooks=[tel.record_decision])
            tel.config_reload(ok=True)
            tel.set_leader(leader=True)
            # The one series set by hand: the controller does not count its Kubernetes API
            # errors yet (controller.py never calls this), and there is no API server here.
            tel.kubernetes_api_error(operation="patch_scale", code=409)
            t0 = time.monotonic()
            try:
                while not stop.is_set():
                    start = time.perf_counter()
                    await loop.tick(t0 + CLOCK_RATE * (time.monotonic() - t0))
                    tel.observe_tick(time.perf_counter() - start)
                    await asyncio.sleep(1.0)
            finally:
                source.close()

        ticker = threading.Thread(target=asyncio.run, args=(run(),), daemon=True)
        ticker.start()
        yield Running(prom, pods, policy, tel)
    finally:
        stop.set()
        if ticker is not None:
            ticker.join(timeout=30)
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        prom.stop()
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=20)
            if proc.stdout is not None:
                proc.stdout.close()


def test_simulated_pods_are_scraped_as_the_policy_expects(running: Running) -> None:
    """Prometheus, with the overlay's relabelling, scrapes each simulated pod at its annotated
    path under the namespace and pod labels the policy's default match selects."""
    for pod in running.pods[:-1]:
        rows = eventually(lambda p=pod: running.prom.query(
            f'vllm:num_requests_running{{namespace="llm",pod="{p.name}"}}'), timeout=30)
        assert rows
    want = {(p.namespace, p.name) for p in running.pods}

    def every_pod_up() -> list[dict[str, Any]]:
        # Every target, the controller's own pod included, once its first scrape is in.
        up = running.prom.query('up{job="annotated-pods"}')
        assert {(r["metric"]["namespace"], r["metric"]["pod"]) for r in up} == want
        return up

    up = eventually(every_pod_up, timeout=30)
    assert all(r["value"][1] == "1" for r in up)


def test_controller_reads_every_signal_from_the_simulated_pods(running: Running) -> None:
    """Through the overlay's Prometheus the controller sees data for every configured signal
    and every policy kind (the shipped default is the slo kind, whose need is `slo:<role>`) of
    both roles (not the 'hold: all signals missing' the kind path used to show)."""
    expected = 0
    for pool in running.policy.pools:
        for spec in pool.roles.values():
            expected += len(spec.signals) + len(spec.policies)
    assert expected >= 2  # the shipped policy sizes both roles by something

    def check() -> None:
        rows = running.prom.query("pd_autoscaler_signal_missing")
        seen = {(r["metric"]["role"], r["metric"]["signal"]): r["value"][1] for r in rows}
        for pool in running.policy.pools:
            for role, spec in pool.roles.items():
                for sig in spec.signals:
                    key = sig.signal.value if sig.quantile is None else None
                    matches = [v for (r, s), v in seen.items()
                               if r == role.value and (s == key or s.startswith(sig.signal.value))]
                    assert matches, (role, sig.signal)
                    assert matches[0] == "0", (role, sig.signal, matches)
                for ref in spec.policies:
                    matches = [v for (r, s), v in seen.items()
                               if r == role.value and s.startswith(f"{ref.kind}:")]
                    assert matches, (role, ref.kind, seen)
                    assert matches[0] == "0", (role, ref.kind, matches)

    eventually(check, timeout=60)
    assert Role.PREFILL in running.policy.pools[0].roles


# --- the dashboard ----------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def expressions() -> list[tuple[str, str]]:
    return [(f"{p['title']} [{t['refId']}]", t["expr"])
            for p in dashboard()["panels"] for t in p.get("targets", [])]


def resolve(expr: str) -> str:
    for name in sorted(VARIABLES, key=len, reverse=True):  # $__rate_interval before $__range
        expr = expr.replace(name, VARIABLES[name])
    assert "$" not in expr.replace("$1", ""), f"unresolved variable in {expr}"
    return expr


def test_dashboard_shape() -> None:
    """Datasource is a template variable used by every panel; pool/role variables exist; no
    panel queries the forecast gauge nothing in the controller sets."""
    d = dashboard()
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert {"pool", "role", "namespace"} <= set(variables)
    for panel in d["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
    assert "pd_autoscaler_forecast_value" not in json.dumps(d)


@pytest.mark.parametrize(("where", "expr"), expressions(), ids=[w for w, _ in expressions()])
def test_panel_expression_returns_data(running: Running, where: str, expr: str) -> None:
    """Each panel query parses in Prometheus and returns at least one series."""
    promql = resolve(expr)
    eventually(lambda: running.prom.query(promql), timeout=180)


def test_forecast_panel_pairs_each_series_with_itself(running: Running) -> None:
    """Forecast vs actual: every actual series has a forecast of the same series, pool and
    role (tokens/s against tokens/s, never against requests/s)."""
    (panel,) = [p for p in dashboard()["panels"] if p.get("title") == "Forecast vs actual"]
    fc, actual = (resolve(t["expr"]) for t in panel["targets"])

    def pairs() -> None:
        f = {(r["metric"]["pool"], r["metric"]["role"], r["metric"]["series"])
             for r in running.prom.query(fc)}
        a = {(r["metric"]["pool"], r["metric"]["role"], r["metric"]["series"])
             for r in running.prom.query(actual)}
        assert a
        assert a <= f
        assert {s for _, _, s in a} == {"prompt_tokens_rate", "generation_tokens_rate"}

    eventually(pairs, timeout=180)


def test_variable_queries_return_values(running: Running) -> None:
    for v in dashboard()["templating"]["list"]:
        if v["type"] != "query":
            continue
        m = re.fullmatch(r"label_values\((.+), (\w+)\)", v["definition"])
        assert m, v["definition"]
        selector = resolve(m.group(1))
        rows = eventually(lambda q=selector: running.prom.query(q), timeout=60)
        assert any(m.group(2) in r["metric"] for r in rows), v["name"]
