"""Property-based fuzz (issue 17) of what crosses the boundary from untrusted hands:

- Prometheus instant-query bodies of any JSON shape, and well-formed vectors with arbitrary
  rows and values, through the source's decoding and per-role combination and on into the
  decision core: nothing raises but `QueryFailed`, every sample is missing or a finite,
  non-negative number, and the core's decision stays within the role's bounds and never lowers
  the replicas on partial data;
- policy documents: arbitrary text, and the shipped policy with numeric fields replaced by
  extreme values, keys duplicated or nested deeper: `parse_policy` either returns a policy whose
  numbers are all in range, or raises `ConfigError`; never anything else.

Counts of bodies and documents fuzzed go into the fault-suite summary.
"""

from __future__ import annotations

import collections
import json
import math
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoscaler import errors
from autoscaler import spec as config
from autoscaler.decision import signals
from autoscaler.metrics import http, queries, validate
from autoscaler.metrics.prometheus import PrometheusSource, _Outcome
from autoscaler.metrics.settings import PrometheusSettings
from autoscaler.policy.load import parse_policy
from autoscaler.spec import PolicyFile
from autoscaler.testing import Ticker
from autoscaler.types import Role, RoleObservation, SignalSample

pytestmark = pytest.mark.faults

EXAMPLES = 400
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

A = Role.AGGREGATED

numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([0, -0.0, 1e308, -1e308, 5e-324, 1e-308, 1e9, 1e9 + 1, 0.9999999999999999]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=12))
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.sampled_from(["status", "data", "resultType", "result", "metric", "value",
                             "pod", "pd_part", "x"]),
            inner,
            max_size=4,
        ),
    ),
    max_leaves=20,
)
value_text = st.one_of(
    numbers.map(str),
    st.sampled_from(["NaN", "+Inf", "-Inf", "1e308", "-1", "abc", ""]),
    scalars,
)
pod_rows = st.lists(
    st.fixed_dictionaries(
        {
            "metric": st.one_of(
                st.fixed_dictionaries({
                    "pod": st.sampled_from(["p0", "p1", "p2", "p3"]),
                    queries.POOL_LABEL: st.just("p"),
                    queries.ROLE_LABEL: st.just("aggregated"),
                    queries.PART_LABEL: st.sampled_from(
                        ["value", "age", "rate", "replicas", "other"]
                    ),
                }),
                json_values,
            ),
            "value": st.one_of(st.tuples(st.floats(), value_text).map(list), json_values),
        },
    ),
    max_size=10,
)
vector_bodies = pod_rows.map(
    lambda rows: {"status": "success", "data": {"resultType": "vector", "result": rows}}
)


def _source() -> PrometheusSource:
    return PrometheusSource(PrometheusSettings(url="http://127.0.0.1:1"))


SRC = _source()
TICKER_POLICY = PolicyFile.model_validate({"pools": [{"name": "p", "roles": {"aggregated": {
    "deployment": {"name": "d"}, "min_replicas": 1, "max_replicas": 50,
    "signals": [{"signal": "queue_depth", "target": 5}, {"signal": "kv_cache", "target": 0.8},
                {"signal": "ttft", "target": 1.0}],
    "behavior": {"scale_down": {"stabilization_window_s": 0}},
}}}]})


def _check_sample(value: float | None) -> None:
    if value is not None:
        assert math.isfinite(value)
        assert value >= 0


@FUZZ
@given(body=st.one_of(json_values, vector_bodies), status=st.sampled_from([200, 200, 400, 503]))
def test_any_body_is_a_vector_or_a_query_failure(
    body: Any, status: int, counts: collections.Counter[str]
) -> None:
    counts["prometheus bodies fuzzed"] += 1
    raw = json.dumps(body).encode()
    failed: http.QueryFailed | None = None
    try:
        vector = http._decode(raw, status, validate.parse_vector)
    except http.QueryFailed as exc:
        failed = exc
    if failed is not None:
        assert failed.reason in ("malformed", "error")
        return
    assert status == 200
    for row in vector.rows:
        assert isinstance(row.value, float)
    q = [queries.Query(key=k, kind=kind, promql="", roles=(("p", "aggregated"),))
         for k, kind in (("queue_depth", queries.Kind.GAUGE), ("kv_cache", queries.Kind.MEAN),
                         ("request_rate", queries.Kind.SUM), ("ttft_p90", queries.Kind.QUANTILE))]
    samples = {}
    for query in q:
        out = SRC._interpret(query, _Outcome(rows=vector.rows), scale={})
        sample = out[("p", "aggregated")]
        _check_sample(sample.value)
        samples[query.key] = sample
    # And the decision core on it: within bounds, never lower on what the source produced
    # from a body with any dropped or impossible row.
    ready = 4
    rd = Ticker(TICKER_POLICY).tick(
        0, aggregated=RoleObservation(replicas=ready, ready=ready, signals=samples)
    )[A]
    assert 1 <= rd.desired <= 50
    partial = any(s.replicas < ready for s in samples.values() if not s.missing)
    if vector.dropped or partial or any(s.missing for s in samples.values()):
        assert rd.desired >= ready, (rd, samples)


@FUZZ
@given(value=value_text)
def test_value_problem_accepts_only_sane_numbers(value: Any) -> None:
    body = {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"pod": "a"}, "value": [0, value]}]}}
    vector = validate.parse_vector(body)  # the envelope is valid: never raises
    for row in vector.rows:
        if validate.value_problem(row.value) is None:
            assert 0 <= row.value <= validate.MAX_VALUE


# --- policy documents -----------------------------------------------------------------------

BASE: dict[str, Any] = {
    "gpu_budget": 64,
    "pools": [{
        "name": "p",
        "gpu_budget": 32,
        "roles": {
            "prefill": {
                "deployment": {"name": "p-prefill"},
                "min_replicas": 1, "max_replicas": 8, "gpus_per_replica": 1,
                "max_num_batched_tokens": 8192, "cold_start_s": 120,
                "signals": [{"signal": "queue_depth", "target": 5, "tolerance": 0.1},
                            {"signal": "ttft", "target": 1.0, "quantile": 0.9}],
                "behavior": {
                    "tolerance": 0.1, "stock_max_step": 2.0, "stock_settle_s": 60,
                    "scale_up": {"stabilization_window_s": 0,
                                 "rules": [{"type": "pods", "value": 4, "period_s": 15}]},
                    "scale_down": {"stabilization_window_s": 300,
                                   "rules": [{"type": "percent", "value": 100, "period_s": 15}]},
                    "panic": {"threshold": 2.0, "window_s": 60},
                },
                "missing_data": {"floor_after_s": 300, "floor_replicas": 2},
                "policies": [{"kind": "forecast", "capacity_per_replica": 24000,
                              "horizon_s": 300}],
            },
            "decode": {
                "deployment": {"name": "p-decode"},
                "min_replicas": 1, "max_replicas": 8,
                "signals": [{"signal": "kv_cache", "target": 0.8}],
            },
        },
    }],
}


def _numeric_paths(doc: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _numeric_paths(v, (*path, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _numeric_paths(v, (*path, i))
    elif isinstance(doc, int | float) and not isinstance(doc, bool):
        out.append(path)
    return out


PATHS = _numeric_paths(BASE)


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> None:
    for p in path[:-1]:
        doc = doc[p]
    doc[path[-1]] = value


def _parse(text: str) -> PolicyFile | None:
    problems: tuple[str, ...] = ()
    try:
        return parse_policy(text, source="fuzz.yaml")
    except errors.ConfigError as exc:
        problems = exc.problems
    assert problems
    assert all(p.startswith("fuzz.yaml: ") for p in problems), problems
    return None


def _in_range(policy: PolicyFile) -> None:
    for pool in policy.pools:
        for spec in pool.roles.values():
            assert 0 <= spec.min_replicas <= spec.max_replicas <= config.MAX_REPLICAS
            assert 0 <= spec.behavior.tolerance <= config.MAX_TOLERANCE
            for s in spec.signals:
                assert config.MIN_TARGET <= s.target <= config.MAX_TARGET
            for d in (spec.behavior.scale_up, spec.behavior.scale_down):
                assert all(0 < r.value <= config.MAX_RULE_VALUE for r in d.rules)


@FUZZ
@given(edits=st.lists(st.tuples(st.sampled_from(PATHS), st.one_of(numbers, scalars)),
                      min_size=1, max_size=4))
def test_policy_with_extreme_numbers_is_bounded_or_refused(
    edits: list[tuple[tuple[Any, ...], Any]], counts: collections.Counter[str]
) -> None:
    counts["policy documents fuzzed"] += 1
    doc = json.loads(json.dumps(BASE))
    for path, value in edits:
        _set(doc, path, value)
    # JSON is YAML; json.dumps spells inf/nan as Infinity/NaN, which YAML reads as strings.
    policy = _parse(json.dumps(doc))
    if policy is None:
        return
    _in_range(policy)
    # A policy that validated drives the core without an exception on a hostile observation.
    t = Ticker(policy)
    big = {"queue_depth": 1e300, "kv_cache": 1e9, "ttft_p90": 1e9}
    obs = RoleObservation(replicas=3, ready=3, signals={
        k: SignalSample(value=v, replicas=3) for k, v in big.items()
    })
    t.tick(0, pool="p", prefill=obs, decode=obs)


@FUZZ
@given(text=st.one_of(
    st.text(max_size=300),
    st.builds(yaml.safe_dump, json_values),
    st.builds(lambda n, s: "pools:\n" + "".join(f"{' ' * (i + 1)}- \n" for i in range(n)) + s,
              st.integers(0, 80), st.text(max_size=20)),
    st.builds(lambda k: yaml.safe_dump(BASE) + f"{k}: 1\n{k}: 2\n",
              st.sampled_from(["dry_run", "gpu_budget", "kind", "x"])),
))
def test_any_text_parses_or_is_a_config_error(
    text: str, counts: collections.Counter[str]
) -> None:
    counts["policy documents fuzzed"] += 1
    policy = _parse(text)
    if policy is not None:
        _in_range(policy)


def test_max_want_is_an_int_float_can_hold() -> None:
    assert float(signals.MAX_WANT) == signals.MAX_WANT
