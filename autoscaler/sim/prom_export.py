"""Measurements from a Prometheus range export of a running vLLM deployment.

`pd-autoscaler profile fit|check --prom-export FILE` reads the JSON that Prometheus'
`/api/v1/query_range` returns (`{"status": "success", "data": {"resultType": "matrix",
"result": [...]}}`), or a JSON list of such bodies, for the raw vLLM counter families below
(docs/simulator.md shows the query). The time range is cut into windows of `window_s`; in each,
the counters' increases over every pod give one measurement, replayed as an experiment:

- requests: the increase of `vllm:request_success_total` (all finish reasons); the arrival rate
  is requests / window (Poisson, as an open-loop client sends them);
- lengths: the mean prompt and output length of the requests that finished in the window, from
  the `vllm:request_prompt_tokens` and `vllm:request_generation_tokens` histograms (`_sum` /
  `_count` increases; both observed when a request finishes, so they describe the same
  requests). Where an export lacks them: the increases of `vllm:prompt_tokens_total` and
  `vllm:generation_tokens_total` per finished request, which count tokens as they are computed
  and are off by the requests in flight at the window's edges. Each replayed request gets the
  window's mean lengths: the export has no per-request lengths;
- replicas: the pods that reported `vllm:request_success_total` in the window;
- points: mean TTFT, mean end-to-end latency (histogram `_sum` / `_count` increases) and mean
  inter-token latency (`vllm:inter_token_latency_seconds`, or the older
  `vllm:time_per_output_token_seconds`), each a mean over what vLLM observed in the window.
  These are the server's view: they start at the engine's arrival stamp, after the HTTP front
  end, so the replay leaves the profile's `frontend_ms` out of them (and a fit on exports alone
  cannot determine `frontend_ms`: fit it from `vllm bench serve` files).

The deployment must be aggregated (every pod serves whole requests): P/D pods split a request's
latency between two pods, which these families do not tie together. Counter resets (a pod
restart) are handled as PromQL's `increase` does. A window with fewer than `min_requests`
requests is skipped: its means are noise.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoscaler import errors
from autoscaler.sim.fidelity import Experiment

SUCCESS = "vllm:request_success_total"
PROMPT = "vllm:prompt_tokens_total"
GENERATION = "vllm:generation_tokens_total"
HISTOGRAMS = {
    "mean_ttft_ms": ("vllm:time_to_first_token_seconds",),
    "mean_e2e_ms": ("vllm:e2e_request_latency_seconds",),
    # vLLM 0.10+ names it inter_token_latency; older versions time_per_output_token (same data).
    "mean_itl_ms": ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
}
LENGTHS = ("vllm:request_prompt_tokens", "vllm:request_generation_tokens")
"""Per-request length histograms (vLLM V1), preferred to the token counters when present."""
QUERY = (
    '{__name__=~"vllm:(request_success_total|prompt_tokens_total|generation_tokens_total|'
    "(time_to_first_token_seconds|e2e_request_latency_seconds|inter_token_latency_seconds|"
    'time_per_output_token_seconds|request_prompt_tokens|request_generation_tokens)_(sum|count))"}'
)
"""The PromQL selector whose range export this module reads (add a namespace or pod matcher
to pick your deployment)."""

DEFAULT_WINDOW_S = 300.0
DEFAULT_MIN_REQUESTS = 50
POD_LABELS = ("pod", "instance")
"""The label that names a pod: Kubernetes service discovery's `pod`, else the scrape target."""


@dataclass(frozen=True, slots=True)
class _Series:
    name: str
    pod: str
    t: list[float]
    v: list[float]


def _fail(path: Path, where: str, problem: str) -> errors.ConfigError:
    return errors.ConfigError([f"{path}: {where}: {problem}"])


def _bodies(raw: Any, path: Path) -> list[dict[str, Any]]:
    bodies = raw if isinstance(raw, list) else [raw]
    for i, b in enumerate(bodies):
        where = f"[{i}]" if isinstance(raw, list) else "(top level)"
        if not isinstance(b, dict) or b.get("status") != "success":
            status = b.get("status") if isinstance(b, dict) else type(b).__name__
            raise _fail(path, where, f"expected a query_range reply with status success, got "
                        f"{status!r}")  # fmt: skip
        data = b.get("data")
        if not isinstance(data, dict) or data.get("resultType") != "matrix":
            got = data.get("resultType") if isinstance(data, dict) else data
            raise _fail(path, f"{where}.data.resultType", f"expected matrix (a range query), "
                        f"got {got!r}")  # fmt: skip
        if not isinstance(data.get("result"), list):
            raise _fail(path, f"{where}.data.result", "expected a list of series")
    return bodies


def read_json(path: Path) -> Any:
    """A measurement file's JSON; a ConfigError naming the file when it cannot be read or
    parsed (shared with the `vllm bench serve` reader)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise errors.ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    except json.JSONDecodeError as exc:
        raise errors.ConfigError([f"{path}: not JSON: {exc}"]) from exc


def read_series(path: str | Path) -> list[_Series]:
    """Every series of the export, with its metric name and pod."""
    p = Path(path)
    raw = read_json(p)
    out: list[_Series] = []
    for i, body in enumerate(_bodies(raw, p)):
        for j, s in enumerate(body["data"]["result"]):
            where = f"[{i}].data.result[{j}]" if isinstance(raw, list) else f"data.result[{j}]"
            metric = s.get("metric") if isinstance(s, dict) else None
            values = s.get("values") if isinstance(s, dict) else None
            if not isinstance(metric, dict) or not isinstance(values, list):
                raise _fail(p, where, "expected {metric: {...}, values: [[t, v], ...]}")
            name = metric.get("__name__")
            if not isinstance(name, str):
                raise _fail(p, f"{where}.metric.__name__", "missing: export the raw series "
                            "(a selector, not an expression that drops the name)")  # fmt: skip
            pod = next((str(metric[k]) for k in POD_LABELS if k in metric), "")
            ts, vs = [], []
            for k, pair in enumerate(values):
                try:
                    t, v = float(pair[0]), float(pair[1])
                except (TypeError, ValueError, IndexError):
                    raise _fail(p, f"{where}.values[{k}]", f"expected [time, value], got "
                                f"{pair!r}") from None  # fmt: skip
                if math.isfinite(v):
                    ts.append(t)
                    vs.append(v)
            out.append(_Series(name, pod, ts, vs))
    return out


def _increase(s: _Series, lo: float, hi: float) -> float | None:
    """The counter's increase over its samples in [lo, hi] (a drop is a reset: the new value is
    what was counted since), None with fewer than two samples."""
    pts = [(t, v) for t, v in zip(s.t, s.v, strict=True) if lo <= t <= hi]
    if len(pts) < 2:
        return None
    total = 0.0
    for (_, a), (_, b) in itertools.pairwise(pts):
        total += b - a if b >= a else b
    return total


def experiments_from_export(
    path: str | Path,
    *,
    profile: str,
    window_s: float = DEFAULT_WINDOW_S,
    min_requests: int = DEFAULT_MIN_REQUESTS,
) -> list[Experiment]:
    """One experiment per window of the export with at least `min_requests` requests."""
    p = Path(path)
    if not window_s > 0:
        raise errors.ConfigError([f"--window-s must be > 0, got {window_s}"])
    series = read_series(p)
    by_name: dict[str, list[_Series]] = defaultdict(list)
    for s in series:
        by_name[s.name].append(s)
    missing = [n for n in (SUCCESS, PROMPT, GENERATION) if n not in by_name]
    if missing:
        raise _fail(p, "series", f"no {', '.join(missing)} in the export (query: {QUERY})")
    times = [t for s in series for t in s.t]
    if not times:
        raise _fail(p, "series", "no samples")
    start, end = min(times), max(times)
    n_windows = int((end - start) // window_s)
    if n_windows < 1:
        raise _fail(p, "series", f"the export spans {end - start:.0f} s, less than one "
                    f"--window-s of {window_s:g} s")  # fmt: skip

    def total(name: str, lo: float, hi: float) -> tuple[float, set[str]]:
        acc, pods = 0.0, set()
        for s in by_name.get(name, []):
            inc = _increase(s, lo, hi)
            if inc is not None:
                acc += inc
                pods.add(s.pod)
        return acc, pods

    out: list[Experiment] = []
    for w in range(n_windows):
        lo, hi = start + w * window_s, start + (w + 1) * window_s
        requests, pods = total(SUCCESS, lo, hi)
        if requests < min_requests:
            continue
        lengths = []
        for hist, counter in zip(LENGTHS, (PROMPT, GENERATION), strict=True):
            h_sum, _ = total(f"{hist}_sum", lo, hi)
            h_count, _ = total(f"{hist}_count", lo, hi)
            if h_count > 0:
                lengths.append(h_sum / h_count)
            else:
                lengths.append(total(counter, lo, hi)[0] / requests)
        prompt_len, gen_len = lengths
        points: dict[str, float] = {}
        for key, families in HISTOGRAMS.items():
            for fam in families:
                s_sum, _ = total(f"{fam}_sum", lo, hi)
                s_count, _ = total(f"{fam}_count", lo, hi)
                if s_count > 0:
                    points[key] = 1000.0 * s_sum / s_count
                    break
        if not points:
            continue
        rate = requests / window_s
        out.append(
            Experiment(
                id=f"{p.stem}@{lo - start:.0f}s",
                source=str(p),
                profile=profile,
                model="unspecified",
                gpu="unspecified",
                tp=1,
                vllm_version="unspecified",
                rate=rate,
                num_prompts=max(1, round(requests)),
                input_len=max(1, round(prompt_len)),
                output_len=max(1, round(gen_len)),
                dataset=None,
                replicas=max(1, len(pods)),
                split="fit",
                points=points,
                note=f"window [{lo:.0f}, {hi:.0f}] of a Prometheus range export",
                vantage="server",
            )
        )
    if not out:
        raise _fail(p, "series", f"no window of {window_s:g} s has {min_requests} finished "
                    "requests and a latency histogram")  # fmt: skip
    return out
