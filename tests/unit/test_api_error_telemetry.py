"""`pd_autoscaler_kubernetes_api_errors_total{operation, code}` is recorded where the
controller's Kubernetes API calls fail: the actuator's reads and scale writes, Events, the state
ConfigMap, the Lease rounds and the leader EndpointSlice."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.api_client import ApiClient
from kubernetes_asyncio.client.rest import ApiException

from autoscaler import errors
from autoscaler.actuator import kubernetes as kube
from autoscaler.actuator.base import ObjectRef
from autoscaler.controller import app as controller
from autoscaler.controller import backoff, factory
from autoscaler.controller.settings import Settings
from autoscaler.spec import DeploymentRef
from autoscaler.telemetry import Telemetry
from autoscaler.testing import FakeActuator, FakeEvents, FakeMetricsSource, FakeStateStore
from autoscaler.types import Role
from tests.unit.test_actuator_precondition import Apps

REF = DeploymentRef(namespace="llm", name="d")
METRIC = "pd_autoscaler_kubernetes_api_errors_total"


def counted(tel: Telemetry) -> dict[tuple[str, str], float]:
    out = {}
    for family in tel.registry.collect():
        for sample in family.samples:
            if sample.name == METRIC and sample.value:
                out[(sample.labels["operation"], sample.labels["code"])] = sample.value
    return out


class FailingApps(Apps):
    """The Deployment API failing as scripted: on the read, the scale read, or the write."""

    def __init__(self, *, read: BaseException | None = None,
                 read_scale: BaseException | None = None) -> None:
        super().__init__(2)
        self.read_error = read
        self.read_scale_error = read_scale

    async def read_namespaced_deployment(self, name: str, ns: str, **kw: Any) -> Any:
        if self.read_error is not None:
            raise self.read_error
        return await super().read_namespaced_deployment(name, ns, **kw)

    async def read_namespaced_deployment_scale(self, name: str, ns: str, **kw: Any) -> Any:
        if self.read_scale_error is not None:
            raise self.read_scale_error
        return await super().read_namespaced_deployment_scale(name, ns, **kw)


CASES = {
    "the Deployment read answers 503":
        (FailingApps(read=ApiException(status=503)), "status", {("get_deployment", "503"): 1}),
    "the Deployment read's connection drops":
        (FailingApps(read=aiohttp.ServerDisconnectedError()), "status",
         {("get_deployment", "ServerDisconnectedError"): 1}),
    "the scale read times out":
        (FailingApps(read_scale=TimeoutError()), "scale", {("get_scale", "TimeoutError"): 1}),
    "the scale write is refused: replicas changed (the JSON patch test)":
        (FailingApps(), "scale-conflict", {("patch_scale", "422"): 1}),
    "the scale write answers 500":
        (FailingApps(), "scale-500", {("patch_scale", "500"): 1}),
    "nothing fails: nothing counted":
        (FailingApps(), "scale", {}),
}


@pytest.mark.parametrize(("apps", "call", "want"), CASES.values(), ids=list(CASES))
async def test_actuator_counts_its_failed_calls(apps: FailingApps, call: str,
                                                want: dict[tuple[str, str], float]) -> None:
    tel = Telemetry()
    act = kube.KubernetesActuator(
        SimpleNamespace(), apps=apps,  # type: ignore[arg-type]
        on_api_error=lambda op, code: tel.kubernetes_api_error(operation=op, code=code))
    if call == "scale-conflict":
        apps.on_patch = lambda: setattr(apps, "replicas", 7)  # an operator, in between
    if call == "scale-500":
        apps.patch_errors = [ApiException(status=500)]
    try:
        if call == "status":
            await act.status(REF)
        else:
            await act.scale(REF, 3, reason="test")
    except errors.ActuationError:
        pass
    assert counted(tel) == want


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_on_cluster_wires_every_writer_to_the_counter() -> None:
    """A real ApiClient whose API server refuses connections: the actuator, the Event recorder
    and the leader EndpointSlice each count their failed call in the controller's telemetry."""
    cfg = client.Configuration()
    cfg.host = f"http://127.0.0.1:{_closed_port()}"
    tel = Telemetry()
    async with ApiClient(configuration=cfg) as api:
        settings = Settings(namespace="ns", identity="a", api_timeout_s=2,
                            leader_endpointslice="lead", pod_ip="10.0.0.7")
        c = factory.on_cluster(settings, api=api, source=FakeMetricsSource(), telemetry=tel)
        with pytest.raises(errors.ActuationUnavailable):
            await c.actuator.status(REF)
        assert not await c.events.record(ObjectRef.deployment(REF), reason="R", message="m")
        assert c.leader_endpoint is not None
        with pytest.raises(aiohttp.ClientConnectorError):
            await c.leader_endpoint._sync(leader=True)
    got = counted(tel)
    assert set(got) == {("get_deployment", "ClientConnectorError"),
                        ("create_event", "ClientConnectorError"),
                        ("read_endpointslice", "ClientConnectorError")}


async def test_state_store_failures_are_counted(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The state ConfigMap's read (on taking the lead) and write (after a tick) failing with
    API errors count as `read_state` / `write_state`."""
    real = backoff.sleep

    async def fast(seconds: float, *, wake: asyncio.Event | None = None) -> None:
        await real(min(seconds, 0.01), wake=wake)  # the state read's retry delays, shortened

    monkeypatch.setattr(backoff, "sleep", fast)
    policy = tmp_path / "policy.yaml"
    policy.write_text("""
apiVersion: pd-autoscaler.io/v1alpha1
kind: AutoscalingPolicy
pools:
  - name: p
    roles:
      aggregated:
        deployment: {namespace: llm, name: d}
        max_replicas: 8
        signals: [{signal: queue_depth, target: 2}]
""")
    store = FailingSaves()
    store.load_errors = [ApiException(status=503), aiohttp.ServerDisconnectedError()]
    tel = Telemetry()
    source = FakeMetricsSource()
    source.ready[("p", Role.AGGREGATED)] = 2
    source.set_totals("p", Role.AGGREGATED, queue_depth=8)
    c = controller.Controller(
        Settings(namespace="ns", identity="a", policy_file=policy, tick_s=0.05,
                 leader_election=False, policy_poll_s=0.05),
        api=SimpleNamespace(), source=source, actuator=FakeActuator(),  # type: ignore[arg-type]
        events=FakeEvents(), state_store=store, telemetry=tel, serve_http=False)
    task = asyncio.create_task(c.run())
    try:
        async with asyncio.timeout(10):
            while store.saves < 1:  # noqa: ASYNC110 - the state belongs to the code under test
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert counted(tel) == {("read_state", "503"): 1,
                            ("read_state", "ServerDisconnectedError"): 1,
                            ("write_state", "403"): 1}


class FailingSaves(FakeStateStore):
    """The first save is refused (a Role without update on the state ConfigMap)."""

    def __init__(self) -> None:
        super().__init__()
        self.save_errors: list[Exception] = [ApiException(status=403)]

    async def save(self, *args: Any, **kw: Any) -> None:
        if self.save_errors:
            raise self.save_errors.pop(0)
        await super().save(*args, **kw)
