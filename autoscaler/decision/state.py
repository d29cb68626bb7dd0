"""What the decision core remembers between ticks, as plain serialisable data.

The state is replaced each tick, never mutated, and round-trips through JSON so the controller
can persist it (an annotation or a ConfigMap) and a restarted controller does not scale down a
pool it scaled up a minute ago.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from autoscaler.types import Role

STATE_VERSION = 1


@dataclass(frozen=True, slots=True)
class RoleState:
    """One role's memory.

    recommendations: (time, raw recommendation) pairs, newest last, kept as long as the longest
        stabilization window (the HPA's approach).
    events: (time, replica change) of applied scales, kept as long as the longest rate-limit
        period.
    Both are in time order (the decision core appends; `from_dict` sorts what it restores), so
    the core finds a window's start by bisection.
    panic_until: the role is in panic mode until this time (None: not in panic).
    missing_since: since when every signal of the role has been missing (None: data present).
    last_replicas / last_desired / last_at: the replicas observed and decided at the last tick.
    last_ready / ready_rose_at: ready replicas at the last tick, and when they last rose.

    Scale events are recorded when a change is *observed* (the next tick sees other replicas),
    not when one is decided: in shadow mode, or when an HPA/KEDA is the actuator, or when a
    write fails, nothing changed, and counting the unapplied decision against the rate limits
    would clip (and oscillate) the following decisions. A change that matches our last decision
    is dated at that decision; any other change (a person's `kubectl scale`) at the tick that
    sees it.
    """

    recommendations: tuple[tuple[float, int], ...] = ()
    events: tuple[tuple[float, int], ...] = ()
    panic_until: float | None = None
    missing_since: float | None = None
    last_replicas: int | None = None
    last_desired: int | None = None
    last_at: float | None = None
    last_ready: int | None = None
    ready_rose_at: float | None = None

    def clamped(self, now: float, *, panic_window_s: float) -> RoleState:
        """This memory with nothing dated after `now` (and panic ending within one panic window).

        A timestamp from the future comes from a clock that ran ahead: the leader that saved
        the state had a skewed wall clock, or a restore was edited by hand. Kept as is, a
        recommendation dated an hour ahead stays inside every stabilization window for that
        hour plus the window, and delays scale-down far beyond it (4,185 s instead of 600 s
        was measured). Clamped to `now` it counts as seen now: held for one window, no more."""

        def c(t: float | None) -> float | None:
            return None if t is None else min(t, now)

        horizon = now + panic_window_s
        panic = self.panic_until
        # max() of (time, value) pairs is the latest time's pair, in C: this runs for every
        # role every tick (2,000 at 1,000 pools), and the pairs need not be in order.
        if (
            max(self.recommendations, default=(now,))[0] <= now
            and max(self.events, default=(now,))[0] <= now
            and all(t is None or t <= now for t in (self.missing_since, self.last_at,
                                                    self.ready_rose_at))
            and (panic is None or panic <= horizon)
        ):
            return self
        return RoleState(
            recommendations=tuple((min(t, now), r) for t, r in self.recommendations),
            events=tuple((min(t, now), d) for t, d in self.events),
            panic_until=None if panic is None else min(panic, horizon),
            missing_since=c(self.missing_since),
            last_replicas=self.last_replicas,
            last_desired=self.last_desired,
            last_at=c(self.last_at),
            last_ready=self.last_ready,
            ready_rose_at=c(self.ready_rose_at),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "recommendations": [list(r) for r in self.recommendations],
            "events": [list(e) for e in self.events],
            "panic_until": self.panic_until,
            "missing_since": self.missing_since,
            "last_replicas": self.last_replicas,
            "last_desired": self.last_desired,
            "last_at": self.last_at,
            "last_ready": self.last_ready,
            "ready_rose_at": self.ready_rose_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RoleState:
        return cls(
            # Sorted: a state written by hand (or by a future version) may list them in any
            # order, and the core relies on time order (see the class doc).
            recommendations=tuple(
                sorted((float(t), int(r)) for t, r in data.get("recommendations", []))
            ),
            events=tuple(sorted((float(t), int(d)) for t, d in data.get("events", []))),
            panic_until=_opt_float(data.get("panic_until")),
            missing_since=_opt_float(data.get("missing_since")),
            last_replicas=_opt_int(data.get("last_replicas")),
            last_desired=_opt_int(data.get("last_desired")),
            last_at=_opt_float(data.get("last_at")),
            last_ready=_opt_int(data.get("last_ready")),
            ready_rose_at=_opt_float(data.get("ready_rose_at")),
        )


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


def _opt_int(v: Any) -> int | None:
    return None if v is None else int(v)


@dataclass(frozen=True, slots=True)
class ScaleState:
    """Every role's memory, keyed by pool name then role."""

    pools: Mapping[str, Mapping[Role, RoleState]] = field(default_factory=dict)

    def role(self, pool: str, role: Role) -> RoleState:
        return self.pools.get(pool, {}).get(role, RoleState())

    def to_json(self) -> str:
        body = {
            "version": STATE_VERSION,
            "pools": {
                pool: {r.value: s.to_dict() for r, s in roles.items()}
                for pool, roles in self.pools.items()
            },
        }
        return json.dumps(body, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ScaleState:
        """Parse persisted state; raises ValueError on anything malformed (callers start fresh).

        "Anything" includes what a hand edit or a bad restore produces besides bad JSON: `pools`
        a list, a role's state a list, `last_replicas: 1e999` (int() of infinity raises
        OverflowError), nesting too deep to decode. Each of those used to escape as another
        exception type past the caller's `except ValueError` and stop the leader's ticks."""
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
                msg = "unsupported state version"
                raise ValueError(msg)
            raw_pools = data.get("pools", {})
            if not isinstance(raw_pools, dict):
                msg = f"pools is a {type(raw_pools).__name__}, not an object"
                raise ValueError(msg)
            pools: dict[str, dict[Role, RoleState]] = {}
            for pool, roles in raw_pools.items():
                if not isinstance(roles, dict) or not all(isinstance(v, dict)
                                                          for v in roles.values()):
                    msg = f"pool {pool!r}: roles must map role names to objects"
                    raise ValueError(msg)
                pools[str(pool)] = {Role(r): RoleState.from_dict(s) for r, s in roles.items()}
        except (TypeError, KeyError, AttributeError, OverflowError, RecursionError) as exc:
            msg = f"malformed state: {type(exc).__name__}: {exc}"[:300]
            raise ValueError(msg) from exc
        return cls(pools=pools)

    def shifted(self, delta: float) -> ScaleState:
        """The same memory with every timestamp moved by `delta` seconds.

        Persisted state uses wall-clock time; the core runs on a monotonic clock. The controller
        converts on save/restore with this, so windows keep their meaning across a restart.
        """

        def mv(rs: RoleState) -> RoleState:
            return RoleState(
                recommendations=tuple((t + delta, r) for t, r in rs.recommendations),
                events=tuple((t + delta, d) for t, d in rs.events),
                panic_until=None if rs.panic_until is None else rs.panic_until + delta,
                missing_since=None if rs.missing_since is None else rs.missing_since + delta,
                last_replicas=rs.last_replicas,
                last_desired=rs.last_desired,
                last_at=None if rs.last_at is None else rs.last_at + delta,
                last_ready=rs.last_ready,
                ready_rose_at=None if rs.ready_rose_at is None else rs.ready_rose_at + delta,
            )

        return ScaleState(
            pools={p: {r: mv(s) for r, s in roles.items()} for p, roles in self.pools.items()}
        )
