"""Search spaces and windows (fast, no replay)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autoscaler import errors
from autoscaler.policy import registry
from autoscaler.policy.load import load_policy_file
from autoscaler.sim.traces import Trace
from autoscaler.sim.tune import space
from autoscaler.sim.tune.windows import joined, split
from autoscaler.yamlsafe import load_yaml

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "policies"


def _doc(name: str) -> dict:  # type: ignore[type-arg]
    p = POLICIES / name
    return load_yaml(p.read_text(), source=str(p))  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("policy", "must_have", "unsearched"),
    [
        # Reactive signals: every target, behaviour and floor of both roles.
        ("llama-8b-disagg.yaml",
         {"prefill.prompt_tokens_rate1.target", "decode.kv_cache0.target", "prefill.tolerance",
          "decode.min_replicas", "prefill.scale_down.window_s", "prefill.scale_up.window_s"},
         []),
        # The slo kind: its margins, never the SLO contract itself.
        ("llama-8b-slo.yaml",
         {"prefill.slo0.attainment", "prefill.slo0.burst_halflife_s", "decode.slo0.trend_window_s",
          "prefill.min_replicas"},
         []),
        # A kind without a space is named, its role's behaviour still searched.
        ("llama-8b-forecast.yaml", {"prefill.tolerance"}, None),
    ],
)  # fmt: skip
def test_each_kind_declares_its_space(
    policy: str, must_have: set[str], unsearched: list[str] | None
) -> None:
    params, missing = space.search_space(load_policy_file(POLICIES / policy))
    names = {p.name for p in params}
    assert must_have <= names
    assert not any("ttft_floor" in n or "itl_mean" in n for n in names)
    if unsearched is not None:
        assert missing == unsearched
    else:
        assert any("forecast" in m for m in missing)


@pytest.mark.parametrize("policy", ["llama-8b-disagg.yaml", "llama-8b-slo.yaml"])
def test_defaults_reproduce_the_policy(policy: str) -> None:
    """The first trial (every parameter at its default) is the user's policy exactly."""
    original = load_policy_file(POLICIES / policy)
    params, _ = space.search_space(original)
    for p in params:
        assert p.low <= p.default <= p.high, p
    doc = space.materialise(_doc(policy), original)
    doc = space.apply(doc, params, {p.name: p.default for p in params})
    again = space.validate(doc, source="t")
    # Equal as the controller sees them: the same specs, the same validated kind configs (a
    # default written out explicitly is the same setting).
    for pool_a, pool_b in zip(again.pools, original.pools, strict=True):
        for role, spec in pool_b.roles.items():
            got = pool_a.roles[role]
            assert got.model_copy(update={"policies": ()}) == spec.model_copy(
                update={"policies": ()}
            )
            assert [registry.validate_ref(r, where="x") for r in got.policies] == [
                registry.validate_ref(r, where="x") for r in spec.policies
            ]


def test_apply_writes_values_and_rejects_invalid() -> None:
    original = load_policy_file(POLICIES / "llama-8b-disagg.yaml")
    params, _ = space.search_space(original)
    doc = space.apply(_doc("llama-8b-disagg.yaml"), params,
                      {"prefill.prompt_tokens_rate1.target": 31234.567, "decode.min_replicas": 3})  # fmt: skip
    tuned = space.validate(doc, source="t")
    prefill = tuned.pools[0].roles[next(iter(tuned.pools[0].roles))]
    assert prefill.signals[1].target == 31230.0  # 4 significant digits
    assert [r.min_replicas for r in tuned.pools[0].roles.values()] == [1, 3]
    bad = space.apply(_doc("llama-8b-disagg.yaml"), params, {"decode.min_replicas": 99})
    with pytest.raises(errors.ConfigError, match="min_replicas"):
        space.validate(bad, source="t")


def _trace(n: int, span_s: float) -> Trace:
    t = np.linspace(0.0, span_s, n)
    return Trace(t, np.full(n, 100, dtype=np.int64), np.full(n, 10, dtype=np.int64))


def test_windows_alternate_and_rebase() -> None:
    s = split(_trace(4001, 4000.0), 4)
    assert [w.index for w in s.train] == [0, 2]
    assert [w.index for w in s.held_out] == [1, 3]
    assert s.window_s == 1000.0
    for w in (*s.train, *s.held_out):
        assert w.trace.arrival_s[0] >= 0.0
        assert w.trace.arrival_s[-1] <= 1000.0
    # Every request is in exactly one window.
    assert sum(len(w.trace.arrival_s) for w in (*s.train, *s.held_out)) == 4001
    j = joined(s.train, s.window_s)
    assert len(j.arrival_s) == sum(len(w.trace.arrival_s) for w in s.train)
    assert np.all(np.diff(j.arrival_s) >= 0)


@pytest.mark.parametrize(
    ("folds", "span", "match"),
    [(1, 4000.0, "at least 2"), (4, 1800.0, "at least 10 min")],
)
def test_windows_bad_input_is_named(folds: int, span: float, match: str) -> None:
    with pytest.raises(errors.ConfigError, match=match):
        split(_trace(100, span), folds)


def test_fleet_seeds_put_the_floors_at_the_fixed_fleet() -> None:
    """The best fixed fleet as two trials: floors at its counts (the range widened to 6, within
    the ceiling of 8), once with the policy's targets and once with every target at its top."""
    from autoscaler.sim.tune.main import fleet_seeds  # noqa: PLC0415
    from autoscaler.types import Role  # noqa: PLC0415

    policy = load_policy_file(POLICIES / "llama-8b-disagg.yaml")
    params, _ = space.search_space(policy)
    ceiling = policy.pools[0].roles[Role.PREFILL].max_replicas
    widened, seeds = fleet_seeds(params, policy, {Role.PREFILL: 6, Role.DECODE: 2})
    by = {p.name: p for p in widened}
    assert by["prefill.min_replicas"].high == min(6, ceiling) >= 6
    at_floor, targets_high = seeds
    assert at_floor["prefill.min_replicas"] == 6
    assert at_floor["decode.min_replicas"] == 2
    targets = [p for p in widened if p.name.endswith(".target")]
    assert targets
    assert all(at_floor[p.name] == p.clamp(p.default) for p in targets)
    assert all(targets_high[p.name] == p.high for p in targets)
    assert targets_high["prefill.min_replicas"] == 6
    # Every seed is a valid policy.
    doc = space.materialise(_doc("llama-8b-disagg.yaml"), policy)
    for seed in seeds:
        space.validate(space.apply(doc, widened, seed), source="seed")


def test_relative_ttft_target_stays_a_slowdown() -> None:
    """A ttft_relative target is searched above 1 (a slowdown of 1 or less is unmeetable and
    invalid), where other targets span a third to three times the policy's."""
    doc = _doc("llama-8b-disagg.yaml")
    sigs = doc["pools"][0]["roles"]["prefill"]["signals"]
    sigs[-1] = {"signal": "ttft_relative", "quantile": 0.9, "target": 2.0, "floor_s": 0.75}
    params, _ = space.search_space(space.validate(doc, source="t"))
    rel = next(p for p in params if "ttft_relative" in p.name)
    assert (rel.low, rel.default, rel.high) == (pytest.approx(1.1), 2.0, pytest.approx(6.0))
    low = space.validate(space.apply(doc, params, {rel.name: rel.low}), source="t")
    assert [s.target for r in low.pools[0].roles.values() for s in r.signals][2] == pytest.approx(
        1.1
    )
