"""Smoke tests of the test cluster itself: what the autoscaler's e2e tests rely on.

Covered: scale subresource + kwok readiness on fake GPU nodes; GPU shortage leaves Pods
Unschedulable; a ServiceAccount token limited to deployments/scale patch is denied elsewhere;
the aggregation layer proxies to a local extension server; the real HPA controller scales on an
External metric served by that server.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.api_client import ApiClient
from kubernetes_asyncio.client.rest import ApiException

from ..k8senv.cluster import GPU_RESOURCE, ClusterInfo
from .extapi import EXTERNAL_METRICS, ExtensionApiServer, registered_apiservice
from .support import gpu_deployment, manifest, wait_for

pytestmark = pytest.mark.k8s


async def _deployment(api: ApiClient, ns: str, name: str) -> client.V1Deployment:
    return await client.AppsV1Api(api).read_namespaced_deployment(name, ns)


async def _pods(api: ApiClient, ns: str, app: str) -> list[client.V1Pod]:
    pods = await client.CoreV1Api(api).list_namespaced_pod(ns, label_selector=f"app={app}")
    return [p for p in pods.items if p.metadata.deletion_timestamp is None]


def _condition(pod: client.V1Pod, kind: str) -> client.V1PodCondition | None:
    return next((c for c in pod.status.conditions or [] if c.type == kind), None)


async def test_scale_subresource_gpu_pods_turn_ready(k8s_cluster: ClusterInfo,
                                                     k8s_api: ApiClient,
                                                     k8s_namespace: str) -> None:
    """Patching deployments/scale creates GPU Pods that kwok marks Ready after the delay."""
    apps = client.AppsV1Api(k8s_api)
    ns, name = k8s_namespace, "decode"
    await apps.create_namespaced_deployment(ns, gpu_deployment(name, replicas=1))
    await wait_for(lambda: _deployment(k8s_api, ns, name),
                   until=lambda d: (d.status.ready_replicas or 0) == 1,
                   timeout_s=60, what="1 ready replica")

    scale = await apps.patch_namespaced_deployment_scale(name, ns, {"spec": {"replicas": 3}})
    assert scale.spec.replicas == 3
    deployment = await wait_for(lambda: _deployment(k8s_api, ns, name),
                                until=lambda d: (d.status.ready_replicas or 0) == 3,
                                timeout_s=60, what="3 ready replicas")
    assert deployment.status.replicas == 3

    pods = await _pods(k8s_api, ns, name)
    assert len(pods) == 3
    assert {p.spec.node_name for p in pods} <= set(k8s_cluster.gpu_nodes)
    for pod in pods:
        assert pod.status.phase == "Running"
        assert pod.spec.containers[0].resources.limits[GPU_RESOURCE] == "1"
        scheduled, ready = _condition(pod, "PodScheduled"), _condition(pod, "Ready")
        assert scheduled is not None
        assert ready is not None
        assert ready.status == "True"
        # Condition times have 1 s resolution, hence the slack.
        waited = (_as_dt(ready.last_transition_time)
                  - _as_dt(scheduled.last_transition_time)).total_seconds()
        assert waited >= k8s_cluster.pod_ready_delay_s - 1.0

    read_back = await apps.read_namespaced_deployment_scale(name, ns)
    assert read_back.status.replicas == 3


def _as_dt(value: datetime | str) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


async def test_pods_beyond_gpu_capacity_stay_pending(k8s_cluster: ClusterInfo,
                                                     k8s_api: ApiClient,
                                                     k8s_namespace: str) -> None:
    """With every fake GPU taken, extra Pods stay Pending with PodScheduled=False/Unschedulable."""
    capacity = len(k8s_cluster.gpu_nodes) * k8s_cluster.gpus_per_node
    assert capacity > 0, "the cluster has no GPU nodes"
    ns, name, extra = k8s_namespace, "prefill", 2
    await client.AppsV1Api(k8s_api).create_namespaced_deployment(
        ns, gpu_deployment(name, replicas=capacity + extra))

    def settled(pods: list[client.V1Pod]) -> bool:
        bound = [p for p in pods if p.spec.node_name]
        rejected = [p for p in pods if (c := _condition(p, "PodScheduled")) is not None
                    and c.status == "False"]
        return len(pods) == capacity + extra and len(bound) == capacity and \
            len(rejected) == extra

    pods = await wait_for(lambda: _pods(k8s_api, ns, name), until=settled, timeout_s=60,
                          what=f"{capacity} Pods bound and {extra} Unschedulable")
    for pod in pods:
        if pod.spec.node_name:
            continue
        cond = _condition(pod, "PodScheduled")
        assert cond is not None
        assert pod.status.phase == "Pending"
        assert cond.reason == "Unschedulable"
        assert f"Insufficient {GPU_RESOURCE}" in cond.message

    deployment = await wait_for(lambda: _deployment(k8s_api, ns, name),
                                until=lambda d: (d.status.ready_replicas or 0) == capacity,
                                timeout_s=60, what=f"{capacity} ready replicas")
    assert deployment.status.replicas == capacity + extra
    assert deployment.status.unavailable_replicas == extra


async def test_scale_only_service_account_is_denied_elsewhere(k8s_cluster: ClusterInfo,
                                                              k8s_api: ApiClient,
                                                              k8s_namespace: str) -> None:
    """A TokenRequest token whose Role allows only deployments/scale patch gets 403 otherwise."""
    ns, sa = k8s_namespace, "scaler"
    core, rbac = client.CoreV1Api(k8s_api), client.RbacAuthorizationV1Api(k8s_api)
    await client.AppsV1Api(k8s_api).create_namespaced_deployment(
        ns, gpu_deployment("decode", replicas=0))
    await core.create_namespaced_service_account(ns, manifest({"metadata": {"name": sa}}))
    await rbac.create_namespaced_role(ns, manifest({
        "metadata": {"name": "scale-only"},
        "rules": [{"apiGroups": ["apps"], "resources": ["deployments/scale"],
                   "verbs": ["patch"]}],
    }))
    await rbac.create_namespaced_role_binding(ns, manifest({
        "metadata": {"name": "scale-only"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                    "name": "scale-only"},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}],
    }))
    token = (await core.create_namespaced_service_account_token(
        sa, ns, manifest({"spec": {"expirationSeconds": 600}}))).status.token

    cfg = client.Configuration(host=k8s_cluster.api_url,
                               api_key={"BearerToken": token},
                               api_key_prefix={"BearerToken": "Bearer"})
    cfg.ssl_ca_cert = str(k8s_cluster.ca_cert)
    async with ApiClient(configuration=cfg) as as_sa:
        review = await client.AuthenticationV1Api(as_sa).create_self_subject_review(manifest({}))
        assert review.status.user_info.username == f"system:serviceaccount:{ns}:{sa}"

        apps = client.AppsV1Api(as_sa)
        scaled = await apps.patch_namespaced_deployment_scale("decode", ns,
                                                              {"spec": {"replicas": 2}})
        assert scaled.spec.replicas == 2

        denied: list[tuple[str, Any]] = [
            ("patch scale in another namespace",
             apps.patch_namespaced_deployment_scale("decode", "default",
                                                    {"spec": {"replicas": 1}})),
            ("get scale", apps.read_namespaced_deployment_scale("decode", ns)),
            ("replace scale", apps.replace_namespaced_deployment_scale(
                "decode", ns, manifest({"metadata": {"name": "decode", "namespace": ns},
                                        "spec": {"replicas": 3}}))),
            ("patch deployment", apps.patch_namespaced_deployment(
                "decode", ns, {"spec": {"replicas": 3}})),
            ("delete deployment", apps.delete_namespaced_deployment("decode", ns)),
            ("list pods", client.CoreV1Api(as_sa).list_namespaced_pod(ns)),
        ]
        for what, call in denied:
            with pytest.raises(ApiException) as info:
                await call
            assert info.value.status == 403, what

    assert (await client.AppsV1Api(k8s_api).read_namespaced_deployment_scale(
        "decode", ns)).spec.replicas == 2


async def test_aggregation_layer_reaches_local_extension_server(
        k8s_cluster: ClusterInfo, k8s_api: ApiClient, k8s_namespace: str) -> None:
    """An APIService backed by an ExternalName Service proxies to a TLS server in the test."""
    group, version = "smoke.e2e.pd-autoscaler.dev", "v1alpha1"
    async with ExtensionApiServer(k8s_cluster, group=group, version=version) as server, \
            registered_apiservice(k8s_api, k8s_cluster, group=group, version=version,
                                  port=server.port, service="smoke-ext"):
        me = await client.AuthenticationV1Api(k8s_api).create_self_subject_review(manifest({}))
        body = await client.CustomObjectsApi(k8s_api).list_namespaced_custom_object(
            group, version, k8s_namespace, "echoes")

    assert body["kind"] == "EchoList"
    [item] = body["items"]
    assert item["namespace"] == k8s_namespace
    assert item["peerCN"] == "front-proxy-client"
    # The server learnt the caller's identity from the aggregator's X-Remote-* headers.
    assert item["user"] == me.status.user_info.username
    assert set(me.status.user_info.groups) <= set(item["groups"])


async def test_hpa_scales_on_external_metric_from_extension_server(
        k8s_cluster: ClusterInfo, k8s_api: ApiClient, k8s_namespace: str) -> None:
    """The real HPA controller reads an External AverageValue metric and resizes a Deployment."""
    ns, name, metric = k8s_namespace, "decode", "queue_depth"
    apps = client.AppsV1Api(k8s_api)
    await apps.create_namespaced_deployment(ns, gpu_deployment(name, replicas=1))
    group, version = EXTERNAL_METRICS
    # Generous bound: HPA sync period, plus the pod-ready delay and scheduling, several times.
    budget_s = 20 * k8s_cluster.hpa_sync_period_s + 30

    async with ExtensionApiServer(k8s_cluster, group=group, version=version) as server, \
            registered_apiservice(k8s_api, k8s_cluster, group=group, version=version,
                                  port=server.port):
        server.external_metrics[metric] = 30  # 30 / averageValue 10 -> 3 replicas
        await client.AutoscalingV2Api(k8s_api).create_namespaced_horizontal_pod_autoscaler(ns, manifest({
            "metadata": {"name": name},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                "minReplicas": 1, "maxReplicas": 6,
                "metrics": [{"type": "External", "external": {
                    "metric": {"name": metric, "selector": {"matchLabels": {"queue": "q1"}}},
                    "target": {"type": "AverageValue", "averageValue": "10"}}}],
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 0}},
            },
        }))
        up = await wait_for(lambda: _deployment(k8s_api, ns, name),
                            until=lambda d: d.spec.replicas == 3 and
                            (d.status.ready_replicas or 0) == 3,
                            timeout_s=budget_s, what="HPA scale-up to 3 ready replicas")
        assert up.spec.replicas == 3

        server.external_metrics[metric] = 5  # 5 / 10 -> 1 replica
        await wait_for(lambda: _deployment(k8s_api, ns, name),
                       until=lambda d: d.spec.replicas == 1, timeout_s=budget_s,
                       what="HPA scale-down to 1 replica")
        hpa = await client.AutoscalingV2Api(k8s_api).read_namespaced_horizontal_pod_autoscaler(
            name, ns)

    assert hpa.status.desired_replicas == 1
    metric_reads = [s for s in server.seen if s.path.endswith(f"/namespaces/{ns}/{metric}")]
    assert metric_reads, "the HPA never asked the extension server"
    assert metric_reads[-1].query.get("labelSelector") == "queue=q1"
    # kcm runs with the admin identity (system:masters) in the local cluster; in any cluster
    # it is the aggregator that connects, proven by the front-proxy client cert.
    assert {s.peer_cn for s in metric_reads} == {"front-proxy-client"}
