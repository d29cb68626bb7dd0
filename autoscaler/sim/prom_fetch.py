"""Fetch a Prometheus range export for `profile fit|check --prometheus URL`.

The same data `--prom-export FILE` reads (prom_export.QUERY over a time range), fetched from a
running Prometheus with prometheus-api-client and written to a file first, so a fit can be
re-run and reviewed without the server.

Why prometheus-api-client here and not in the controller: this is one short, offline query
(the selector is a few hundred bytes whatever the fleet), so its habit of sending PromQL as URL
parameters is harmless, and a synchronous client is what a CLI wants. The controller's
per-tick queries grow with the fleet and need the POST body and asyncio (metrics/http.py).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from pathlib import Path
from typing import Any

from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from requests import RequestException

from autoscaler import errors
from autoscaler.sim import prom_export

MAX_POINTS = 10_000
"""Points per series per request: Prometheus refuses a range query above 11,000 (its
`exceeded maximum resolution` error), so longer ranges are fetched in pieces."""

_MATCHERS = re.compile(r'^\{?\s*(?:[a-zA-Z_][a-zA-Z0-9_]*\s*(?:=|!=|=~|!~)\s*"(?:[^"\\]|\\.)*"'
                       r'\s*,?\s*)*\}?$')  # fmt: skip


def selector(match: str) -> str:
    """prom_export.QUERY with the user's label matchers added (`namespace="llm"` or
    `{namespace="llm", pod=~"vllm-.*"}`); raises ConfigError on anything that is not a list
    of label matchers (a PromQL expression would drop the metric names the reader needs)."""
    inner = match.strip()
    if not _MATCHERS.match(inner):
        raise errors.ConfigError([f"--match: expected label matchers such as "
                                  f'namespace="llm", got {match!r}'])  # fmt: skip
    inner = inner.removeprefix("{").removesuffix("}").strip().rstrip(",").strip()
    return prom_export.QUERY if not inner else f"{prom_export.QUERY[:-1]}, {inner}}}"


def windows(start: float, end: float, step_s: float) -> list[tuple[float, float]]:
    """[start, end] cut into pieces of at most MAX_POINTS points that share their edges (a
    counter's increase needs the sample at each edge on both sides)."""
    if not (math.isfinite(start) and math.isfinite(end) and end > start):
        raise errors.ConfigError([f"--prometheus: the range must end after it starts, got "
                                  f"start {start} and end {end}"])  # fmt: skip
    span = step_s * (MAX_POINTS - 1)
    out: list[tuple[float, float]] = []
    lo = start
    while lo < end:
        hi = min(end, lo + span)
        out.append((lo, hi))
        lo = hi
    return out


def fetch_export(
    url: str,
    out: Path,
    *,
    start: float,
    end: float,
    step_s: float = 15.0,
    match: str = "",
    bearer_token_file: Path | None = None,
    timeout_s: float = 60.0,
) -> Path:
    """Query `url` for the export's series over [start, end] (unix seconds) and write the
    replies (a JSON list of query_range bodies, as `--prom-export` reads) to `out`."""
    if not step_s > 0:
        raise errors.ConfigError([f"--step-s must be > 0, got {step_s}"])
    query = selector(match)
    headers: dict[str, str] = {}
    if bearer_token_file is not None:
        try:
            token = bearer_token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise errors.ConfigError(
                [f"{bearer_token_file}: cannot read the bearer token: {exc.strerror or exc}"]
            ) from exc
        headers["Authorization"] = f"Bearer {token}"
    client = PrometheusConnect(url=url, headers=headers or None, timeout=int(timeout_s))
    bodies: list[dict[str, Any]] = []
    for lo, hi in windows(start, end, step_s):
        try:
            result = client.custom_query_range(
                query,
                start_time=dt.datetime.fromtimestamp(lo, tz=dt.UTC),
                end_time=dt.datetime.fromtimestamp(hi, tz=dt.UTC),
                step=f"{step_s:g}s",
            )
        except (PrometheusApiClientException, RequestException) as exc:
            raise errors.ConfigError(
                [f"--prometheus {url}: the range query failed: {str(exc)[:300]}"]
            ) from exc
        bodies.append({"status": "success", "data": {"resultType": "matrix", "result": result}})
    if not any(b["data"]["result"] for b in bodies):
        raise errors.ConfigError([f"--prometheus {url}: no series match {query} between "
                                  f"{start:.0f} and {end:.0f}"])  # fmt: skip
    try:
        out.write_text(json.dumps(bodies), encoding="utf-8")
    except OSError as exc:
        raise errors.ConfigError(
            [f"{out}: cannot write the export: {exc.strerror or exc}"]
        ) from exc
    return out
