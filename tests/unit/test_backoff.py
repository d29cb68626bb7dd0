"""The controller's one retry helper and its one sleep seam (autoscaler/controller/backoff.py)."""

from __future__ import annotations

import asyncio

import pytest

from autoscaler.controller import backoff


@pytest.mark.parametrize(("kw", "want"), [
    pytest.param({}, [1, 2, 4, 8, 16, 30, 30], id="api-retries-1-to-30"),
    # The tick loop: 2, 4, ... 64 ticks, at most 5 minutes (tick 15 s: 30, 60, 120, 240, 300).
    pytest.param({"initial_s": 30, "max_s": 300}, [30, 60, 120, 240, 300, 300], id="ticks"),
    pytest.param({"initial_s": 1, "max_s": 0.2}, [0.2, 0.2], id="cap-holds-from-the-first"),
])
def test_delays_double_up_to_the_cap(kw: dict[str, float], want: list[float]) -> None:
    d = backoff.Delays(**kw)
    assert [d.next() for _ in want] == want
    d.reset()
    assert d.next() == want[0]


async def test_retry_retries_only_the_given_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    """Listed errors are reported with the delay and retried; others propagate at once."""
    slept: list[float] = []

    async def fake_sleep(seconds: float, *, wake: asyncio.Event | None = None) -> None:
        del wake
        slept.append(seconds)

    monkeypatch.setattr(backoff, "sleep", fake_sleep)
    outcomes: list[BaseException | str] = [OSError("down"), TimeoutError(), "ok"]
    reported: list[tuple[str, float]] = []

    async def op() -> str:
        out = outcomes.pop(0)
        if isinstance(out, BaseException):
            raise out
        return out

    got = await backoff.retry(op, retry_on=(OSError, TimeoutError),
                              on_error=lambda e, d: reported.append((type(e).__name__, d)))
    assert got == "ok"
    assert reported == [("OSError", 1.0), ("TimeoutError", 2.0)]
    assert slept == [1.0, 2.0]

    outcomes[:] = [ValueError("bad config")]
    with pytest.raises(ValueError, match="bad config"):
        await backoff.retry(op, retry_on=(OSError,), on_error=lambda e, d: None)


async def test_retry_lets_cancellation_escape() -> None:
    """Cancelling a task stuck in retries cancels it (CancelledError is not retried)."""
    attempts = 0

    async def op() -> None:
        nonlocal attempts
        attempts += 1
        raise OSError("down")

    task = asyncio.create_task(backoff.retry(op, retry_on=(OSError,), on_error=lambda e, d: None))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert attempts == 1  # still in its first 1 s wait


async def test_sleep_wakes_early_on_the_event() -> None:
    wake = asyncio.Event()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    loop.call_later(0.01, wake.set)
    await backoff.sleep(5, wake=wake)
    assert loop.time() - t0 < 1


async def test_sleep_is_cancelled_even_when_woken_at_the_same_moment() -> None:
    """A wake and a cancellation in the same loop iteration (a leader stepping down at
    shutdown sets the event, then its task is cancelled): the sleeper must end cancelled, not
    return and carry on (`asyncio.wait_for` on 3.11 swallowed that cancellation)."""
    wake = asyncio.Event()
    sleeper = asyncio.create_task(backoff.sleep(30, wake=wake))
    await asyncio.sleep(0)  # the sleeper waits
    wake.set()
    sleeper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sleeper
    assert sleeper.cancelled()
