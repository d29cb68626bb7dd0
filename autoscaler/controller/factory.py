"""The real collaborators of a `Controller`, and the `pd-autoscaler run` entry point.

`app.Controller` is given everything it acts through; this module is the one place the real
ones are built: the Prometheus source, the Kubernetes API client, and on that cluster the
actuator, Event recorder, state ConfigMap and (if configured) leader label, all behind one
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
from autoscaler.controller.leader import LeaderLabeler
from autoscaler.controller.settings import ENV_PREFIX, Settings, settings_from
from autoscaler.controller.state_store import StateStore
from autoscaler.metrics.source import MetricsSource
from autoscaler.spec import DeploymentRef


def on_cluster(settings: Settings, *, api: ApiClient, source: MetricsSource,
               clock: Callable[[], float] = time.monotonic, **kw: Any) -> Controller:
    """A controller acting on the cluster behind `api`: the Kubernetes actuator, Event
    recorder, state ConfigMap and (if configured) leader label. `kw` goes to `Controller`."""
    events = kube.EventRecorder(api, instance=settings.identity,
                                timeout_s=settings.api_timeout_s)
    core = client.CoreV1Api(api)
    labeler = None
    if settings.leader_label and settings.pod_name:
        labeler = LeaderLabeler(core, pod=settings.pod_name,
                                namespace=settings.pod_namespace or settings.namespace,
                                timeout_s=settings.api_timeout_s)
    built: list[Controller] = []

    def fence(ref: DeploymentRef) -> bool:
        # Asked immediately before every write (each scale PATCH, its retry), not once per
        # tick; per bucket with replica sharding.
        return bool(built) and built[0].may_write(ref)

    def owns_shard(index: int) -> bool:
        # Which shards a load reads (and the saves write): those of the leading task.
        return bool(built) and built[0].owns_shard(index)

    def shard_fence(index: int) -> bool:
        # Asked immediately before each state shard write.
        return bool(built) and built[0].may_write_shard(index)

    c = Controller(
        settings, api=api, source=source, events=events,
        actuator=kube.KubernetesActuator(api, events=events, fence=fence,
                                         timeout_s=settings.api_timeout_s, clock=clock),
        state_store=StateStore(core, namespace=settings.namespace,
                               name=settings.state_configmap, shards=settings.state_shards,
                               timeout_s=settings.api_timeout_s, owns=owns_shard,
                               fence=shard_fence),
        leader_labeler=labeler, clock=clock, **kw)
    built.append(c)
    return c


@contextlib.asynccontextmanager
async def from_settings(settings: Settings, *,
                        telemetry: telemetry_mod.Telemetry | None = None,
                        ) -> AsyncIterator[Controller]:
    """The one place the real clients are built: Prometheus, then the Kubernetes API client
    (closed on exit), then the controller on that cluster."""
    telemetry = telemetry or telemetry_mod.DEFAULT
    source = build_source(settings, telemetry)
    api = await kube.make_api_client(settings.kubeconfig)
    async with api:
        yield on_cluster(settings, api=api, source=source, telemetry=telemetry)


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
