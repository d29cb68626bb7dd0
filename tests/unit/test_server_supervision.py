"""The adoption servers' watcher (`servers.keep_serving`) on synthetic time: what it probes,
when it restarts, how long it waits, and what /readyz is told. Each probe's outcome is scripted;
the probe itself (a server's own serving state and a dial of its port) and a real server killed
and restarted are in tests/unit/test_controller_servers.py."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from autoscaler.controller import backoff
from autoscaler.controller.servers import Served, keep_serving

PROBE_S = 5.0
OK = None
DEAD = "its serving loop ended"


class ScriptDone(Exception):
    """The script of probe outcomes is exhausted: the scenario is over."""


class FakeServer:
    def __init__(self, port: int, fail: Exception | None) -> None:
        self.port = port or 4443
        self.fail = fail
        self.stopped = False

    async def start(self) -> None:
        if self.fail is not None:
            raise self.fail

    async def stop(self) -> None:
        self.stopped = True

    def serving(self) -> bool:
        return not self.stopped


class ScriptedUnit(Served[FakeServer]):
    """A `Served` whose probe outcomes come from a script (the dial needs a real port)."""

    def __init__(self, probes: list[str | None], start_failures: list[Exception]) -> None:
        self.built: list[FakeServer] = []
        failures = list(start_failures)

        def make(port: int) -> FakeServer:
            server = FakeServer(port, failures.pop(0) if failures else None)
            self.built.append(server)
            return server

        super().__init__("external-metrics", make, port=4443)
        # Started by AdoptionServers.start before the watch begins.
        self.server = FakeServer(4443, None)
        self.built.append(self.server)
        self.probes = list(probes)

    async def problem(self, host: str, *, timeout_s: float = 2.0) -> str | None:
        del host, timeout_s
        if not self.probes:
            raise ScriptDone
        return self.probes.pop(0)


@dataclass
class Case:
    probes: list[str | None]
    sleeps: list[float]
    """Every wait, in order: probe periods (5) and restart delays (1, 2, 4, ...)."""
    reports: list[str | None]
    """What /readyz was told, in order (a fragment of `why`, or None: recovered)."""
    restarts: int
    start_failures: list[Exception] = field(default_factory=list)


CASES = {
    "a healthy server is probed, never restarted, nothing reported":
        Case(probes=[OK, OK, OK], sleeps=[PROBE_S] * 3, reports=[], restarts=0),
    "dies once: reported at once, restarted after 1 s, recovered after three good probes":
        Case(probes=[DEAD, OK, OK, OK], sleeps=[PROBE_S, 1.0, PROBE_S, PROBE_S, PROBE_S],
             reports=["its serving loop ended; restarting in 1s", None], restarts=1),
    "the port is taken twice on restart: retried after 1, 2, 4 s":
        Case(probes=[DEAD, OK, OK, OK],
             start_failures=[OSError(98, "Address already in use")] * 2,
             sleeps=[PROBE_S, 1.0, 2.0, 4.0, PROBE_S, PROBE_S, PROBE_S],
             reports=["restarting in 1s", "restart failed: OSError: [Errno 98] Address",
                      "restart failed", None], restarts=1),
    "dies again before it recovered: the backoff keeps growing, one recovery at the end":
        Case(probes=[DEAD, OK, DEAD, OK, OK, OK],
             sleeps=[PROBE_S, 1.0, PROBE_S, PROBE_S, 2.0, PROBE_S, PROBE_S, PROBE_S],
             reports=["(1 failures in a row)", "(2 failures in a row)", None], restarts=2),
    "recovered, then dies later: the backoff starts again at 1 s":
        Case(probes=[DEAD, OK, OK, OK, OK, DEAD, OK, OK, OK],
             sleeps=[PROBE_S, 1.0] + [PROBE_S] * 4 + [PROBE_S, 1.0] + [PROBE_S] * 3,
             reports=["restarting in 1s", None, "restarting in 1s", None], restarts=2),
}


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
async def test_keep_serving_scenarios(case: Case, monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []

    async def fake_sleep(seconds: float, *, wake: asyncio.Event | None = None) -> None:
        del wake
        sleeps.append(seconds)
        await asyncio.sleep(0)

    monkeypatch.setattr(backoff, "sleep", fake_sleep)
    unit = ScriptedUnit(case.probes, case.start_failures)
    reports: list[tuple[str, str | None]] = []
    with pytest.raises(ScriptDone):
        await keep_serving(unit, host="127.0.0.1", report=lambda n, w: reports.append((n, w)),
                           probe_s=PROBE_S, healthy_probes=3)
    # The last probe period ends in the probe that finds the script exhausted.
    assert sleeps == [*case.sleeps, PROBE_S]
    assert unit.restarts == case.restarts
    assert [n for n, _ in reports] == ["external-metrics"] * len(case.reports)
    for (_, got), want in zip(reports, case.reports, strict=True):
        assert (got is None) if want is None else (want in str(got)), (got, want)
    # Every server it gave up on was stopped (its socket closed) before the next was built;
    # restarts come back on the port the first one bound.
    assert all(s.stopped for s in unit.built[:-1])
    assert {s.port for s in unit.built} == {4443}
