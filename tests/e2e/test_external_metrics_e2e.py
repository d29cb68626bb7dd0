"""pd-autoscaler's external-metrics API behind the real aggregator, read by the real HPA.

A `Loop` (fake metric source, real Deployment status, dry-run: the HPA is the actuator) feeds a
`DecisionStore`; `ExternalMetricsServer` serves it with the cluster's extension cert,
authenticating the aggregator by its front-proxy client cert (CA and allowed names read from
kube-system/extension-apiserver-authentication) and authorizing the forwarded user with
SubjectAccessReview. An HPA with `pd_desired_replicas`, AverageValue 1 and no damping must then
set the Deployment to exactly our number, up and down.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.api_client import ApiClient

from autoscaler.actuator.kubernetes import KubernetesActuator
from autoscaler.loop import Loop
from autoscaler.server import external_metrics as em
from autoscaler.server import points
from autoscaler.server.store import DecisionStore
from autoscaler.spec import PolicyFile
from autoscaler.testing import FakeMetricsSource
from autoscaler.types import Role

from ..k8senv.cluster import ClusterInfo
from .extapi import EXTERNAL_METRICS, registered_apiservice
from .support import gpu_deployment, manifest, wait_for

pytestmark = [pytest.mark.external_metrics, pytest.mark.k8s]

POOL = "llama"
OVERLAY = Path(__file__).resolve().parents[2] / "manifests" / "overlays" / "external-metrics"
ROLE = Role.AGGREGATED


def policy_for(ns: str) -> PolicyFile:
    # dry_run: pd-autoscaler decides, the HPA writes replicas. Panic off and no down window so
    # the decision follows the queue within a tick and the test stays short.
    return PolicyFile.model_validate(
        {
            "dry_run": True,
            "pools": [
                {
                    "name": POOL,
                    "roles": {
                        "aggregated": {
                            "deployment": {"namespace": ns, "name": POOL},
                            "min_replicas": 1,
                            "max_replicas": 6,
                            "signals": [{"signal": "queue_depth", "target": 10}],
                            # The HPA follows the number at once (the queue is the test's knob,
                            # so it may ask for the whole need in one step).
                            "behavior": {
                                "scale_up": {"stabilization_window_s": 0, "rules": []},
                                "scale_down": {"stabilization_window_s": 0, "rules": []},
                                "panic": {"enabled": False},
                                "stock_max_step": None,
                            },
                        }
                    },
                }
            ],
        }
    )


async def served_pool(api: ApiClient, ns: str) -> tuple[FakeMetricsSource, DecisionStore, Loop]:
    """The pool's one-replica Deployment, and a Loop deciding for it from totals the test sets
    (its ready count read from the Deployment), publishing into the store the servers serve."""
    apps = client.AppsV1Api(api)
    await apps.create_namespaced_deployment(ns, gpu_deployment(POOL, replicas=1))

    async def ready(pool: str, role: Role) -> int:
        del pool, role
        dep = await apps.read_namespaced_deployment(POOL, ns)
        return int(dep.status.ready_replicas or 0)

    source = FakeMetricsSource(ready=ready)
    store = DecisionStore()
    return source, store, Loop(policy_for(ns), source, KubernetesActuator(api), hooks=[store])


def hpa_manifest() -> dict[str, Any]:
    """The overlay's example HPA (manifests/overlays/external-metrics/hpa-example.yaml)."""
    return {
        "metadata": {"name": POOL},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": POOL},
            "minReplicas": 1,
            "maxReplicas": 6,
            "metrics": [
                {
                    "type": "External",
                    "external": {
                        "metric": {
                            "name": points.DESIRED,
                            "selector": {"matchLabels": {"pool": POOL, "role": ROLE.value}},
                        },
                        "target": {"type": "AverageValue", "averageValue": "1"},
                    },
                }
            ],
            "behavior": {
                "scaleUp": {
                    "stabilizationWindowSeconds": 0,
                    "selectPolicy": "Max",
                    "policies": [
                        {"type": "Percent", "value": 1000, "periodSeconds": 1},
                        {"type": "Pods", "value": 1000, "periodSeconds": 1},
                    ],
                },
                "scaleDown": {
                    "stabilizationWindowSeconds": 0,
                    "selectPolicy": "Max",
                    "policies": [{"type": "Percent", "value": 100, "periodSeconds": 1}],
                },
            },
        },
    }


@contextlib.asynccontextmanager
async def ticking(loop: Loop, period_s: float = 1.0) -> AsyncIterator[None]:
    async def run() -> None:
        while True:
            await loop.tick(time.monotonic())
            await asyncio.sleep(period_s)

    task = asyncio.create_task(run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _raw_get(port: int, host: str, ctx: ssl.SSLContext) -> int:
    url = f"https://{host}:{port}/apis/external.metrics.k8s.io/v1beta1/namespaces/x/{points.DESIRED}"
    req = urllib.request.Request(
        url,
        headers={
            "X-Remote-User": "system:admin",
            "X-Remote-Group": "system:masters",
        },
    )
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:  # noqa: S310
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


async def test_hpa_follows_pd_autoscaler_through_the_aggregator(
    k8s_cluster: ClusterInfo, k8s_api: ApiClient, k8s_namespace: str
) -> None:
    """Queue 40 (target 10) -> pd-autoscaler wants 4 -> the HPA sets 4; queue 0 -> 1 -> the HPA
    follows. kubectl reads the metric through the apiserver; a direct request without the
    front-proxy certificate is refused."""
    ns = k8s_namespace
    apps = client.AppsV1Api(k8s_api)
    source, store, loop = await served_pool(k8s_api, ns)
    settings = em.ExternalMetricsSettings(
        cert_file=k8s_cluster.ext_cert,
        key_file=k8s_cluster.ext_key,
        host=k8s_cluster.ext_bind_host,
        port=0,
        requestheader_ca_file=None,  # from the ConfigMap, as in a cluster
        authorize_with_sar=True,
        options=em.ExternalMetricsOptions(max_age_s=30),
    )
    budget_s = 20 * k8s_cluster.hpa_sync_period_s + 30
    group, version = EXTERNAL_METRICS

    def desired() -> int | None:
        snap = store.snapshot()
        if snap is None or POOL not in snap.decision.pools:
            return None
        return snap.decision.pools[POOL].roles[ROLE].desired

    async def deployment() -> Any:
        return await apps.read_namespaced_deployment(POOL, ns)

    async with (
        em.ExternalMetricsServer(store, settings, api=k8s_api) as server,
        ticking(loop),
        registered_apiservice(k8s_api, k8s_cluster, group=group, version=version, port=server.port),
    ):
        source.set_totals(POOL, ROLE, queue_depth=40)
        await wait_for(
            lambda: asyncio.sleep(0, desired()),
            until=lambda d: d == 4,
            timeout_s=30,
            what="pd-autoscaler decides 4",
        )
        await client.AutoscalingV2Api(k8s_api).create_namespaced_horizontal_pod_autoscaler(
            ns, manifest(hpa_manifest())
        )
        up = await wait_for(
            deployment,
            until=lambda d: d.spec.replicas == 4,
            timeout_s=budget_s,
            what="HPA scales to pd-autoscaler's 4",
        )
        assert up.spec.replicas == desired() == 4

        # kubectl through the apiserver and the aggregator, as a user would debug it.
        assert k8s_cluster.kubectl is not None
        # Not subprocess.run: the server answering kubectl runs on this very event loop.
        proc = await asyncio.create_subprocess_exec(
            str(k8s_cluster.kubectl),
            f"--kubeconfig={k8s_cluster.kubeconfig}",
            "get",
            "--raw",
            f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/{points.DESIRED}"
            f"?labelSelector=pool%3D{POOL}",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        body = json.loads(out)
        assert body["kind"] == "ExternalMetricValueList"
        assert [(i["metricLabels"]["role"], i["value"]) for i in body["items"]] == [
            ("aggregated", "4")
        ]

        # The signal falls: pd-autoscaler wants 1, the HPA follows.
        source.set_totals(POOL, ROLE, queue_depth=0)
        await wait_for(
            lambda: asyncio.sleep(0, desired()),
            until=lambda d: d == 1,
            timeout_s=60,
            what="pd-autoscaler decides 1",
        )
        down = await wait_for(
            deployment,
            until=lambda d: d.spec.replicas == 1,
            timeout_s=budget_s,
            what="HPA scales down to 1",
        )
        assert down.spec.replicas == 1
        hpa = await client.AutoscalingV2Api(k8s_api).read_namespaced_horizontal_pod_autoscaler(
            POOL, ns
        )
        assert hpa.status.desired_replicas == 1

        # Straight to the server, bypassing the aggregator: no front-proxy certificate.
        host = k8s_cluster.ext_bind_host
        no_cert = ssl.create_default_context(cafile=str(k8s_cluster.ext_ca_cert))
        no_cert.check_hostname = False
        assert await asyncio.to_thread(_raw_get, server.port, host, no_cert) == 401
        if k8s_cluster.admin_cert is not None and k8s_cluster.admin_key is not None:
            # A valid cluster client cert, but not from the requestheader CA: TLS refuses it.
            admin = ssl.create_default_context(cafile=str(k8s_cluster.ext_ca_cert))
            admin.check_hostname = False
            admin.load_cert_chain(str(k8s_cluster.admin_cert), str(k8s_cluster.admin_key))
            try:
                code = await asyncio.to_thread(_raw_get, server.port, host, admin)
            except (ssl.SSLError, ConnectionError, urllib.error.URLError):
                code = 0  # refused in the handshake (another CA)
            # 403 if the cluster shares one CA for clients and the front proxy (CN not allowed).
            assert code in (0, 403)
        # Delete the HPA while the APIService still answers (K8S-TESTENV.md section 5).
        await client.AutoscalingV2Api(k8s_api).delete_namespaced_horizontal_pod_autoscaler(POOL, ns)


async def test_overlay_apiservice_and_hpa_example_validate(
    k8s_cluster: ClusterInfo, k8s_api: ApiClient, k8s_namespace: str
) -> None:
    """The real apiserver accepts the overlay's APIService and the example HPA (server-side
    dry run: nothing is registered, so the cluster's own provider slot is untouched)."""
    import yaml  # noqa: PLC0415

    api_svc = yaml.safe_load((OVERLAY / "apiservice.yaml").read_text())
    # As shipped (empty caBundle, for cert-manager's injector to fill) and filled in.
    await client.ApiregistrationV1Api(k8s_api).create_api_service(
        manifest(api_svc), dry_run="All"
    )
    api_svc["spec"]["caBundle"] = base64.b64encode(k8s_cluster.ext_ca_cert.read_bytes()).decode()
    await client.ApiregistrationV1Api(k8s_api).create_api_service(manifest(api_svc), dry_run="All")
    hpa = yaml.safe_load((OVERLAY / "hpa-example.yaml").read_text())
    hpa["metadata"]["namespace"] = k8s_namespace
    created = await client.AutoscalingV2Api(k8s_api).create_namespaced_horizontal_pod_autoscaler(
        k8s_namespace, manifest(hpa), dry_run="All"
    )
    assert created.spec.behavior.scale_down.stabilization_window_seconds == 0
