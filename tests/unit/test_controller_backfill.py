"""The controller refills forecast history from the source's range queries before its first tick
(and for forecast roles a reload adds), bounded in time and never fatal. The range queries are
a fake here; `PrometheusSource.range_rates` against a real Prometheus is in tests/prom."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from autoscaler import errors, telemetry
from autoscaler.controller import app as controller
from autoscaler.controller import backfill
from autoscaler.controller.settings import Settings, settings_from
from autoscaler.forecast import refit
from autoscaler.metrics.source import RoleTarget
from autoscaler.policy.forecast import ForecastPolicy
from autoscaler.telemetry import Telemetry
from autoscaler.testing import FakeMetricsSource, fake_cluster
from autoscaler.types import Role

NO_API: Any = SimpleNamespace()
A = Role.AGGREGATED


def _pool(name: str, *, forecast: bool) -> str:
    policies = ("        policies: [{kind: forecast, model: holt, series: request_rate, "
                "capacity_per_replica: 10}]\n") if forecast else ""
    return f"""
  - name: {name}
    roles:
      aggregated:
        deployment: {{namespace: llm, name: {name}}}
        max_replicas: 8
        signals: [{{signal: queue_depth, target: 2}}]
{policies}"""


def _policy(*pools: str) -> str:
    return ("apiVersion: pd-autoscaler.io/v1alpha1\nkind: AutoscalingPolicy\ndry_run: true\n"
            "pools:" + "".join(pools))


class RangeSource(FakeMetricsSource):
    """FakeMetricsSource with range queries: 5 requests/s at every step; scripted failures."""

    def __init__(self, *, behaviour: str = "ok") -> None:
        super().__init__()
        self.behaviour = behaviour
        self.calls: list[tuple[str, str, float, float, float]] = []

    async def range_rates(self, target: RoleTarget, series: str, *, start: float, end: float,
                          step: float) -> tuple[np.ndarray, np.ndarray]:
        self.calls.append((target.pool, series, start, end, step))
        if self.behaviour == "fail":
            msg = "range query request_rate failed (timeout)"
            raise errors.MetricsUnavailable(msg)
        if self.behaviour == "hang":
            await asyncio.Event().wait()
        ts = np.arange(start, end, step) + step / 2
        return ts, np.full(len(ts), 5.0)


@pytest.fixture(autouse=True)
def inline_refits() -> Any:
    previous = refit.set_default(refit.Inline())
    yield
    refit.set_default(previous)


@contextlib.asynccontextmanager
async def running(tmp_path: Path, source: FakeMetricsSource, text: str, **settings: Any
                  ) -> AsyncIterator[controller.Controller]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(text)
    s = Settings(namespace="pd-autoscaler", identity="a", policy_file=policy,
                            tick_s=0.2, leader_election=False, policy_poll_s=0.05, **settings)
    c = controller.Controller(s, api=NO_API, source=source, telemetry=Telemetry(),
                              serve_http=False, release_on_exit=False, **fake_cluster())
    task = asyncio.create_task(c.run())
    try:
        yield c
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _until(cond: Callable[[], bool], what: str, timeout_s: float = 10) -> None:
    async with asyncio.timeout(timeout_s):
        while not cond():  # noqa: ASYNC110 - the state belongs to the code under test
            await asyncio.sleep(0.02)
    assert cond(), what


def _forecast(c: controller.Controller, pool: str) -> ForecastPolicy:
    assert c.loop is not None
    (p,) = [p for p in c.loop.policies[(pool, A)] if isinstance(p, ForecastPolicy)]
    return p


async def test_backfill_before_the_first_tick_and_for_roles_a_reload_adds(
        tmp_path: Path) -> None:
    """The first tick already has history (a day, capped by forecast_backfill_s) and forecasts;
    a reload that adds a forecast role backfills that role only."""
    source = RangeSource()
    text = _policy(_pool("a", forecast=True), _pool("b", forecast=False))
    async with running(tmp_path, source, text, forecast_backfill_s=86400.0) as c:
        await _until(lambda: c.ticks > 0, "first tick")
        hist = _forecast(c, "a").forecaster.history
        # A day of minute bins; the first tick's own sample opens a 1,441st when a minute
        # boundary passes between the backfill and the tick (seen under load).
        assert len(hist) in (1440, 1441)
        assert hist.observed() in (1440, 1441)
        assert [(pool, series, end - start, step) for pool, series, start, end, step
                in source.calls] == [("a", "request_rate", 86400.0, 60.0)]
        rd = c.store.latest
        assert rd is not None
        need = next(n for n in rd.decision.pools["a"].roles[A].needs
                    if n.source == "forecast:request_rate")
        assert need.value == pytest.approx(5.0, rel=0.1)  # forecast from the first tick

        (tmp_path / "policy.yaml").write_text(
            _policy(_pool("a", forecast=True), _pool("b", forecast=True)))
        await _until(lambda: len(source.calls) == 2, "reload backfilled")
        assert source.calls[1][0] == "b"
        await _until(lambda: len(_forecast(c, "b").forecaster.history) > 0, "b filled")
        assert len(_forecast(c, "a").forecaster.history) >= 1440  # kept, not refilled


@pytest.mark.parametrize("behaviour", ["fail", "hang"])
async def test_backfill_failure_or_timeout_is_not_fatal(tmp_path: Path, behaviour: str) -> None:
    """A failing or hanging range query costs at most forecast_backfill_timeout_s: the loop
    ticks, the forecast starts empty and learns live."""
    source = RangeSource(behaviour=behaviour)
    async with running(tmp_path, source, _policy(_pool("a", forecast=True)),
                       forecast_backfill_timeout_s=0.3) as c:
        await _until(lambda: c.ticks > 1, "ticking")
        assert len(source.calls) == 1
        # Nothing was loaded (a backfill loads its whole span, 1,440 bins here). Live ticks may
        # have closed a bin if the run crossed a bin boundary of the clock, which a loaded
        # machine makes likely: "no bin at all" failed CI once for that reason alone.
        assert len(_forecast(c, "a").forecaster.history) <= 2


async def test_no_backfill_without_range_queries_or_when_off(tmp_path: Path) -> None:
    """A source without range_rates, or forecast_backfill_s 0, skips the backfill."""
    async with running(tmp_path, FakeMetricsSource(), _policy(_pool("a", forecast=True))) as c:
        await _until(lambda: c.ticks > 0, "first tick")
    source = RangeSource()
    async with running(tmp_path, source, _policy(_pool("a", forecast=True)),
                       forecast_backfill_s=0.0) as c:
        await _until(lambda: c.ticks > 0, "first tick")
    assert source.calls == []


def test_range_rates_found_behind_instrumented_source() -> None:
    source = RangeSource()
    wrapped = telemetry.InstrumentedSource(source, Telemetry())
    assert backfill.range_rates_of(wrapped) == source.range_rates
    assert backfill.range_rates_of(FakeMetricsSource()) is None


@pytest.mark.parametrize(("env", "fragment"), [
    pytest.param({"PD_AUTOSCALER_FORECAST_BACKFILL_S": "-1"}, "forecast_backfill_s: must be >= 0",
                 id="negative"),
    pytest.param({"PD_AUTOSCALER_FORECAST_BACKFILL_TIMEOUT_S": "45"},
                 "forecast_backfill_timeout_s: must be > 0 and <= 30", id="beyond-liveness"),
])
def test_backfill_settings_are_validated(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(errors.ConfigError, match=fragment):
        settings_from(None, {"PD_AUTOSCALER_NAMESPACE": "x", **env})
    ok = settings_from(None, {"PD_AUTOSCALER_NAMESPACE": "x",
                                         "PD_AUTOSCALER_FORECAST_BACKFILL_S": "3600"})
    assert ok.forecast_backfill_s == 3600.0


async def test_slo_history_is_refilled_before_the_first_tick(tmp_path: Path) -> None:
    """An slo role gets its three rates over its memory (the burst shape's 3 h at its 15-s
    tick) before the first tick, so a new leader keeps the burst headroom and shape the old one
    had learnt."""
    from autoscaler.policy.slo import SLOPolicy  # noqa: PLC0415
    from autoscaler.types import RATE_KEYS  # noqa: PLC0415

    slo = """
  - name: s
    roles:
      aggregated:
        deployment: {namespace: llm, name: s}
        max_replicas: 8
        policies: [{kind: slo, profile: llama-8b-h100}]
"""
    source = RangeSource()
    async with running(tmp_path, source, _policy(slo)) as c:
        await _until(lambda: c.ticks > 0, "first tick")
        assert [(pool, series, end - start, step) for pool, series, start, end, step
                in source.calls] == [("s", k, 10800.0, 15.0) for k in RATE_KEYS]
        assert c.loop is not None
        (pol,) = c.loop.policies[("s", A)]
        assert isinstance(pol, SLOPolicy)
        assert len(pol.rate.samples) >= 119
        assert len(pol.rate.shape) >= 700
