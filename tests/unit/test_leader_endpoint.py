"""The leader EndpointSlice publisher (controller/endpoint.py) on synthetic time, against a
stand-in for the EndpointSlice API that keeps a resourceVersion and refuses a stale write with
409, as the API server does. The same against the real control plane, two replicas and the
overlay's RBAC, is tests/e2e/test_leader_faults_e2e.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio.client.rest import ApiException

from autoscaler.controller import backoff
from autoscaler.controller.endpoint import TASK, LeaderEndpoint
from tests.unit.fakes import FakeDiscovery, ep

ME = "10.0.0.7"
OTHER = "10.0.0.9"
REASSERT_S = 1000.0  # a value no retry delay reaches: the fake time tells them apart


@dataclass
class FakeTime:
    """The publisher's sleeps on synthetic time: retry delays pass at once (and are recorded);
    a re-assertion sleep lasts until leadership flips or the test calls `reassert()`."""

    delays: list[float] = field(default_factory=list)
    idle: bool = False
    _period: asyncio.Event = field(default_factory=asyncio.Event)

    async def sleep(self, seconds: float, *, wake: asyncio.Event | None = None) -> None:
        if seconds < REASSERT_S:
            self.delays.append(seconds)
            await asyncio.sleep(0)
            return
        self.idle = True
        waits = [asyncio.ensure_future(self._period.wait())]
        if wake is not None:
            waits.append(asyncio.ensure_future(wake.wait()))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
            self.idle = False
            self._period.clear()

    def reassert(self) -> None:
        self._period.set()


@dataclass
class Case:
    start: list[dict[str, Any]]
    leader: list[bool]
    """Wanted states, each applied after the previous one settled."""
    want: list[str]
    """The slice's addresses at the end."""
    writes: int
    reads_fail: list[BaseException] = field(default_factory=list)
    patches_fail: list[BaseException] = field(default_factory=list)
    interleaved: list[list[dict[str, Any]]] = field(default_factory=list)
    delays: list[float] = field(default_factory=list)
    reported: list[str | None] = field(default_factory=list)
    api_errors: list[tuple[str, int | str]] = field(default_factory=list)
    address_type: str = "IPv4"


CASES = {
    "a new leader takes the empty slice of a fresh install":
        Case(start=[], leader=[True], want=[ME], writes=1),
    "a new leader overwrites a crashed leader's address":
        Case(start=[ep(OTHER, pod="old")], leader=[True], want=[ME], writes=1),
    "a leader already in the slice writes nothing":
        Case(start=[ep(ME)], leader=[True], want=[ME], writes=0),
    "a standby removes its own address left by a previous run of its Pod":
        Case(start=[ep(ME)], leader=[False], want=[], writes=1),
    "a standby leaves the leader's address alone":
        Case(start=[ep(OTHER)], leader=[False], want=[OTHER], writes=0),
    "losing the lead clears the slice":
        Case(start=[], leader=[True, False], want=[], writes=2),
    "a deposed leader does not erase the new leader's address (compare-and-swap)":
        Case(start=[ep(ME)], leader=[False], interleaved=[[ep(OTHER)]], want=[OTHER],
             writes=0, api_errors=[("patch_endpointslice", 409)]),
    "a new leader that loses a race re-reads and still wins":
        Case(start=[], leader=[True], interleaved=[[ep(OTHER)]], want=[ME], writes=1,
             api_errors=[("patch_endpointslice", 409)]),
    "a dropped PATCH is retried after one backoff delay":
        Case(start=[], leader=[True], patches_fail=[aiohttp.ServerDisconnectedError()],
             want=[ME], writes=1, delays=[1.0],
             api_errors=[("patch_endpointslice", "ServerDisconnectedError")]),
    "an API server down for four reads: reported after three, recovered after":
        Case(start=[], leader=[True], reads_fail=[ApiException(status=503)] * 4, want=[ME],
             writes=1, delays=[1.0, 2.0, 4.0, 8.0], reported=["HTTP 503", "HTTP 503", None],
             api_errors=[("read_endpointslice", 503)] * 4),
    "a timeout and a 500 on the write side, then success":
        Case(start=[ep(OTHER)], leader=[True],
             patches_fail=[TimeoutError(), ApiException(status=500)], want=[ME], writes=1,
             delays=[1.0, 2.0], api_errors=[("patch_endpointslice", "TimeoutError"),
                                            ("patch_endpointslice", 500)]),
}


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
async def test_leader_endpoint_scenarios(case: Case, monkeypatch: pytest.MonkeyPatch) -> None:
    t = FakeTime()
    monkeypatch.setattr(backoff, "sleep", t.sleep)
    api = FakeDiscovery(list(case.start), address_type=case.address_type)
    api.read_errors = list(case.reads_fail)
    api.patch_errors = list(case.patches_fail)
    api.interleaved = list(case.interleaved)
    reports: list[tuple[str, str | None]] = []
    errors_: list[tuple[str, int | str]] = []
    pub = LeaderEndpoint(api, name="leader", namespace="ns", address=ME,  # type: ignore[arg-type]
                         pod_name="me", timeout_s=1, reassert_s=REASSERT_S,
                         on_api_error=lambda op, code: errors_.append((op, code)))
    pub.start(report=lambda name, why: reports.append((name, why)))
    try:
        for want in case.leader:
            pub.set(leader=want)
            await _settled(t, pub, want)
        assert api.addresses() == case.want
        assert len(api.writes) == case.writes
        assert t.delays == case.delays
        assert [n for n, _ in reports] == [TASK] * len(case.reported)
        for (_, got), want_why in zip(reports, case.reported, strict=True):
            assert (got is None) if want_why is None else (want_why in str(got))
        assert errors_ == case.api_errors
        if case.want == [ME] and case.writes:
            # For people reading the slice: which Pod leads.
            assert api.endpoints[0]["targetRef"] == {"kind": "Pod", "name": "me",
                                                     "namespace": "ns"}
    finally:
        await pub.stop(relinquish=False)


async def _settled(t: FakeTime, pub: LeaderEndpoint, want: bool) -> None:
    """Until the publisher converged on `want` and waits for the next re-assertion."""
    async with asyncio.timeout(5):
        while not (t.idle and pub.want == want and not pub._changed.is_set()):  # noqa: ASYNC110
            await asyncio.sleep(0)


async def test_the_leader_re_asserts_a_reset_slice(monkeypatch: pytest.MonkeyPatch) -> None:
    """`kubectl apply` of the manifest resets the slice to `endpoints: []`: the leader puts
    its address back at its next re-assertion, and a check of an intact slice writes nothing."""
    t = FakeTime()
    monkeypatch.setattr(backoff, "sleep", t.sleep)
    api = FakeDiscovery([])
    pub = LeaderEndpoint(api, name="leader", namespace="ns", address=ME,  # type: ignore[arg-type]
                         timeout_s=1, reassert_s=REASSERT_S)
    pub.start()
    try:
        pub.set(leader=True)
        await _settled(t, pub, True)
        t.reassert()
        await _until_rv(api, lambda rv: rv == 2, t, pub)
        assert len(api.writes) == 1  # intact: re-read, no write
        api.endpoints, api.rv = [], api.rv + 1  # the manifest re-applied
        t.reassert()
        await _until_rv(api, lambda rv: rv == 4, t, pub)
        assert api.addresses() == [ME]
        assert len(api.writes) == 2
    finally:
        await pub.stop()
    assert api.addresses() == []  # relinquished on a clean stop


async def _until_rv(api: FakeDiscovery, cond: Callable[[int], bool], t: FakeTime,
                    pub: LeaderEndpoint) -> None:
    async with asyncio.timeout(5):
        while not cond(api.rv) or not t.idle:  # noqa: ASYNC110
            await asyncio.sleep(0)


async def test_a_wrong_address_family_is_reported_by_name(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An IPv6 slice and an IPv4 POD_IP can never converge: /readyz says which field to fix."""
    t = FakeTime()
    monkeypatch.setattr(backoff, "sleep", t.sleep)
    api = FakeDiscovery([], address_type="IPv6")
    reports: list[tuple[str, str | None]] = []
    pub = LeaderEndpoint(api, name="leader", namespace="ns", address=ME,  # type: ignore[arg-type]
                         timeout_s=1, reassert_s=REASSERT_S)
    pub.start(report=lambda name, why: reports.append((name, why)))
    pub.set(leader=True)
    try:
        async with asyncio.timeout(5):
            while not reports:  # noqa: ASYNC110
                await asyncio.sleep(0)
    finally:
        await pub.stop(relinquish=False)
    (name, why), *_ = reports
    assert name == TASK
    assert "addressType IPv6" in str(why)
    assert f"POD_IP {ME} is IPv4" in str(why)
    assert api.writes == []


async def test_a_fenced_leader_does_not_take_the_slice_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Renewals hang: the Lease is not held, the elector has not yet stopped this leader, and
    a new leader wrote its address. Our re-assertion must not write ours over it; once the
    Lease is ours again, it does."""
    t = FakeTime()
    monkeypatch.setattr(backoff, "sleep", t.sleep)
    api = FakeDiscovery([ep(OTHER)])
    held = [False]
    pub = LeaderEndpoint(api, name="leader", namespace="ns", address=ME,  # type: ignore[arg-type]
                         timeout_s=1, reassert_s=REASSERT_S, fence=lambda: held[0])
    pub.start()
    try:
        pub.set(leader=True)
        await _settled(t, pub, True)
        for _ in range(2):  # two re-assertions, each a read and no write
            reads = api.reads
            t.reassert()
            async with asyncio.timeout(5):
                while api.reads == reads or not t.idle:  # noqa: ASYNC110
                    await asyncio.sleep(0)
        assert (api.addresses(), api.writes) == ([OTHER], [])
        held[0] = True
        t.reassert()
        await _until_rv(api, lambda rv: rv == 2, t, pub)
        assert api.addresses() == [ME]
    finally:
        await pub.stop(relinquish=False)


def test_pod_ip_must_be_an_address() -> None:
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 address"):
        LeaderEndpoint(FakeDiscovery([]), name="x", namespace="ns",  # type: ignore[arg-type]
                       address="pod-a", timeout_s=1)
