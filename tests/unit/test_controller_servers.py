"""The controller's adoption servers without a cluster: settings (environment names as the
manifests use them, flags, validation), start/stop wiring of the external-metrics API, the KEDA
gRPC scaler and the metrics-api route inside `Controller.run`, the leader EndpointSlice, and
the "no data" answers of a standby. The same against the real control plane, with a real HPA, is
tests/e2e/test_controller_servers_e2e.py."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import grpc
import pytest
import yaml
from kubernetes_asyncio.client.rest import ApiException

from autoscaler import cli, errors
from autoscaler.controller import app as controller
from autoscaler.controller import backoff, factory
from autoscaler.controller import settings as settings_mod
from autoscaler.controller.endpoint import LeaderEndpoint
from autoscaler.controller.servers import AdoptionServers
from autoscaler.controller.settings import ENV_PREFIX, Settings, settings_from
from autoscaler.controller.state_store import StateStore
from autoscaler.server import external_metrics as em
from autoscaler.server import points
from autoscaler.server._keda_pb import externalscaler_pb2 as pb
from autoscaler.server._keda_pb import externalscaler_pb2_grpc as pb_grpc
from autoscaler.server.external_metrics import server as em_server
from autoscaler.server.store import DecisionStore
from autoscaler.telemetry import Telemetry
from autoscaler.testing import FakeActuator, FakeEvents, FakeLease, FakeMetricsSource
from autoscaler.types import Role
from tests import kubectl as kubectl_mod
from tests.server.certs import Pki, make_pki
from tests.unit.fakes import FakeDiscovery, FakeStateCore, ep

ROOT = Path(__file__).resolve().parents[2]
NO_API: Any = SimpleNamespace()
POOL = "p"
ROLE = Role.AGGREGATED


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def cert_dir(tmp_path: Path, pki: Pki) -> Path:
    """A directory shaped like a mounted kubernetes.io/tls Secret."""
    d = tmp_path / "tls"
    d.mkdir()
    shutil.copyfile(pki.crt("server"), d / "tls.crt")
    shutil.copyfile(pki.key("server"), d / "tls.key")
    return d


# --- settings -------------------------------------------------------------------------------


def test_env_names_parse_into_settings(cert_dir: Path, tmp_path: Path) -> None:
    """Every adoption variable, spelled as the manifests spell it, lands in its field; the
    downward API's POD_NAME/POD_NAMESPACE are read unprefixed."""
    ca = tmp_path / "ca.crt"
    ca.write_text("x")
    env = {
        "PD_AUTOSCALER_NAMESPACE": "pd-autoscaler",
        "PD_AUTOSCALER_EXTERNAL_METRICS_PORT": "6443",
        "PD_AUTOSCALER_EXTERNAL_METRICS_CERT_DIR": str(cert_dir),
        "PD_AUTOSCALER_KEDA_GRPC_PORT": "9090",
        "PD_AUTOSCALER_KEDA_GRPC_CERT_DIR": str(cert_dir),
        "PD_AUTOSCALER_KEDA_GRPC_CLIENT_CA_FILE": str(ca),
        "PD_AUTOSCALER_KEDA_METRICS_API": "true",
        "PD_AUTOSCALER_SERVE_MAX_AGE_S": "90",
        "PD_AUTOSCALER_LEADER_ENDPOINTSLICE": "pd-autoscaler-leader",
        "POD_NAME": "pd-autoscaler-abc",
        "POD_NAMESPACE": "pd-autoscaler",
        "POD_IP": "10.1.2.3",
    }
    s = settings_from(None, env)
    assert (s.external_metrics_port, s.keda_grpc_port) == (6443, 9090)
    assert s.external_metrics_cert == (cert_dir / "tls.crt", cert_dir / "tls.key")
    assert s.keda_grpc_cert == (cert_dir / "tls.crt", cert_dir / "tls.key")
    assert s.keda_grpc_client_ca_file == ca
    assert s.keda_metrics_api
    assert s.serve_max_age_s == 90.0
    assert s.leader_endpointslice == "pd-autoscaler-leader"
    assert (s.pod_name, s.pod_namespace, s.pod_ip) == ("pd-autoscaler-abc", "pd-autoscaler",
                                                       "10.1.2.3")
    # POD_NAME also seeds the election identity when PD_AUTOSCALER_IDENTITY is unset.
    assert s.identity.startswith("pd-autoscaler-abc-")


def test_defaults_serve_nothing_extra() -> None:
    """Without the variables no adoption server runs and no EndpointSlice is written (base
    manifests)."""
    s = settings_from(None, {"PD_AUTOSCALER_NAMESPACE": "x", "POD_NAME": "p"})
    assert s.external_metrics_port is None
    assert s.keda_grpc_port is None
    assert not s.keda_metrics_api
    assert s.leader_endpointslice is None
    c = factory.on_cluster(s, api=NO_API, source=FakeMetricsSource(),
                           telemetry=Telemetry())
    assert c.leader_endpoint is None


def test_run_flags_win_over_env(cert_dir: Path) -> None:
    """The `run` flags parse through the real CLI parser and override the environment."""
    args = cli.build_parser().parse_args([
        "run", "--namespace", "ns", "--external-metrics-port", "7443",
        "--external-metrics-cert-dir", str(cert_dir), "--keda-grpc-port", "9191",
        "--keda-metrics-api", "--leader-endpointslice", "lead",
    ])
    env = {"PD_AUTOSCALER_EXTERNAL_METRICS_PORT": "6443", "PD_AUTOSCALER_KEDA_GRPC_PORT": "9090",
           "POD_NAME": "me", "POD_IP": "fd00::7", "PD_AUTOSCALER_LEADER_ENDPOINTSLICE": "env"}
    s = settings_from(args, env)
    assert (s.external_metrics_port, s.keda_grpc_port) == (7443, 9191)
    assert s.external_metrics_cert_dir == cert_dir
    assert s.keda_metrics_api
    assert (s.leader_endpointslice, s.pod_ip) == ("lead", "fd00::7")
    # Absent flags leave the environment alone (store_true defaults to None, not False).
    bare = cli.build_parser().parse_args(["run"])
    s = settings_from(bare, {"PD_AUTOSCALER_NAMESPACE": "x",
                                        "PD_AUTOSCALER_KEDA_METRICS_API": "true"})
    assert s.keda_metrics_api


@pytest.mark.parametrize(("env", "fragment"), [
    pytest.param({"PD_AUTOSCALER_EXTERNAL_METRICS_PORT": "6443"},
                 "external_metrics_cert_dir: required", id="port-without-cert"),
    pytest.param({"PD_AUTOSCALER_EXTERNAL_METRICS_PORT": "https"},
                 "PD_AUTOSCALER_EXTERNAL_METRICS_PORT", id="port-not-a-number"),
    pytest.param({"PD_AUTOSCALER_KEDA_GRPC_PORT": "70000"},
                 "keda_grpc_port: must be 0-65535", id="port-range"),
    pytest.param({"PD_AUTOSCALER_EXTERNAL_METRICS_PORT": "6443",
                  "PD_AUTOSCALER_EXTERNAL_METRICS_CERT_DIR": "/nonexistent"},
                 "/nonexistent/tls.crt is not a readable file", id="cert-missing"),
    pytest.param({"PD_AUTOSCALER_KEDA_GRPC_PORT": "9090",
                  "PD_AUTOSCALER_KEDA_GRPC_CLIENT_CA_FILE": "/etc/hostname"},
                 "keda_grpc_client_ca_file: needs keda_grpc_cert_dir", id="mtls-without-tls"),
    pytest.param({"PD_AUTOSCALER_LEADER_ENDPOINTSLICE": "lead"}, "needs the Pod IP (set POD_IP",
                 id="endpointslice-without-pod-ip"),
    pytest.param({"PD_AUTOSCALER_LEADER_ENDPOINTSLICE": "lead", "POD_IP": "pod-a"},
                 "pod_ip: POD_IP is not an IP address (got 'pod-a')", id="pod-ip-not-an-ip"),
    pytest.param({"PD_AUTOSCALER_LEADER_LABEL": "true"},
                 "env PD_AUTOSCALER_LEADER_LABEL: removed: the leader-only route is an "
                 "EndpointSlice now", id="removed-leader-label"),
    pytest.param({"PD_AUTOSCALER_KEDA_METRICS_API": "sure"}, "expected true/false",
                 id="bad-bool"),
    pytest.param({"PD_AUTOSCALER_SERVE_MAX_AGE_S": "10"}, "serve_max_age_s: must be > tick_s",
                 id="stale-within-a-tick"),
])
def test_invalid_settings_name_the_setting(env: dict[str, str], fragment: str) -> None:
    """Each mistake is one ConfigError line naming the variable or field (exit code 2)."""
    with pytest.raises(errors.ConfigError) as exc:
        settings_from(None, {"PD_AUTOSCALER_NAMESPACE": "x", **env})
    assert fragment in str(exc.value)


# --- the manifests set exactly the variables the controller reads ---------------------------


@pytest.fixture(scope="module")
def kubectl() -> Path:
    return kubectl_mod.find()


def _controller_env(kubectl: Path, target: str) -> tuple[dict[str, str], list[dict[str, Any]]]:
    out = subprocess.run([str(kubectl), "kustomize", str(ROOT / "manifests" / target)],
                         check=True, capture_output=True, text=True).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    (dep,) = [d for d in docs if d["kind"] == "Deployment"
              and d["metadata"]["name"] == "pd-autoscaler"]
    env = {}
    for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]:
        # What the downward API would put there.
        ref = e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        env[e["name"]] = {"metadata.name": "pd-autoscaler-0",
                          "metadata.namespace": "pd-autoscaler",
                          "status.podIP": "10.244.1.5"}.get(ref, e.get("value", ""))
    return env, docs


@pytest.mark.parametrize("target", ["base", "overlays/shadow", "overlays/kind",
                                    "overlays/external-metrics", "keda"])
def test_manifest_env_is_understood(kubectl: Path, target: str, cert_dir: Path) -> None:
    """Every PD_AUTOSCALER_* variable a kustomization sets is a setting (a typo would be
    silently ignored otherwise), and the rendered environment parses and validates."""
    env, docs = _controller_env(kubectl, target)
    known = set(settings_mod.env_names().values())
    ours = {k for k in env if k.startswith(ENV_PREFIX)}
    assert ours <= known, ours - known
    assert {"POD_NAME", "POD_NAMESPACE", "POD_IP"} <= set(env)
    if "PD_AUTOSCALER_EXTERNAL_METRICS_CERT_DIR" in env:
        env["PD_AUTOSCALER_EXTERNAL_METRICS_CERT_DIR"] = str(cert_dir)  # the Secret's mount
    if "PD_AUTOSCALER_KEDA_GRPC_CERT_DIR" in env:  # the keda overlay's mTLS Secret
        env["PD_AUTOSCALER_KEDA_GRPC_CERT_DIR"] = str(cert_dir)
        env["PD_AUTOSCALER_KEDA_GRPC_CLIENT_CA_FILE"] = str(cert_dir / "tls.crt")
    s = settings_from(None, env)
    # The controller's Roles (the kind overlay's Prometheus has pod-discovery Roles of its own).
    ours_roles = {(b["metadata"]["namespace"], b["roleRef"]["name"]) for b in docs
                  if b["kind"] == "RoleBinding"
                  and any(sub.get("name") == "pd-autoscaler" for sub in b["subjects"])}
    rules = [r for d in docs if d["kind"] == "Role"
             and (d["metadata"]["namespace"], d["metadata"]["name"]) in ours_roles
             for r in d["rules"]]
    # No overlay lets the controller patch Pods (that grant could change any Pod's image).
    assert not [r for r in rules if "pods" in r["resources"]]
    slice_rules = [r for r in rules if "endpointslices" in r["resources"]]
    slices = [d for d in docs if d["kind"] == "EndpointSlice"]
    if target in ("overlays/external-metrics", "keda"):
        # The leader-only Service has no selector; its one EndpointSlice ships here and the
        # controller may touch that slice, by name, and nothing else.
        assert s.pod_ip == "10.244.1.5"
        (slc,) = slices
        assert (slc["metadata"]["name"], slc["metadata"]["namespace"]) == (
            s.leader_endpointslice, "pd-autoscaler")
        assert (slc["addressType"], slc["endpoints"]) == ("IPv4", [])
        assert slc["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] == \
            "pd-autoscaler.io"
        (svc,) = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"]
                  == slc["metadata"]["labels"]["kubernetes.io/service-name"]]
        assert "selector" not in svc["spec"]
        # kube-proxy pairs a Service port with the slice port of the same name; the slice's
        # number is where the container listens.
        (dep,) = [d for d in docs if d["kind"] == "Deployment"
                  and d["metadata"]["name"] == "pd-autoscaler"]
        container_ports = {p["name"]: p["containerPort"] for p in
                           dep["spec"]["template"]["spec"]["containers"][0]["ports"]}
        slice_ports = {p["name"]: p["port"] for p in slc["ports"]}
        assert {p["name"] for p in svc["spec"]["ports"]} == set(slice_ports)
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] == slice_ports[port["name"]]
            assert slice_ports[port["name"]] in container_ports.values()
        assert slice_rules == [{"apiGroups": ["discovery.k8s.io"],
                                "resources": ["endpointslices"],
                                "resourceNames": [s.leader_endpointslice],
                                "verbs": ["get", "patch", "update"]}]
    else:
        # Nothing routes to the leader alone without an adoption overlay.
        assert s.leader_endpointslice is None
        assert not slices
        assert not slice_rules
    if target == "overlays/external-metrics":
        assert s.external_metrics_port == 6443
    if target == "keda":
        assert s.keda_grpc_port == 9090
        assert s.keda_grpc_cert is not None  # mTLS by default
        assert s.keda_grpc_client_ca_file is not None
        assert s.keda_metrics_api  # the Service's port 8080 is for metrics-api


# --- start/stop wiring inside Controller.run ---------------------------------------------------


ME = "10.0.0.7"


POLICY = f"""
apiVersion: pd-autoscaler.io/v1alpha1
kind: AutoscalingPolicy
dry_run: true
pools:
  - name: {POOL}
    roles:
      aggregated:
        deployment: {{namespace: llm, name: d}}
        max_replicas: 8
        signals: [{{signal: queue_depth, target: 2}}]
        behavior: {{panic: {{enabled: false}}, stock_max_step: null}}
"""


@contextlib.asynccontextmanager
async def running(tmp_path: Path, pki: Pki, cert_dir: Path, monkeypatch: pytest.MonkeyPatch, *,
                  lease: FakeLease | None = None, **overrides: Any,
                  ) -> AsyncIterator[tuple[controller.Controller, FakeDiscovery]]:
    """A Controller with every server on a free port, fake API objects behind it."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)

    async def requestheader(api: Any) -> em.RequestHeaderConfig:
        del api
        return em.RequestHeaderConfig.from_file(pki.crt("front-proxy-ca"),
                                                allowed_names=("front-proxy-client",))

    # The ConfigMap read and SubjectAccessReviews need an API server (covered in e2e).
    monkeypatch.setattr(em, "load_requestheader_config", requestheader)
    monkeypatch.setattr(em_server, "SubjectAccessReviewAuthorizer",
                        lambda api: em.AllowAuthenticated())
    settings = Settings(
        namespace="pd-autoscaler", identity="a", policy_file=policy, tick_s=0.2,
        leader_election=lease is not None, http_host="127.0.0.1", http_port=0,
        external_metrics_port=0, external_metrics_cert_dir=cert_dir, keda_grpc_port=0,
        keda_metrics_api=True, leader_endpointslice="lead", pod_ip=ME, pod_name="pod-a",
        policy_poll_s=0.1, **overrides)
    source = FakeMetricsSource()
    source.ready[(POOL, ROLE)] = 2
    source.set_totals(POOL, ROLE, queue_depth=12)  # 12 waiting / target 2 -> 6 replicas
    core = FakeStateCore()
    discovery = FakeDiscovery([ep(ME)])  # left by a previous run of this Pod (a crash)
    c = controller.Controller(
        settings, api=NO_API, source=source, telemetry=Telemetry(),
        actuator=FakeActuator(), events=FakeEvents(),
        state_store=StateStore(core, namespace="pd-autoscaler", name="st", shards=4, timeout_s=1),
        leader_endpoint=LeaderEndpoint(discovery, name="lead",  # type: ignore[arg-type]
                                       namespace="pd-autoscaler", address=ME, timeout_s=1),
        lease=lease)
    task = asyncio.create_task(c.run())
    try:
        await _until(lambda: c.keda_scaler is not None and c.keda_scaler._server is not None
                     and c.http_port is not None, "servers up")
        yield c, discovery
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _until(cond: Callable[[], bool], what: str, timeout_s: float = 10) -> None:
    async with asyncio.timeout(timeout_s):
        while not cond():  # noqa: ASYNC110 - the state belongs to the code under test
            await asyncio.sleep(0.02)
    assert cond(), what


class Clients:
    """The three servers as KEDA and the aggregator call them."""

    def __init__(self, c: controller.Controller, pki: Pki) -> None:
        assert c.external_metrics is not None
        assert c.keda_scaler is not None
        self.ext_port = c.external_metrics.port
        self.grpc_port = c.keda_scaler.port
        self.http_port = c.http_port
        tls = ssl.create_default_context(cafile=str(pki.crt("serving-ca")))
        tls.load_cert_chain(*pki.pair("proxy"))  # the aggregator's front-proxy client cert
        self.tls = tls

    async def external(self) -> tuple[int, Any]:
        url = (f"https://127.0.0.1:{self.ext_port}/apis/external.metrics.k8s.io/v1beta1/"
               f"namespaces/llm/{points.DESIRED}?labelSelector=pool%3D{POOL}")
        headers = {"X-Remote-User": "system:serviceaccount:kube-system:hpa"}
        async with aiohttp.ClientSession() as http, \
                http.get(url, ssl=self.tls, headers=headers) as resp:
            return resp.status, await resp.json()

    async def metrics_api(self) -> tuple[int, Any]:
        url = f"http://127.0.0.1:{self.http_port}/keda/v1/{POOL}/{ROLE.value}"
        async with aiohttp.ClientSession() as http, http.get(url) as resp:
            return resp.status, await resp.json()

    async def grpc_metric(self) -> float | grpc.StatusCode:
        ref = pb.ScaledObjectRef(name="so", namespace="llm",
                                 scalerMetadata={"pool": POOL, "role": ROLE.value})
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.grpc_port}") as channel:
            make_stub: Any = pb_grpc.ExternalScalerStub  # generated, untyped
            stub = make_stub(channel)
            try:
                resp = await stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref,
                                                                  metricName="m"))
            except grpc.aio.AioRpcError as exc:
                return exc.code()
        return float(resp.metricValues[0].metricValueFloat)


async def test_leader_serves_all_three_and_stops_cleanly(
        tmp_path: Path, pki: Pki, cert_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A leading controller (no election) serves its decision on the external-metrics API,
    the gRPC scaler and metrics-api; the leader EndpointSlice holds its address. On shutdown
    the address goes and every port closes."""
    async with running(tmp_path, pki, cert_dir, monkeypatch) as (c, core):
        http = Clients(c, pki)
        await _until(lambda: c.ticks > 0, "first tick")
        status, body = await http.external()
        assert status == 200
        assert [(i["metricLabels"]["role"], i["value"]) for i in body["items"]] == [
            ("aggregated", "6")]
        assert await http.grpc_metric() == 6.0
        status, body = await http.metrics_api()
        assert (status, body["desiredReplicas"], body["currentReplicas"]) == (200, 6, 2)
        await _until(lambda: core.addresses() == [ME], "the slice points here")
        ports = (http.ext_port, http.grpc_port, http.http_port)
    assert core.addresses() == []  # removed on the way out
    assert c.external_metrics is None
    assert c.keda_scaler is None
    for port in ports:
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)


async def test_standby_answers_no_data_and_clears_on_losing_the_lead(
        tmp_path: Path, pki: Pki, cert_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A standby's servers answer cleanly with "no data": an empty ExternalMetricValueList
    (the HPA holds), gRPC UNAVAILABLE (KEDA holds or falls back), HTTP 503. A leader that loses
    the lease drops its numbers at once (not after the staleness limit) and its address."""
    lease = FakeLease()  # standby until granted, leader until revoked

    async with running(tmp_path, pki, cert_dir, monkeypatch, lease=lease) as (c, core):
        http = Clients(c, pki)
        await _until(lambda: core.writes == [[]], "stale address removed at start")

        async def no_data() -> None:
            status, body = await http.external()
            assert (status, body["kind"], body["items"]) == (200, "ExternalMetricValueList", [])
            assert await http.grpc_metric() == grpc.StatusCode.UNAVAILABLE
            status, body = await http.metrics_api()
            assert status == 503
            assert "no recent decision" in body["error"]

        await no_data()
        lease.grant()
        await _until(lambda: c.ticks > 0, "leading and ticking")
        assert (await http.external())[1]["items"][0]["value"] == "6"
        await _until(lambda: core.addresses() == [ME], "the slice points here")
        lease.revoke()
        await _until(lambda: not c.health.leader, "standby again")
        assert c.store.latest is None
        await no_data()
        await _until(lambda: core.addresses() == [], "address removed")
        assert core.writes == [[], [ME], []]


async def test_killed_servers_come_back_on_their_ports(
        tmp_path: Path, pki: Pki, cert_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each adoption server's serving loop is ended behind the controller's back (the TLS
    listener closed; the gRPC server terminated): the watcher sees it within a probe, /readyz
    turns 503 naming the server and why, the server is restarted on the same port and answers
    the HPA's and KEDA's requests again, and /readyz recovers."""
    async with running(tmp_path, pki, cert_dir, monkeypatch, serve_probe_s=0.1) as (c, _):
        await _until(lambda: c.ticks > 0, "first tick")
        http = Clients(c, pki)
        assert c.external_metrics is not None
        assert c.keda_scaler is not None

        async def readyz() -> tuple[int, str]:
            url = f"http://127.0.0.1:{http.http_port}/readyz"
            async with aiohttp.ClientSession() as session, session.get(url) as resp:
                return resp.status, await resp.text()

        assert (await readyz())[0] == 200
        for name, kill in (
            ("external-metrics", _kill_external), ("keda-scaler", _kill_keda),
        ):
            before = (c.external_metrics, c.keda_scaler)
            await kill(c)
            await _until(lambda n=name: n in c.health.failing, f"{name} reported")  # type: ignore[misc]
            status, text = await readyz()
            assert status == 503
            assert f"{name} failing:" in text
            await _until(lambda b=before: (c.external_metrics, c.keda_scaler) != b
                         and c.external_metrics is not None and c.keda_scaler is not None
                         and c.external_metrics.serving() and c.keda_scaler.serving(),
                         f"{name} restarted")
            # Back where the clients dial, serving the leader's numbers.
            assert (c.external_metrics.port, c.keda_scaler.port) == (http.ext_port,
                                                                     http.grpc_port)
            status, body = await http.external()
            assert (status, body["items"][0]["value"]) == (200, "6")
            assert await http.grpc_metric() == 6.0
            await _until(lambda n=name: n not in c.health.failing, f"{name} recovered")  # type: ignore[misc]
            assert (await readyz())[0] == 200
        assert [u.restarts for u in c.servers.served] == [1, 1]


async def _kill_external(c: controller.Controller) -> None:
    server = c.external_metrics
    assert server is not None
    assert server.site is not None
    listener = server.site._server
    assert listener is not None
    listener.close()  # the accept loop is gone; nothing of ours was told


async def _kill_keda(c: controller.Controller) -> None:
    scaler = c.keda_scaler
    assert scaler is not None
    await scaler._server.stop(None)  # grpc terminated under us


async def test_requestheader_errors_are_config_errors(
        tmp_path: Path, cert_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing RBAC binding is a one-line ConfigError naming the fix (exit 2); a transient
    API error is retried."""
    calls: list[int] = []

    async def failing(api: Any) -> em.RequestHeaderConfig:
        calls.append(1)
        if len(calls) == 1:
            raise ApiException(status=503, reason="Service Unavailable")
        raise ApiException(status=403, reason="Forbidden")

    monkeypatch.setattr(em, "load_requestheader_config", failing)
    monkeypatch.setattr(backoff, "sleep", _no_sleep)
    settings = Settings(namespace="pd-autoscaler", identity="a",
                                   external_metrics_port=0, external_metrics_cert_dir=cert_dir)
    servers = AdoptionServers(settings, store=DecisionStore(), api=NO_API)
    with pytest.raises(errors.ConfigError) as exc:
        await servers.start()
    assert len(calls) == 2
    assert "extension-apiserver-authentication-reader" in str(exc.value)
    assert "HTTP 403" in str(exc.value)


async def _no_sleep(delay: float, *, wake: asyncio.Event | None = None) -> None:
    """The controller's one sleep seam, made instant (the retries still yield)."""
    del delay, wake
    await asyncio.sleep(0)


async def test_port_in_use_is_a_config_error(
        cert_dir: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    """A taken port names the setting instead of a bind traceback; nothing is left running."""
    async def requestheader(api: Any) -> em.RequestHeaderConfig:
        del api
        return em.RequestHeaderConfig.from_file(pki.crt("front-proxy-ca"))

    monkeypatch.setattr(em, "load_requestheader_config", requestheader)
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = blocker.sockets[0].getsockname()[1]
    try:
        settings = Settings(namespace="x", identity="a", http_host="127.0.0.1",
                                       keda_grpc_port=port)
        servers = AdoptionServers(settings, store=DecisionStore(), api=NO_API)
        with pytest.raises(errors.ConfigError, match=f"keda_grpc_port: cannot serve on "
                                                     f"127.0.0.1:{port}"):
            await servers.start()
        await servers.stop()
        assert servers.keda_scaler is None
    finally:
        blocker.close()
        await blocker.wait_closed()
