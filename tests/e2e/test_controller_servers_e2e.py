"""The controller itself serving external.metrics.k8s.io to a real HPA, with the leader
EndpointSlice deciding which replica the aggregator reaches.

Two `Controller`s (not bare Loops) run in-process with the external-metrics server enabled
(cert dir, port, SubjectAccessReview, requestheader CA read from kube-system), each standing in
for a Pod (POD_NAME/POD_IP as the downward API gives them). The overlay's own selector-less
leader Service and its EndpointSlice (manifests/overlays/external-metrics/service.yaml) are
created as shipped; the leader writes its Pod IP into that slice. A small TCP proxy plays
kube-proxy: each connection from the aggregator goes to the ready address of that Service's
slices, mapped to the controller's local port. So the HPA reaches whichever controller the
slice names, exactly as in a cluster, and a failover moves it to the new leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import shutil
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_asyncio import client
from kubernetes_asyncio.client.api_client import ApiClient
from kubernetes_asyncio.client.rest import ApiException

from autoscaler.controller import app as ctl
from autoscaler.server import points
from autoscaler.testing import FakeMetricsSource
from autoscaler.types import Role

from ..k8senv.cluster import ClusterInfo
from .extapi import EXTERNAL_METRICS, registered_apiservice
from .support import gpu_deployment, manifest, wait_for
from .test_controller_e2e import put_policy, ready_from, ready_replicas, running
from .test_external_metrics_e2e import hpa_manifest

pytestmark = [pytest.mark.k8s, pytest.mark.external_metrics]

ROOT = Path(__file__).resolve().parents[2]
OVERLAY_SERVICE = ROOT / "manifests" / "overlays" / "external-metrics" / "service.yaml"
POOL = "llama"  # hpa_manifest's pool and Deployment
ROLE = Role.AGGREGATED


def policy(ns: str) -> str:
    # Shadow mode: the HPA actuates. No windows, no rate limits, no panic, no settling after
    # new replicas turn ready: the decision follows the queue within a tick, so the test
    # measures the wiring, not the damping.
    behavior = {"scale_up": {"stabilization_window_s": 0, "rules": []},
                "scale_down": {"stabilization_window_s": 0, "rules": []},
                "panic": {"enabled": False}, "stock_settle_s": 0, "stock_max_step": None}
    return yaml.safe_dump({
        "apiVersion": "pd-autoscaler.io/v1alpha1", "kind": "AutoscalingPolicy", "dry_run": True,
        "pools": [{"name": POOL, "roles": {"aggregated": {
            "deployment": {"namespace": ns, "name": POOL}, "min_replicas": 1, "max_replicas": 6,
            "signals": [{"signal": "queue_depth", "target": 10}], "behavior": behavior}}}],
    })


IPS = {"ctl-a": "10.244.9.11", "ctl-b": "10.244.9.12"}  # each replica's POD_IP


class LeaderServiceProxy:
    """kube-proxy for one Service, in miniature: every new connection is forwarded to a ready
    address of the Service's EndpointSlices; address -> local port of that controller.
    No ready endpoint: the connection is closed (the aggregator then fails the request and the
    HPA holds its replicas)."""

    def __init__(self, api: ApiClient, ns: str, service: str, host: str) -> None:
        # `host`: where the aggregator dials (ClusterInfo.ext_bind_host).
        self._discovery = client.DiscoveryV1Api(api)
        self.ns = ns
        self.service = service
        self.host = host
        self.ports: dict[str, int] = {}
        self.routed: list[str] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[Any]] = set()

    async def endpoints(self) -> list[str]:
        slices = await self._discovery.list_namespaced_endpoint_slice(
            self.ns, label_selector=f"kubernetes.io/service-name={self.service}")
        return sorted(a for s in slices.items for ep in (s.endpoints or [])
                      if ep.conditions is None or ep.conditions.ready is not False
                      for a in (ep.addresses or []))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._conns.add(task)
        try:
            addresses = [a for a in await self.endpoints() if a in self.ports]
            if not addresses:
                return
            self.routed.append(addresses[0])
            # The controllers listen on loopback (tests/e2e/test_controller_e2e.py `running`).
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.ports[addresses[0]])
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                up_writer.close()
        except (OSError, ApiException):
            pass  # a backend going away mid-connection: the aggregator retries
        finally:
            writer.close()
            if task is not None:
                self._conns.discard(task)

    async def __aenter__(self) -> LeaderServiceProxy:
        self._server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._conns):  # kept-alive aggregator connections
                task.cancel()
            await self._server.wait_closed()


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
        if dst.can_write_eof():
            dst.write_eof()


def direct_get(cluster: ClusterInfo, port: int, ns: str) -> tuple[int, Any]:
    """A request to one controller's server as the aggregator makes it (front-proxy cert)."""
    assert cluster.front_proxy_client_cert is not None
    assert cluster.front_proxy_client_key is not None
    ctx = ssl.create_default_context(cafile=str(cluster.ext_ca_cert))
    ctx.check_hostname = False
    ctx.load_cert_chain(str(cluster.front_proxy_client_cert), str(cluster.front_proxy_client_key))
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    try:
        conn.request("GET", f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/"
                            f"{points.DESIRED}?labelSelector=pool%3D{POOL}",
                     headers={"X-Remote-User": "system:admin", "X-Remote-Group": "system:masters"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


@contextlib.asynccontextmanager
async def hpa(api: ApiClient, ns: str) -> AsyncIterator[None]:
    autoscaling = client.AutoscalingV2Api(api)
    await autoscaling.create_namespaced_horizontal_pod_autoscaler(ns, manifest(hpa_manifest()))
    try:
        yield
    finally:
        # While the APIService still answers (K8S-TESTENV.md section 5).
        await autoscaling.delete_namespaced_horizontal_pod_autoscaler(POOL, ns)


async def test_controller_serves_the_hpa_and_the_endpoint_follows_the_leader(
        k8s_cluster: ClusterInfo, k8s_api: ApiClient, k8s_namespace: str,
        tmp_path: Path) -> None:
    """ctl-a leads: the slice holds its address alone, and a real HPA sets pd-autoscaler's 4.
    The standby ctl-b serves an empty list. ctl-a stops: the address
    moves to ctl-b, the endpoint follows, and the HPA follows ctl-b's 1."""
    ns = k8s_namespace
    core = client.CoreV1Api(k8s_api)
    apps = client.AppsV1Api(k8s_api)
    await apps.create_namespaced_deployment(ns, gpu_deployment(POOL, replicas=1))
    await wait_for(lambda: ready_replicas(k8s_api, ns, POOL), until=lambda r: r == 1,
                   timeout_s=30, what=f"{POOL} ready")
    # The overlay's selector-less Service and its EndpointSlice, as shipped.
    service, endpoint_slice = [d for d in yaml.safe_load_all(OVERLAY_SERVICE.read_text()) if d]
    for doc in (service, endpoint_slice):
        doc["metadata"]["namespace"] = ns
    await core.create_namespaced_service(ns, manifest(service))
    await client.DiscoveryV1Api(k8s_api).create_namespaced_endpoint_slice(ns, endpoint_slice)
    await put_policy(k8s_api, ns, policy(ns))

    # The serving cert as the overlay mounts it: a TLS Secret's tls.crt / tls.key.
    cert_dir = tmp_path / "tls"
    cert_dir.mkdir()
    shutil.copyfile(k8s_cluster.ext_cert, cert_dir / "tls.crt")
    shutil.copyfile(k8s_cluster.ext_key, cert_dir / "tls.key")
    server_settings: dict[str, Any] = {
        "dry_run": True, "external_metrics_port": 0, "external_metrics_cert_dir": cert_dir,
        "leader_endpointslice": endpoint_slice["metadata"]["name"], "pod_namespace": ns,
        "serve_max_age_s": 30.0}
    source = FakeMetricsSource(ready=ready_from(k8s_api, ns, {(POOL, ROLE): POOL}))
    source.set_totals(POOL, ROLE, queue_depth=40)  # target 10 -> 4 replicas
    budget_s = 10 * k8s_cluster.hpa_sync_period_s + 20

    async def replicas() -> int:
        return int((await apps.read_namespaced_deployment_scale(POOL, ns)).spec.replicas)

    def desired(c: ctl.Controller) -> int | None:
        latest = c.store.latest
        return None if latest is None else latest.decision.pools[POOL].roles[ROLE].desired

    proxy = LeaderServiceProxy(k8s_api, ns, service["metadata"]["name"],
                               k8s_cluster.ext_bind_host)
    group, version = EXTERNAL_METRICS
    async with contextlib.AsyncExitStack() as stack:
        a, a_task = await stack.enter_async_context(running(
            k8s_cluster, ns, source, identity="ctl-a", pod_name="ctl-a", pod_ip=IPS["ctl-a"],
            **server_settings))
        await wait_for(lambda: asyncio.sleep(0, a.health.leader and desired(a) == 4),
                       timeout_s=20, what="ctl-a leads and decides 4")
        # The standby starts second, so which one leads is known.
        b, _ = await stack.enter_async_context(running(
            k8s_cluster, ns, source, identity="ctl-b", pod_name="ctl-b", pod_ip=IPS["ctl-b"],
            **server_settings))
        await stack.enter_async_context(proxy)
        await wait_for(lambda: asyncio.sleep(0, b.health.ready()[0]), timeout_s=10,
                       what="ctl-b ready (standby)")
        assert a.external_metrics is not None
        assert b.external_metrics is not None
        proxy.ports = {IPS["ctl-a"]: a.external_metrics.port,
                       IPS["ctl-b"]: b.external_metrics.port}
        await wait_for(proxy.endpoints, until=lambda eps: eps == [IPS["ctl-a"]], timeout_s=10,
                       what="the overlay's EndpointSlice holds only the leader ctl-a")

        # The standby serves, cleanly, nothing: an HPA routed there would hold, not scale.
        assert not b.health.leader
        assert b.store.latest is None
        if k8s_cluster.front_proxy_client_cert is not None:
            status, body = await asyncio.to_thread(direct_get, k8s_cluster,
                                                   b.external_metrics.port, ns)
            assert (status, body["items"]) == (200, [])

        async with (
            # Registered once the leader is reachable: the aggregator checks discovery first.
            registered_apiservice(k8s_api, k8s_cluster, group=group, version=version,
                                  port=proxy.port),
            hpa(k8s_api, ns),
        ):
            await wait_for(replicas, until=lambda r: r == 4, timeout_s=budget_s,
                           what="HPA follows ctl-a's pd_desired_replicas 4")
            assert set(proxy.routed) == {IPS["ctl-a"]}

            # Failover: ctl-a stops (SIGTERM: its address removed, lease released); ctl-b
            # takes over and writes its own address: the Service's only endpoint.
            a_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await a_task
            assert IPS["ctl-a"] not in await proxy.endpoints()
            await wait_for(proxy.endpoints, until=lambda eps: eps == [IPS["ctl-b"]],
                           timeout_s=15, what="the Service's endpoint moves to the new leader")
            assert a.store.latest is None  # the old leader serves nothing either

            source.set_totals(POOL, ROLE, queue_depth=0)
            await wait_for(lambda: asyncio.sleep(0, desired(b)), until=lambda d: d == 1,
                           timeout_s=20, what="ctl-b decides 1")
            await wait_for(replicas, until=lambda r: r == 1, timeout_s=budget_s,
                           what="HPA follows ctl-b down to 1")
            assert proxy.routed[-1] == IPS["ctl-b"]
            hpa_status = (await client.AutoscalingV2Api(k8s_api)
                          .read_namespaced_horizontal_pod_autoscaler(POOL, ns)).status
            assert hpa_status.desired_replicas == 1
