"""metrics/validate.py: every malformed instant-query body is named, every impossible value is
judged, and PrometheusSource turns pods with such values into partial data (issue 17)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoscaler.metrics import queries, samples, validate
from autoscaler.metrics.prometheus import PrometheusSource
from autoscaler.metrics.settings import PrometheusSettings


def ok(result: Any, rtype: str = "vector") -> dict[str, Any]:
    return {"status": "success", "data": {"resultType": rtype, "result": result}}


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (None, "body is null"),
        ([], "body is a list"),
        ("text", "body is a string"),
        ({"status": "success"}, "data is null"),
        ({"status": "success", "data": None}, "data is null"),
        ({"status": "success", "data": []}, "data is a list"),
        (ok("oops"), "result is a string"),
        (ok(3.5), "result is a float"),
        (ok(None), "result is null"),
        (ok([1, "1"], rtype="scalar"), "resultType is 'scalar'"),
        ({"status": "error", "errorType": "bad_data", "error": "parse"}, "Prometheus error"),
        ({"status": 7}, "status is 7"),
    ],
)
def test_malformed_envelope_is_named(body: Any, words: str) -> None:
    with pytest.raises(validate.MalformedResponse, match=words):
        validate.parse_vector(body)


@pytest.mark.parametrize(
    ("row", "words"),
    [
        ({"metric": {"pod": "a"}}, "value is not a \\[time, value\\] pair"),
        ({"metric": {"pod": "a"}, "value": [1, "abc"]}, "not a number"),
        ({"metric": {"pod": "a"}, "value": [1, None]}, "value is null"),
        ({"metric": {"pod": "a"}, "value": [1, True]}, "a boolean"),
        ({"metric": {"pod": "a"}, "value": [1, {"x": 1}]}, "an object"),
        ({"metric": {"pod": "a"}, "value": [1]}, "pair"),
        ({"metric": {"pod": 3}, "value": [1, "1"]}, "map of strings"),
        ({"value": [1, "1"]}, "map of strings"),
        ("row", "a string"),
    ],
)
def test_malformed_row_is_dropped_with_reason(row: Any, words: str) -> None:
    good = {"metric": {"pod": "b"}, "value": [1, "2"]}
    vec = validate.parse_vector(ok([row, good]))
    assert [r.labels["pod"] for r in vec.rows] == ["b"]
    assert len(vec.dropped) == 1
    assert vec.dropped[0].startswith("row 0:")
    assert re.search(words, vec.dropped[0]), vec.dropped[0]


def test_prometheus_value_strings_parse() -> None:
    rows = [{"metric": {"pod": str(i)}, "value": [1, v]} for i, v in enumerate(
        ["NaN", "+Inf", "-Inf", "1e308", "-1", "0.5", 2])]
    vec = validate.parse_vector(ok(rows))
    assert len(vec.rows) == 7
    assert [validate.value_problem(r.value) for r in vec.rows] == [
        "nan", "nan", "nan", "absurd", "negative", None, None,
    ]
    assert validate.value_problem(-5.0, part="age") is None


def _src() -> PrometheusSource:
    return PrometheusSource(PrometheusSettings(url="http://127.0.0.1:1"))


def _rows(*values: float) -> list[tuple[dict[str, str], float]]:
    return [({"pod": f"p{i}", queries.PART_LABEL: "value"}, v) for i, v in enumerate(values)]


@pytest.mark.parametrize(("bad", "reason"), [(-3.0, "negative"), (1e308, "absurd"),
                                              (float("nan"), "nan")])
def test_pod_with_impossible_value_is_left_out(bad: float, reason: str) -> None:
    """A counter reset mid-rate (negative) or one pod at 1e308: the pod is left out, so the
    role reports 3 of 4 replicas (partial: it may push up, never down)."""
    src = _src()
    sample, reasons = samples.per_pod(queries.Kind.GAUGE, _rows(5, 5, 5, bad), scale=1.0, pod_label=src.settings.pod_label,
                                      max_sample_age_s=src.settings.max_sample_age_s)
    assert sample.replicas == 3
    assert sample.value == 5
    assert reasons == (reason,)
    assert f"{reason}: p3" in sample.detail
    src.close()


def test_all_pods_impossible_is_missing() -> None:
    src = _src()
    sample, reasons = samples.per_pod(queries.Kind.SUM, _rows(-1, -2), scale=1.0, pod_label=src.settings.pod_label,
                                      max_sample_age_s=src.settings.max_sample_age_s)
    assert sample.missing
    assert reasons == ("negative",)
    src.close()


def test_non_numeric_age_counts_as_stale() -> None:
    src = _src()
    rows = [*_rows(5, 5), ({"pod": "p1", queries.PART_LABEL: "age"}, float("nan"))]
    sample, reasons = samples.per_pod(queries.Kind.GAUGE, rows, scale=1.0, pod_label=src.settings.pod_label,
                                      max_sample_age_s=src.settings.max_sample_age_s)
    assert sample.replicas == 1
    assert reasons == ("stale",)
    src.close()


@pytest.mark.parametrize(("parts", "missing"), [
    ({"value": -0.5, "rate": 1.0, "replicas": 2.0}, True),
    ({"value": 1e308, "rate": 1.0, "replicas": 2.0}, True),
    ({"value": 0.5, "rate": -1.0, "replicas": 2.0}, True),
    ({"value": 0.5, "rate": 1.0, "replicas": 1e308}, True),
    ({"value": 0.5, "rate": 1.0, "replicas": 2.0}, False),
])
def test_quantile_parts_judged(parts: dict[str, float], missing: bool) -> None:
    rows = [({queries.PART_LABEL: k}, v) for k, v in parts.items()]
    sample, _ = samples.quantile(rows)
    assert sample.missing is missing


_EDGE = [0.0, -0.0, 1.0, 5.5, validate.MAX_VALUE, -1.0, 1.5e9, float("nan"), float("inf"),
         -float("inf"), 1e-300]
_AGE = [None, 0.0, -3.0, 30.0, 59.999, 60.0, 60.001, -1.5e9, float("nan"), float("inf")]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_EDGE), st.sampled_from(_AGE)), max_size=5),
       st.sampled_from([queries.Kind.GAUGE, queries.Kind.SUM]))
def test_per_pod_keeps_exactly_the_fresh_possible_pods(
    pods: list[tuple[float, float | None]], kind: queries.Kind
) -> None:
    """Whichever path `per_pod` takes (the all-good shortcut or the one that names reasons), a
    pod counts exactly when its value has no `value_problem` and its age (0 when absent) is a
    number no older than `max_sample_age_s`; the value is their mean (sum for rates)."""
    rows: list[tuple[dict[str, str], float]] = []
    for i, (v, age) in enumerate(pods):
        rows.append(({"pod": f"p{i}"}, v))
        if age is not None:
            rows.append(({"pod": f"p{i}", queries.PART_LABEL: "age"}, age))
    sample, reasons = samples.per_pod(kind, rows, scale=2.0, pod_label="pod",
                                      max_sample_age_s=60.0)
    good = [v for v, age in pods
            if validate.value_problem(v) is None
            and validate.value_problem(age or 0.0, part="age") is None and (age or 0.0) <= 60.0]
    assert sample.replicas == len(good)
    if not good:
        assert sample.value is None
        assert reasons
    else:
        total = sum(good) if kind is queries.Kind.SUM else sum(good) / len(good)
        assert sample.value == pytest.approx(total / 2.0)
        assert bool(reasons) == (len(good) < len(pods))


@pytest.mark.parametrize(
    ("labels", "kept"),
    [
        ({"pd_deployment": "a-prefill", "pod": "x"}, True),
        ({"pd_deployment": "b-decode", "pod": "y"}, False),  # another role's, or replica's
        ({"pd_pool": "p", "pd_role": "decode"}, True),  # no such label: a selector role's row
    ],
)
def test_only_skips_rows_of_deployments_not_asked_for(labels: dict[str, str], kept: bool) -> None:
    body = ok([{"metric": labels, "value": [1.0, "2.5"]},
               {"metric": {"pd_deployment": "a-prefill"}, "value": [1.0, None]},
               {"metric": {"pd_deployment": "c"}, "value": [1.0, None]},
               {"metric": {"pd_deployment": ["a-prefill"]}, "value": [1.0, "1"]}])
    vec = validate.parse_vector(body, only=("pd_deployment", frozenset({"a-prefill"})))
    assert [r.labels for r in vec.rows] == ([labels] if kept else [])
    # A malformed row of a Deployment asked for is named; one of a Deployment not asked for
    # is not read at all; a label that is no string is judged (and named) as before.
    assert len(vec.dropped) == 2
    assert vec.dropped[0].startswith("row 1: value is null")
    assert vec.dropped[1].startswith("row 3: metric is not a map of strings")
