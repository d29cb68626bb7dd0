"""One retry helper and one sleep seam for the controller's long-lived loops.

Every loop that waits on time (the tick pacing, the policy-file poll, the retries after an API
error, the leader-endpoint convergence, the elector's pause between rounds) waits through `sleep`,
so a test replaces that one function (`monkeypatch.setattr(backoff, "sleep", ...)`) instead of
patching `asyncio.sleep` for the whole process. Every long-lived task runs under `supervise`:
restarted with backoff after any exception, and reported when it keeps failing. Cancellation
always escapes: `retry` only catches the exception types it is given, `supervise` catches
`Exception`, and `asyncio.CancelledError` is not an `Exception`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

T = TypeVar("T")
log = structlog.get_logger(__name__)


async def sleep(seconds: float, *, wake: asyncio.Event | None = None) -> None:
    """Wait `seconds`, or less if `wake` is set meanwhile (the event is left as it is)."""
    if wake is None:
        await asyncio.sleep(seconds)
        return
    # Not `asyncio.wait_for(wake.wait(), seconds)`: on Python 3.11 it swallows a cancellation
    # that arrives once `wake` is set (it returns the waiter's result instead), so a task
    # cancelled right after a `set()` (a leader stepping down at shutdown) kept running.
    waiter = asyncio.ensure_future(wake.wait())
    try:
        await asyncio.wait({waiter}, timeout=seconds)
    finally:
        waiter.cancel()


class Delays:
    """Exponential delays: `next()` is the wait before the next attempt, `reset()` after a
    success. 1, 2, 4, ... capped at `max_s` by default (the controller's API retries)."""

    def __init__(self, *, initial_s: float = 1.0, max_s: float = 30.0,
                 factor: float = 2.0) -> None:
        if not (initial_s > 0 and max_s > 0 and factor >= 1):
            msg = (f"need initial_s > 0, max_s > 0 and factor >= 1 "
                   f"(got {initial_s}, {max_s}, {factor})")
            raise ValueError(msg)
        self.initial_s = min(initial_s, max_s)
        self.max_s = max_s
        self.factor = factor
        self._next = self.initial_s

    def next(self) -> float:
        delay = self._next
        self._next = min(delay * self.factor, self.max_s)
        return delay

    def reset(self) -> None:
        self._next = self.initial_s


async def retry(
    op: Callable[[], Awaitable[T]],
    *,
    retry_on: tuple[type[Exception], ...],
    on_error: Callable[[Exception, float], None],
    delays: Delays | None = None,
) -> T:
    """`await op()` until it returns. An exception of a `retry_on` type is reported to
    `on_error(exc, delay)` (which logs it) and retried after `delay`; any other exception, and
    cancellation, propagate at once."""
    delays = delays or Delays()
    while True:
        try:
            return await op()
        except retry_on as exc:
            delay = delays.next()
            on_error(exc, delay)
        await sleep(delay)


Report = Callable[[str, "str | None"], None]
"""`report(name, why)`: `why` says why the task named `name` cannot recover; None: it did."""


async def supervise(
    name: str,
    run: Callable[[], Awaitable[None]],
    *,
    report: Report,
    delays: Delays | None = None,
    report_after: int = 3,
    healthy_after_s: float = 60.0,
    returns_ok: bool = False,
) -> None:
    """Run the long-lived `run()` until cancelled, restarting it after any exception.

    Why: each long-lived task (the policy watch, the leader endpoint, the elector) used to catch
    the errors its author expected and die silently on any other (a `RecursionError` from a
    hostile document, an `aiohttp.ClientPayloadError` from a cut connection), after which hot
    reload stopped while every probe stayed 200. Here every exception is logged with the task's
    name and retried after `delays`; after `report_after` failures in a row `report(name, why)`
    makes the task's state visible (the controller's `/readyz`), and once a restarted run has
    lasted `healthy_after_s` the task counts as recovered (`report(name, None)`, delays reset).
    A `run()` that returns is restarted too: after a pause of `delays.initial_s` if
    `returns_ok` (an elector round that ended), else as a failure (a watch must not end).
    """
    delays = delays or Delays()
    failures = 0
    while True:
        task = asyncio.ensure_future(run())
        try:
            done, _ = await asyncio.wait({task}, timeout=healthy_after_s)
            if not done:
                if failures:
                    log.info("task_recovered", task=name, after_failures=failures)
                    report(name, None)
                    failures = 0
                delays.reset()
                await task
            else:
                task.result()
            if returns_ok:
                await sleep(delays.initial_s)
                continue
            why = "ended (it must run until cancelled)"
        except Exception as exc:  # supervision: every failure is retried
            why = f"{type(exc).__name__}: {exc}"[:300]
        finally:
            if not task.done():  # we were cancelled: so is the task
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        failures += 1
        delay = delays.next()
        log.error("task_failed", task=name, error=why, failures=failures, restart_in_s=delay)
        if failures >= report_after:
            report(name, f"{why} ({failures} failures in a row, restarting in {delay:g}s)")
        await sleep(delay)
