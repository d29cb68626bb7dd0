"""Where fits run: inline (simulator, tests: deterministic) or on a worker thread (controller).

A tick never waits for a fit. The forecaster hands a `FitJob` (a copy of its history) to a
`Refitter`, keeps predicting from its previous fit, and installs the result at the first tick
after it is done. With `Inline` the fit runs inside `submit`, so the result is installed in the
same tick: the simulator replays the same decisions run after run. With `Threaded` (the
default) fits run one at a time on a daemon worker: one worker because statsmodels holds the
GIL for most of a fit, so more threads would only steal time from the tick.

The process-wide default is what policies built from YAML use; the simulator calls
`set_default(Inline())` before building its loop.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from typing import Protocol

from autoscaler.forecast import models


class Handle(Protocol):
    def done(self) -> bool: ...

    def result(self) -> models.FitResult: ...


class Refitter(Protocol):
    def submit(self, fn: Callable[[models.FitJob], models.FitResult], job: models.FitJob) -> Handle:
        """Start `fn(job)`; the returned handle tells when its result can be installed."""
        ...


class _Done:
    __slots__ = ("_result",)

    def __init__(self, result: models.FitResult) -> None:
        self._result = result

    def done(self) -> bool:
        return True

    def result(self) -> models.FitResult:
        return self._result


class Inline:
    """Run the fit now, in the caller's thread: deterministic, on the tick's path."""

    def submit(self, fn: Callable[[models.FitJob], models.FitResult], job: models.FitJob) -> Handle:
        return _Done(fn(job))


class Threaded:
    """Run fits one at a time on a background thread."""

    def __init__(self) -> None:
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def submit(self, fn: Callable[[models.FitJob], models.FitResult], job: models.FitJob) -> Handle:
        with self._lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="forecast-fit"
                )
            return self._pool.submit(fn, job)

    def shutdown(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None


_default: Refitter = Threaded()


def default() -> Refitter:
    return _default


def set_default(refitter: Refitter) -> Refitter:
    """Install the process-wide refitter; returns the previous one (to restore it)."""
    global _default  # one process-wide choice, set once at start-up
    previous, _default = _default, refitter
    return previous
