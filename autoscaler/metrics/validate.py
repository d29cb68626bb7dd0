"""Judging what Prometheus sent before anything is computed from it.

Prometheus (or whatever answers on its port: a proxy, a misconfigured ingress, a buggy remote
storage) can send a well-formed HTTP 200 whose body is not an instant-query vector, or a vector
whose values no vLLM pod can report. Neither may crash a tick or drive a scale-down, so:

- `parse_vector` checks the envelope (`{"status": "success", "data": {"resultType": "vector",
  "result": [...]}}`) and raises `MalformedResponse` naming what is wrong; the caller reports the
  query as failed (missing data for every role it covers). Each row must be
  `{"metric": {str: str}, "value": [time, "number"]}`; a row that is not is dropped (the pod it
  belonged to is then absent, which the core reads as partial data: it may push up, never down)
  and named in `Vector.dropped`.
- `value_problem` judges one number: non-finite (`nan`), below zero where the quantity cannot be
  (`negative`: a counter reset inside rate(), an exporter bug), or beyond any physical value
  (`absurd`: 1e308 from one pod would make a need infinite). A pod whose value has a problem is
  left out of its role, as NaN pods always were.

No I/O here: the transport (metrics/http.py) hands over the decoded JSON.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Largest value any per-pod or per-role series of ours can take. The biggest legitimate figures
# are token rates: a pod generating 1e6 tokens/s would be ~100x today's fastest GPU; queue and
# running counts are bounded by memory far below this; fractions and seconds are tiny. A value
# above it is a broken exporter or a hostile answer, not load. It also keeps every need the core
# derives from one sample far from float overflow (1e9 x 1e9 replicas is still finite).
MAX_VALUE = 1e9

# Parts of a query result that may legitimately be negative: a sample's age is computed from the
# exporter's timestamp and goes negative when the exporter's clock runs ahead of Prometheus'.
SIGNED_PARTS = frozenset({"age"})

_STR_ONLY = frozenset({str})

# How much of a broken body is quoted in a log line or an error.
_QUOTE = 120


class MalformedResponse(ValueError):
    """The body is not a Prometheus instant-query vector; the message says what it is instead."""


@dataclass(frozen=True, slots=True)
class Row:
    labels: Mapping[str, str]
    value: float


@dataclass(frozen=True, slots=True)
class Vector:
    """The usable rows of an instant-query answer, and why any others were dropped."""

    rows: tuple[Row, ...]
    dropped: tuple[str, ...] = ()


def _quote(obj: Any) -> str:
    text = repr(obj)
    return text if len(text) <= _QUOTE else text[:_QUOTE] + "..."


def _kind(obj: Any) -> str:
    if obj is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(obj), f"a {type(obj).__name__}"
    )


def parse_matrix(body: Any) -> list[Any]:
    """The rows of a decoded `/api/v1/query_range` answer, each still to be judged by the
    caller (`samples.range_points` drops malformed rows and points); raises MalformedResponse
    for a body that is not a range matrix (or an error answer)."""
    return _result(body, "matrix")


def parse_vector(body: Any, *, only: tuple[str, frozenset[str]] | None = None) -> Vector:
    """The rows of a decoded `/api/v1/query` answer; raises MalformedResponse for a body that
    is not an instant vector (or an error answer, quoting Prometheus' own error text).

    `only=(label, values)`: a row whose `label` is a string outside `values` is skipped unread
    (neither judged nor reported): a query selecting by namespace answers for every pod there,
    and the caller needs only the Deployments it asked about. A row without the label, or with
    a label value that is no string, is judged as usual."""
    rows: list[Row] = []
    label, values = only if only is not None else ("", frozenset[str]())
    dropped: list[str] = []
    for i, raw in enumerate(_result(body, "vector")):
        # The shape Prometheus sends, checked inline: a tick parses tens of thousands of rows
        # at 1,000 pools (issue 16). Anything else takes `_row`, which says what is wrong.
        if type(raw) is dict:
            metric = raw.get("metric")
            if only is not None and type(metric) is dict:
                # First, so that a replica of a sharded controller spends next to nothing on
                # the other replicas' pods (most of its answers).
                mine = metric.get(label)
                if type(mine) is str and mine not in values:
                    continue
            pair = raw.get("value")
            if (
                type(metric) is dict
                and type(pair) is list
                and len(pair) == 2
                and type(pair[1]) is str
                and {*map(type, metric), *map(type, metric.values())} <= _STR_ONLY
            ):
                try:
                    rows.append(Row(metric, float(pair[1])))
                    continue
                except ValueError:
                    pass
        row, why = _row(raw)
        if row is None:
            dropped.append(f"row {i}: {why}")
        elif only is None or label not in row.labels or row.labels[label] in values:
            rows.append(row)
    return Vector(rows=tuple(rows), dropped=tuple(dropped))


def _result(body: Any, rtype: str) -> list[Any]:
    if not isinstance(body, dict):
        msg = f"body is {_kind(body)}, not a JSON object"
        raise MalformedResponse(msg)
    status = body.get("status")
    if status == "error":
        msg = f"Prometheus error {body.get('errorType')!s:.40}: {body.get('error')!s:.200}"
        raise MalformedResponse(msg)
    if status != "success":
        msg = f"status is {_quote(status)}, not 'success'"
        raise MalformedResponse(msg)
    data = body.get("data")
    if not isinstance(data, dict):
        msg = f"data is {_kind(data)}, not an object"
        raise MalformedResponse(msg)
    if data.get("resultType") != rtype:
        msg = f"resultType is {_quote(data.get('resultType'))}, not {rtype!r}"
        raise MalformedResponse(msg)
    result = data.get("result")
    if not isinstance(result, list):
        msg = f"result is {_kind(result)}, not a list"
        raise MalformedResponse(msg)
    return result


def _row(raw: Any) -> tuple[Row | None, str]:
    if not isinstance(raw, dict):
        return None, f"is {_kind(raw)}, not an object"
    metric = raw.get("metric")
    # Set-of-types in C rather than a generator per label: a tick parses tens of thousands of
    # rows at 1,000 pools (issue 16). A str subclass cannot come out of json.loads.
    if not isinstance(metric, dict) or not (
        {*map(type, metric), *map(type, metric.values())} <= _STR_ONLY
    ):
        return None, f"metric is not a map of strings: {_quote(metric)}"
    pair = raw.get("value")
    if not isinstance(pair, list) or len(pair) != 2:
        return None, f"value is not a [time, value] pair: {_quote(pair)}"
    text = pair[1]
    # Prometheus sends sample values as strings ("NaN", "+Inf" included); a bare JSON number is
    # accepted too (some remote-storage fronts send them), a bool or null is not.
    if isinstance(text, bool) or not isinstance(text, str | int | float):
        return None, f"value is {_kind(text)}, not a number: {_quote(text)}"
    try:
        value = float(text)
    except ValueError:
        return None, f"value is not a number: {_quote(text)}"
    return Row(labels=metric, value=value), ""


def value_problem(value: float, *, part: str = "") -> str | None:
    """Why `value` cannot be a sample of series part `part` (None: it can)."""
    if not math.isfinite(value):
        return "nan"
    if value < 0 and part not in SIGNED_PARTS:
        return "negative"
    if abs(value) > MAX_VALUE:
        return "absurd"
    return None
