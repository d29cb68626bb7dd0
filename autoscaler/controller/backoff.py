"""One retry helper and one sleep seam for the controller's long-lived loops.

Every loop that waits on time (the tick pacing, the policy-file poll, the retries after an API
error, the leader-label convergence, the elector's pause between rounds) waits through `sleep`,
so a test replaces that one function (`monkeypatch.setattr(backoff, "sleep", ...)`) instead of
patching `asyncio.sleep` for the whole process. Cancellation always escapes: `retry` only catches
the exception types it is given, and `asyncio.CancelledError` is not an `Exception`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def sleep(seconds: float, *, wake: asyncio.Event | None = None) -> None:
    """Wait `seconds`, or less if `wake` is set meanwhile (the event is left as it is)."""
    if wake is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(wake.wait(), seconds)


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
