"""pd-autoscaler's KEDA External Scaler driving a real KEDA operator and the real HPA.

KEDA v2.20.2's operator and metrics adapter (built from the Go module proxy by
tests/k8senv/build_keda.sh, on first use) run as local processes against the test cluster: the
operator serves its gRPC metrics service with mTLS, the adapter is registered as
`v1beta1.external.metrics.k8s.io` (ExternalName -> localhost, as in extapi.py). A `Loop` (fake
metric source, dry run) feeds a `DecisionStore` served by `KedaScalerServer` on 127.0.0.1 with
mTLS required, as the KEDA overlay ships it. The shipped example ScaledObject
(manifests/keda/scaledobject-external.yaml), pointed at that port and authenticated by the
shipped example TriggerAuthentication with a client certificate, makes KEDA create an HPA; kube-controller-manager's HPA then reads our number through the
aggregator, the adapter, the operator and our gRPC scaler, and sets the Deployment to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_asyncio import client
from kubernetes_asyncio.client.api_client import ApiClient
from kubernetes_asyncio.client.rest import ApiException

from autoscaler.server.keda import KedaScalerServer, KedaScalerSettings

from ..k8senv import cluster as k8senv
from .extapi import EXTERNAL_METRICS, MANAGED_BY, registered_apiservice
from .support import manifest, wait_for
from .test_external_metrics_e2e import POOL, ROLE, served_pool, ticking

pytestmark = [pytest.mark.external_metrics, pytest.mark.k8s]

KEDA_VERSION = "v2.20.2"
BUILD_SCRIPT = Path(__file__).resolve().parents[1] / "k8senv" / "build_keda.sh"
KEDA_MANIFESTS = Path(__file__).resolve().parents[2] / "manifests" / "keda"
EXAMPLE = KEDA_MANIFESTS / "scaledobject-external.yaml"
TRIGGER_AUTH = KEDA_MANIFESTS / "triggerauthentication-example.yaml"
SO = ("keda.sh", "v1alpha1", "scaledobjects")


def _report(request: pytest.FixtureRequest, line: str) -> None:
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"[keda] {line}")


@pytest.fixture(scope="module")
def keda_bin(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """build_keda.sh's bin dir (building KEDA on first use: ~10 min cold on 2 cores)."""
    log = tmp_path_factory.mktemp("keda-build") / "build.log"
    _report(request, f"ensuring KEDA {KEDA_VERSION} binaries (cold build ~10 min; log {log})")
    with log.open("a") as err:
        result = subprocess.run(["bash", str(BUILD_SCRIPT)], check=False, stdout=subprocess.PIPE,
                                stderr=err, text=True, env={**os.environ,
                                                            "KEDA_VERSION": KEDA_VERSION})
    if result.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        pytest.fail(f"build_keda.sh failed (exit {result.returncode}); log {log}\n{tail}")
    bin_dir = Path(result.stdout.strip().splitlines()[-1])
    for name in ("keda-operator", "keda-adapter"):
        assert (bin_dir / name).is_file(), f"{bin_dir / name} missing"
    assert list((bin_dir.parent / "crds").glob("keda.sh_scaledobjects.yaml"))
    return bin_dir


class Processes:
    """Local processes, each in its own process group (killed as a group on exit)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        with (self.log_dir / f"{name}.log").open("ab") as out:
            self.procs[name] = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **env}, cwd=self.log_dir, start_new_session=True,
                preexec_fn=k8senv._die_with_parent)  # noqa: PLW1509

    def check(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited ({proc.returncode}):\n{self.tail(name)}")

    def tail(self, name: str, lines: int = 30) -> str:
        path = self.log_dir / f"{name}.log"
        # KEDA logs JSON with stack traces on one line; the start of each line is enough here.
        text = path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(line[:400] for line in text)

    def stop(self, grace_s: float = 5.0) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.0, deadline - time.monotonic()))
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)


@contextlib.contextmanager
def processes(log_dir: Path) -> Iterator[Processes]:
    procs = Processes(log_dir)
    try:
        yield procs
    finally:
        procs.stop()


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError):
        return False


async def _install_crds(cluster: k8senv.ClusterInfo, crd_dir: Path, api: ApiClient) -> None:
    assert cluster.kubectl is not None
    # Server-side: the ScaledObject CRD is too large for kubectl's last-applied annotation.
    proc = await asyncio.create_subprocess_exec(
        str(cluster.kubectl), f"--kubeconfig={cluster.kubeconfig}", "apply", "--server-side",
        "--force-conflicts", "-f", str(crd_dir),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    ext = client.ApiextensionsV1Api(api)

    async def established() -> bool:
        crd = await ext.read_custom_resource_definition("scaledobjects.keda.sh")
        return any(c.type == "Established" and c.status == "True"
                   for c in (crd.status.conditions or []))

    await wait_for(established, timeout_s=30, what="ScaledObject CRD Established")


async def _external_metric(cluster: k8senv.ClusterInfo, ns: str, metric: Any) -> list[str]:
    assert cluster.kubectl is not None
    labels = ",".join(f"{k}={v}" for k, v in (metric.selector.match_labels or {}).items())
    # Not subprocess.run: the scaler answering this request runs on this very event loop.
    proc = await asyncio.create_subprocess_exec(
        str(cluster.kubectl), f"--kubeconfig={cluster.kubeconfig}", "get", "--raw",
        f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/{metric.name}"
        f"?labelSelector={urllib.parse.quote(labels)}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    body = json.loads(out)
    assert body["kind"] == "ExternalMetricValueList", body
    return [item["value"] for item in body["items"]]


def scaled_object(ns: str, scaler_port: int) -> dict[str, Any]:
    """The shipped example, pointed at this test's Deployment and scaler."""
    obj: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    obj["metadata"] = {"name": POOL, "namespace": ns}
    spec = obj["spec"]
    spec["scaleTargetRef"] = {"name": POOL}
    spec["maxReplicaCount"] = 6
    spec["pollingInterval"] = 2
    trigger = spec["triggers"][0]
    assert trigger["type"] == "external"
    # Kept as shipped: the scaler requires mTLS and KEDA authenticates with the example
    # TriggerAuthentication (client_auth below), as the KEDA overlay does by default.
    assert trigger["authenticationRef"] == {"name": CLIENT_AUTH}
    trigger["metadata"].update(scalerAddress=f"127.0.0.1:{scaler_port}", pool=POOL,
                               role=ROLE.value)
    return obj


CLIENT_AUTH = "pd-autoscaler-keda-client"


def client_auth(ns: str) -> dict[str, Any]:
    """The shipped example TriggerAuthentication (KEDA's side of the mTLS), in this namespace."""
    obj: dict[str, Any] = yaml.safe_load(TRIGGER_AUTH.read_text())
    assert obj["metadata"]["name"] == CLIENT_AUTH
    obj["metadata"]["namespace"] = ns
    refs = {r["parameter"]: (r["name"], r["key"]) for r in obj["spec"]["secretTargetRef"]}
    assert refs == {"caCert": (CLIENT_AUTH, "ca.crt"), "tlsClientCert": (CLIENT_AUTH, "tls.crt"),
                    "tlsClientKey": (CLIENT_AUTH, "tls.key")}, refs
    return obj


def client_secret(ns: str, pki_dir: Path) -> client.V1Secret:
    """What certificate-example.yaml's cert-manager Certificate would write for KEDA: a client
    certificate and key, and the CA that signed the scaler's server certificate."""
    return client.V1Secret(
        metadata=client.V1ObjectMeta(name=CLIENT_AUTH, namespace=ns),
        string_data={name: (pki_dir / name).read_text()
                     for name in ("ca.crt", "tls.crt", "tls.key")})


@contextlib.asynccontextmanager
async def deleted_at_exit(api: ApiClient, ns: str, name: str) -> AsyncIterator[None]:
    """Delete the ScaledObject while the operator still runs (it holds a finalizer), wait until
    it is gone; if the operator cannot finish, drop the finalizer so the namespace can go."""
    objs = client.CustomObjectsApi(api)
    try:
        yield
    finally:
        with contextlib.suppress(ApiException):
            await objs.delete_namespaced_custom_object(*SO[:2], ns, SO[2], name)

        async def gone() -> bool:
            try:
                await objs.get_namespaced_custom_object(*SO[:2], ns, SO[2], name)
            except ApiException as exc:
                if exc.status == 404:
                    return True
                raise
            return False

        try:
            await wait_for(gone, timeout_s=30, what=f"ScaledObject {name} deleted")
        except TimeoutError:
            with contextlib.suppress(ApiException):
                await objs.patch_namespaced_custom_object(
                    *SO[:2], ns, SO[2], name, manifest({"metadata": {"finalizers": None}}))
            raise


@pytest.mark.timeout(2400)  # the first run on a machine builds KEDA (keda_bin) within it
async def test_real_keda_operator_follows_pd_autoscaler(
    keda_bin: Path, k8s_cluster: k8senv.ClusterInfo, k8s_api: ApiClient, k8s_namespace: str,
    tmp_path: Path,
) -> None:
    """Queue 40 (target 10) -> pd-autoscaler wants 4 -> KEDA's HPA sets 4; queue 0 -> 1."""
    ns = k8s_namespace
    cluster = k8s_cluster
    apps = client.AppsV1Api(k8s_api)
    group, version = EXTERNAL_METRICS
    # On a user's cluster (KUBECONFIG mode) with its own metrics adapter or KEDA, touch nothing:
    # not its APIService (registered_apiservice refuses too) and not its KEDA CRDs.
    with contextlib.suppress(ApiException):
        existing = await client.ApiregistrationV1Api(k8s_api).read_api_service(
            f"{version}.{group}")
        key = "app.kubernetes.io/managed-by"
        if (existing.metadata.labels or {}).get(key) != MANAGED_BY[key]:
            pytest.fail(f"APIService {version}.{group} exists and was not created by these tests")
    await _install_crds(cluster, keda_bin.parent / "crds", k8s_api)
    source, store, loop = await served_pool(k8s_api, ns)

    # The operator's gRPC metrics service and the adapter (its client) authenticate each other.
    certs = k8senv.make_mtls_pki(tmp_path / "keda-certs")
    # Our scaler's own PKI (a CA of its own, not KEDA's): one leaf for 127.0.0.1 serves as the
    # scaler's server certificate and as KEDA's client certificate, both signed by that CA.
    scaler_pki = k8senv.make_mtls_pki(tmp_path / "scaler-certs")
    await client.CoreV1Api(k8s_api).create_namespaced_secret(ns, client_secret(ns, scaler_pki))

    async def created_client_auth() -> bool:
        # The CRD was applied with the ScaledObject's, which is Established; this one may
        # still be a moment behind (404 until the API server serves it).
        try:
            await client.CustomObjectsApi(k8s_api).create_namespaced_custom_object(
                "keda.sh", "v1alpha1", ns, "triggerauthentications", manifest(client_auth(ns)))
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    await wait_for(created_client_auth, timeout_s=30, what="TriggerAuthentication created")
    no_cas = tmp_path / "keda-ca-dir"
    no_cas.mkdir()
    grpc_port = k8senv.free_port()
    probe_port = k8senv.free_port()
    adapter_port = k8senv.free_port()
    env = {"KUBECONFIG": str(cluster.kubeconfig), "WATCH_NAMESPACE": "",
           "KEDA_CLUSTER_OBJECT_NAMESPACE": "keda", "POD_NAMESPACE": "keda"}
    kube = f"{cluster.kubeconfig}"
    budget_s = 20 * cluster.hpa_sync_period_s + 30
    log_dir = tmp_path / "logs"
    log_dir.mkdir()

    def desired() -> int | None:
        snap = store.snapshot()
        if snap is None or POOL not in snap.decision.pools:
            return None
        return snap.decision.pools[POOL].roles[ROLE].desired

    async def replicas() -> int:
        return int((await apps.read_namespaced_deployment(POOL, ns)).spec.replicas)

    with processes(log_dir) as procs:
        procs.spawn("keda-operator", [
            str(keda_bin / "keda-operator"), "--zap-log-level=info", "--leader-elect=false",
            # --ca-dir: CAs for scalers' TLS (none here); it reads every file there as a CA.
            f"--cert-dir={certs}", f"--ca-dir={no_cas}", "--metrics-bind-address=0",
            f"--health-probe-bind-address=127.0.0.1:{probe_port}",
            f"--metrics-service-bind-address=127.0.0.1:{grpc_port}",
        ], env)
        procs.spawn("keda-adapter", [
            str(keda_bin / "keda-adapter"), f"--secure-port={adapter_port}",
            f"--bind-address={cluster.ext_bind_host}", f"--tls-cert-file={cluster.ext_cert}",
            f"--tls-private-key-file={cluster.ext_key}", f"--cert-dir={certs}",
            f"--metrics-service-address=127.0.0.1:{grpc_port}",
            f"--port={k8senv.free_port()}", f"--authentication-kubeconfig={kube}",
            f"--authorization-kubeconfig={kube}", f"--lister-kubeconfig={kube}",
        ], env)

        async def operator_ready() -> bool:
            procs.check()
            return await asyncio.to_thread(_healthy, probe_port)

        try:
            await wait_for(operator_ready, timeout_s=60, interval_s=0.5,
                           what="KEDA operator ready")
            async with (
                KedaScalerServer(store, KedaScalerSettings(
                    host="127.0.0.1", port=0, max_age_s=30,
                    cert_file=scaler_pki / "tls.crt", key_file=scaler_pki / "tls.key",
                    client_ca_file=scaler_pki / "ca.crt")) as scaler,
                ticking(loop),
                registered_apiservice(k8s_api, cluster, group=group, version=version,
                                      port=adapter_port),
                deleted_at_exit(k8s_api, ns, POOL),
            ):
                source.set_totals(POOL, ROLE, queue_depth=40)
                await wait_for(lambda: asyncio.sleep(0, desired()), until=lambda d: d == 4,
                               timeout_s=30, what="pd-autoscaler decides 4")
                await client.CustomObjectsApi(k8s_api).create_namespaced_custom_object(
                    *SO[:2], ns, SO[2], manifest(scaled_object(ns, scaler.port)))
                hpas = client.AutoscalingV2Api(k8s_api)

                async def keda_hpa() -> Any:
                    procs.check()
                    with contextlib.suppress(ApiException):
                        return await hpas.read_namespaced_horizontal_pod_autoscaler(
                            f"keda-hpa-{POOL}", ns)
                    return None

                hpa = await wait_for(keda_hpa, timeout_s=60, what="KEDA creates its HPA")
                [metric] = hpa.spec.metrics
                assert metric.type == "External"
                # KEDA prefixes s<trigger index>- to the name our GetMetricSpec gives.
                assert metric.external.metric.name == f"s0-pd-desired-replicas-{POOL}-{ROLE.value}"
                assert metric.external.target.average_value == "1"

                await wait_for(replicas, until=lambda r: r == 4, timeout_s=budget_s,
                               what="KEDA's HPA scales to pd-autoscaler's 4")
                assert desired() == 4

                async def hpa_desired() -> int | None:
                    got = await hpas.read_namespaced_horizontal_pod_autoscaler(
                        f"keda-hpa-{POOL}", ns)
                    return got.status.desired_replicas if got.status else None

                # The Deployment can reach 4 before the HPA controller writes its status (KEDA
                # activates from 0 itself; the HPA's status follows on its next sync).
                await wait_for(hpa_desired, until=lambda d: d == 4, timeout_s=60,
                               what="the HPA's status says 4")
                # The HPA's metric, read as the HPA reads it: apiserver -> aggregator -> KEDA's
                # adapter -> operator (mTLS gRPC) -> pd-autoscaler's scaler (mTLS gRPC).
                assert await _external_metric(cluster, ns, metric.external.metric) == ["4"]

                source.set_totals(POOL, ROLE, queue_depth=0)
                await wait_for(lambda: asyncio.sleep(0, desired()), until=lambda d: d == 1,
                               timeout_s=60, what="pd-autoscaler decides 1")
                await wait_for(replicas, until=lambda r: r == 1, timeout_s=budget_s,
                               what="KEDA's HPA scales down to 1")
                so = await client.CustomObjectsApi(k8s_api).get_namespaced_custom_object(
                    *SO[:2], ns, SO[2], POOL)
                conds = {c["type"]: c["status"] for c in so["status"]["conditions"]}
                assert conds.get("Ready") == "True", conds
        except BaseException:
            for name in procs.procs:
                print(f"--- {name} (last lines) ---\n{procs.tail(name)}")
            raise
