"""ProcessRefitter: forecast refits in worker processes, never waited for by a tick; failures,
dead workers and timeouts keep the previous model; the CPU of each fit is reported per pool."""

from __future__ import annotations

import time

import numpy as np
import pytest

from autoscaler.controller.refits import ProcessRefitter
from autoscaler.forecast import models


def job(key: str = "p/prefill", model: str = "holt") -> models.FitJob:
    t = np.arange(2 * 1440) * 60.0
    rate = 1000 * (1 + 0.5 * np.sin(2 * np.pi * t / 86400))
    return models.FitJob(
        model=model, z=np.log1p(rate), end_bin=len(t), bin_s=60.0, season_bins=1440, steps=5,
        quantile=0.9, validation_bins=60, seasonal_window_bins=2880, holt_window_bins=720,
        arima_window_bins=720, arima_order=(1, 0, 1), fourier_terms=3, key=key)


# Module-level so the spawned workers can unpickle them by reference.
def blas_threads(j: models.FitJob) -> models.FitResult:
    import os  # noqa: PLC0415

    return models.FitResult(ok=False, end_bin=0, error=os.environ.get("OPENBLAS_NUM_THREADS", ""))


def boom(j: models.FitJob) -> models.FitResult:
    msg = "statsmodels blew up"
    raise ValueError(msg)


def hang(j: models.FitJob) -> models.FitResult:
    time.sleep(60)
    raise AssertionError


def wait_done(h: object, timeout_s: float = 120.0) -> None:
    end = time.monotonic() + timeout_s
    while not h.done():  # type: ignore[attr-defined]
        assert time.monotonic() < end, "fit did not finish"
        time.sleep(0.05)


@pytest.fixture
def seen() -> list[tuple[str, models.FitResult]]:
    return []


def test_a_fit_runs_in_a_worker_and_reports_its_cpu(seen: list) -> None:  # type: ignore[type-arg]
    r = ProcessRefitter(max_workers=1, on_result=lambda k, res: seen.append((k, res)))
    try:
        h = r.submit(models.fit, job())
        assert not h.done()  # the caller (a tick) is not blocked: the worker is still starting
        wait_done(h)
        res = h.result()
        assert res.ok, res.error
        assert res.model is not None
        assert res.cpu_s > 0
        assert [(k, x.ok) for k, x in seen] == [("p/prefill", True)]
    finally:
        r.shutdown()


@pytest.mark.parametrize(("fn", "error"), [(boom, "ValueError: statsmodels blew up")])
def test_a_failing_fit_is_a_failed_result_not_an_exception(fn: object, error: str,
                                                           seen: list) -> None:  # type: ignore[type-arg]
    r = ProcessRefitter(on_result=lambda k, res: seen.append((k, res)))
    try:
        h = r.submit(fn, job(key="q/decode"))  # type: ignore[arg-type]
        wait_done(h)
        assert not h.result().ok
        assert h.result().error == error
        assert seen[0][0] == "q/decode"
        # The pool still works for the next fit.
        h2 = r.submit(models.fit, job())
        wait_done(h2)
        assert h2.result().ok
    finally:
        r.shutdown()


def test_a_hung_fit_times_out_and_its_worker_is_replaced() -> None:
    now = [0.0]
    r = ProcessRefitter(timeout_s=10, clock=lambda: now[0])
    try:
        h = r.submit(hang, job())
        end = time.monotonic() + 120
        while not h._future.running():  # the worker picked it up
            assert time.monotonic() < end
            assert not h.done()
            time.sleep(0.05)
        assert not h.done()  # first seen running at t=0
        now[0] = 9.0
        assert not h.done()
        now[0] = 11.0
        assert h.done()
        assert h.result().error == "refit timed out after 10s"
        assert r.recycled == 1
        h2 = r.submit(models.fit, job())  # a fresh pool
        wait_done(h2)
        assert h2.result().ok
    finally:
        r.shutdown()


def test_a_failed_refit_keeps_the_previous_model() -> None:
    """Through the forecaster: the model from the first fit stays after a failed refit."""
    from autoscaler.forecast import engine  # noqa: PLC0415

    f = engine.Forecaster(engine.Settings(), key="p/prefill")
    good = models.fit(job())
    f.install(good)
    f.install(models.FitResult(ok=False, end_bin=1, error="refit timed out after 10s"))
    assert f.fit is good
    assert (f.fits, f.failures, f.last_error) == (1, 1, "refit timed out after 10s")


@pytest.mark.parametrize("kind", ["last_value", "holt", "holt_winters", "arima", "sarimax"])
def test_every_fitted_model_survives_the_trip_back_from_a_worker(kind: str) -> None:
    """A fit's result crosses a process boundary by pickle: every model kind must, and must
    forecast the same after (the SARIMAX seasonal mean was a closure, which does not pickle)."""
    import pickle  # noqa: PLC0415

    res = models.fit(job(model=kind))
    assert res.ok, res.error
    back = pickle.loads(pickle.dumps(res))  # noqa: S301 - our own object
    assert back.model is not None
    assert res.model is not None
    np.testing.assert_array_equal(back.model.forecast(5), res.model.forecast(5))


def test_workers_run_single_threaded_blas(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refit workers start with one BLAS thread (extra threads only spin on tiny fits)."""
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    r = ProcessRefitter(max_workers=1)
    try:
        h = r.submit(blas_threads, job())
        deadline = time.monotonic() + 60
        while not h.done() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert h.result().error == "1"
    finally:
        r.shutdown()
