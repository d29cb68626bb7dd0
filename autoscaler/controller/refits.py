"""Forecast refits in worker processes: off the controller's GIL (issue 16).

`forecast.refit.Threaded` already kept fits off the tick's path, but statsmodels holds the GIL
for most of a fit, so at 1,000 pools (half of them forecasting) the 2.5-6.5 CPU-s of refits per
tick still competed with the tick in the same interpreter. `ProcessRefitter` is the same
`Refitter` seam on a `concurrent.futures.ProcessPoolExecutor` with `max_workers` processes (the
bound on concurrency; further jobs queue). The forecasters are unchanged: a tick never waits,
it polls its handle and keeps predicting from the previous model until the new one arrives.

- A fit that raises, a worker that dies (`BrokenProcessPool`, the pool is rebuilt) or a result
  that cannot be pickled: the handle's result is a failed `FitResult` naming why, so the
  forecaster keeps its previous model (`Forecaster.install`), and the failure is logged.
- A fit still running `timeout_s` after it was first seen running: the same failed result, and
  the pool is rebuilt (a hung statsmodels optimisation cannot be cancelled; its worker is
  terminated), so one pathological series cannot hold a worker forever.
- `on_result(key, result)` (the telemetry's `record_refit`) sees every outcome with its CPU
  seconds, measured inside the worker (`FitResult.cpu_s`), per pool and role (`FitJob.key`).

The decision core never imports this module: `factory.from_settings` installs it as the
process-wide refitter (`refit.set_default`), the simulator keeps `Inline`.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool

import structlog

from autoscaler.forecast import models

log = structlog.get_logger(__name__)

OnResult = Callable[[str, models.FitResult], None]

# One BLAS/OpenMP thread per refit worker. A fit's matrices are tiny (<= 4,680 points, state
# vectors of <= 4), so OpenBLAS's extra threads only spin: on the shared 2-core machine a
# sarimax fit cost 2.5 CPU-s with the default thread pool and 0.14 with one thread, an `auto`
# comparison 2.0-3.4 vs 0.25 (benchmarks/forecast_cost.py). Parallelism is REFIT_WORKERS.
# Set in the environment the spawned workers inherit (BLAS reads it when it loads); a value
# the operator set is kept.
WORKER_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class _Handle:
    """One submitted fit; `done()` is polled by the forecaster at each tick."""

    __slots__ = ("_future", "_job", "_owner", "_result", "_running_since")

    def __init__(self, owner: ProcessRefitter, future: concurrent.futures.Future[models.FitResult],
                 job: models.FitJob) -> None:
        self._owner = owner
        self._future = future
        self._job = job
        self._result: models.FitResult | None = None
        self._running_since: float | None = None

    def done(self) -> bool:
        if self._result is not None:
            return True
        owner = self._owner
        if self._future.done():
            self._finish(self._outcome())
            return True
        now = owner.clock()
        if self._running_since is None:
            if self._future.running():
                self._running_since = now
            return False
        if now - self._running_since > owner.timeout_s:
            owner.recycle(f"refit of {self._job.key or self._job.model} timed out")
            self._finish(self._failed(f"refit timed out after {owner.timeout_s:g}s"))
            return True
        return False

    def result(self) -> models.FitResult:
        if self._result is None:
            msg = "result() before done()"
            raise RuntimeError(msg)
        return self._result

    def _outcome(self) -> models.FitResult:
        try:
            return self._future.result()
        except BrokenProcessPool as exc:
            self._owner.recycle("a refit worker died")
            return self._failed(f"refit worker died: {exc}")
        except concurrent.futures.CancelledError:
            return self._failed("refit cancelled (worker pool rebuilt)")
        except Exception as exc:  # any failure keeps the previous model
            return self._failed(f"{type(exc).__name__}: {exc}")

    def _failed(self, why: str) -> models.FitResult:
        return models.FitResult(ok=False, end_bin=self._job.end_bin, error=why[:300])

    def _finish(self, result: models.FitResult) -> None:
        self._result = result
        if not result.ok:
            log.warning("refit_failed", key=self._job.key, model=self._job.model,
                        error=result.error, action="keeping the previous model")
        if self._owner.on_result is not None:
            self._owner.on_result(self._job.key, result)


class ProcessRefitter:
    """A `forecast.refit.Refitter` on `max_workers` worker processes (see the module doc)."""

    def __init__(self, *, max_workers: int = 1, timeout_s: float = 600.0,
                 on_result: OnResult | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_workers < 1 or timeout_s <= 0:
            msg = f"need max_workers >= 1 and timeout_s > 0 (got {max_workers}, {timeout_s})"
            raise ValueError(msg)
        self.max_workers = max_workers
        self.timeout_s = timeout_s
        self.on_result = on_result
        self.clock = clock
        self.recycled = 0
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def submit(self, fn: Callable[[models.FitJob], models.FitResult], job: models.FitJob
               ) -> _Handle:
        if self._pool is None:
            for k, v in WORKER_ENV.items():
                os.environ.setdefault(k, v)
            # spawn, not fork: the controller has an event loop, threads and open sockets that
            # a forked child would inherit half-copied.
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=self.max_workers, mp_context=multiprocessing.get_context("spawn"))
        try:
            future = self._pool.submit(fn, job)
        except BrokenProcessPool:
            self.recycle("the worker pool was broken")
            return self.submit(fn, job)
        return _Handle(self, future, job)

    def recycle(self, why: str) -> None:
        """Drop the pool (terminating its workers); the next submit starts a fresh one. Jobs
        queued in the old pool are cancelled: their forecasters keep their previous models
        and resubmit at their next refit."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        self.recycled += 1
        log.warning("refit_pool_recycled", why=why)
        # No public way to kill a hung worker: the executor's own process table.
        procs = list((pool._processes or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for p in procs:
            p.terminate()

    def shutdown(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
