"""The real collaborators of a `Controller`, and the `pd-autoscaler run` entry point.

`app.Controller` is given everything it acts through; this module is the one place the real
ones are built: the Prometheus source, the Kubernetes API client, and on that cluster the
actuator (reading from the Deployment watch cache unless `cluster_cache` is off), Event
recorder, state ConfigMap and (if configured) leader EndpointSlice, all behind one
fence that asks the controller whether it still leads. Tests build controllers on a test
cluster with `on_cluster`, or pass the fakes of `autoscaler.testing` to `Controller` directly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.api_client import ApiClient

from autoscaler import errors
from autoscaler import telemetry as telemetry_mod
from autoscaler.actuator import kubernetes as kube
from autoscaler.controller.app import Controller
from autoscaler.controller.cluster_cache import DeploymentCache, KubeDeploymentApi
from autoscaler.controller.endpoint import LeaderEndpoint
from autoscaler.controller.refits import ProcessRefitter
from autoscaler.controller.settings import ENV_PREFIX, Settings, settings_from
from autoscaler.controller.state_store import StateStore
from autoscaler.forecast import refit
from autoscaler.metrics.source import MetricsSource
from autoscaler.spec import DeploymentRef


def on_cluster(settings: Settings, *, api: ApiClient, source: MetricsSource,
               clock: Callable[[], float] = time.monotonic, **kw: Any) -> Controller:
    """A controller acting on the cluster behind `api`: the Kubernetes actuator, Event
    recorder, state ConfigMap and (if configured) leader EndpointSlice; their failed API calls
    count in `pd_autoscaler_kubernetes_api_errors_total`. `kw` goes to `Controller`."""
    telemetry = kw.get("telemetry") or telemetry_mod.DEFAULT

    def api_failed(operation: str, code: int | str) -> None:
        telemetry.kubernetes_api_error(operation=operation, code=code)

    events = kube.EventRecorder(api, instance=settings.identity,
                                timeout_s=settings.api_timeout_s, on_api_error=api_failed)
    core = client.CoreV1Api(api)

    built: list[Controller] = []
    cache = None
    if settings.cluster_cache:
        cache = DeploymentCache(
            KubeDeploymentApi(client.AppsV1Api(api), timeout_s=settings.api_timeout_s,
                              watch_timeout_s=settings.cluster_cache_watch_timeout_s),
            label_selector=settings.cluster_cache_label_selector)

    def fence(ref: DeploymentRef) -> bool:
        # Asked immediately before every write (each scale PATCH, its retry), not once per
        # tick; per bucket with replica sharding.
        return bool(built) and built[0].may_write(ref)

    def leading() -> bool:
        # The leader's address in the EndpointSlice: the one lease (the adoption servers it
        # routes to run with BUCKETS=1 only).
        return bool(built) and built[0].is_leader()

    def owns_shard(index: int) -> bool:
        # Which shards a load reads (and the saves write): those of the leading task.
        return bool(built) and built[0].owns_shard(index)

    def shard_fence(index: int) -> bool:
        # Asked immediately before each state shard write.
        return bool(built) and built[0].may_write_shard(index)

    endpoint = None
    if settings.leader_endpointslice and settings.pod_ip:
        endpoint = LeaderEndpoint(
            client.DiscoveryV1Api(api), name=settings.leader_endpointslice,
            namespace=settings.namespace, address=settings.pod_ip, pod_name=settings.pod_name,
            pod_namespace=settings.pod_namespace, timeout_s=settings.api_timeout_s,
            reassert_s=settings.leader_endpoint_reassert_s, on_api_error=api_failed,
            fence=leading)

    c = Controller(
        settings, api=api, source=source, events=events,
        actuator=kube.KubernetesActuator(api, events=events, fence=fence, reader=cache,
                                         timeout_s=settings.api_timeout_s, clock=clock,
                                         on_api_error=api_failed),
        cluster_cache=cache,
        state_store=StateStore(core, namespace=settings.namespace,
                               name=settings.state_configmap, shards=settings.state_shards,
                               timeout_s=settings.api_timeout_s, owns=owns_shard,
                               fence=shard_fence),
        leader_endpoint=endpoint, clock=clock, **kw)
    built.append(c)
    return c


@contextlib.asynccontextmanager
async def from_settings(settings: Settings, *,
                        telemetry: telemetry_mod.Telemetry | None = None,
                        ) -> AsyncIterator[Controller]:
    """The one place the real clients are built: Prometheus, the forecast refit processes
    (installed as the process-wide refitter; stopped on exit), then the Kubernetes API client
    (closed on exit), then the controller on that cluster."""
    telemetry = telemetry or telemetry_mod.DEFAULT
    source = build_source(settings, telemetry)
    refitter = None
    if settings.refit_workers > 0:
        refitter = ProcessRefitter(max_workers=settings.refit_workers,
                                   timeout_s=settings.refit_timeout_s,
                                   on_result=telemetry.record_refit)
        previous = refit.set_default(refitter)
    try:
        api = await kube.make_api_client(settings.kubeconfig)
        async with api:
            yield on_cluster(settings, api=api, source=source, telemetry=telemetry)
    finally:
        if refitter is not None:
            refit.set_default(previous)
            refitter.shutdown()


def build_source(settings: Settings, telemetry: telemetry_mod.Telemetry) -> MetricsSource:
    if not settings.prometheus_url:
        msg = ("settings: prometheus_url: required (--prometheus-url or "
               f"{ENV_PREFIX}PROMETHEUS_URL)")
        raise errors.ConfigError([msg])
    from autoscaler.metrics import prometheus  # noqa: PLC0415 - only `run` pays for it
    from autoscaler.metrics import settings as metrics_settings  # noqa: PLC0415

    source = prometheus.PrometheusSource(
        metrics_settings.PrometheusSettings(
            url=settings.prometheus_url,
            bearer_token_file=settings.prometheus_token_file,
            ca_file=settings.prometheus_ca_file,
        ),
        telemetry=telemetry,
    )
    return telemetry_mod.InstrumentedSource(source, telemetry)


async def _amain(settings: Settings) -> int:
    async with from_settings(settings) as controller:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            # Cancellation runs the finally blocks: the lease is released, HTTP stops.
            if task is not None:
                loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await controller.run()
    return 0


def main(args: argparse.Namespace) -> int:
    """`pd-autoscaler run`: returns the exit code (ConfigError -> 2 via cli.main)."""
    settings = settings_from(args, os.environ)
    return asyncio.run(_amain(settings))
