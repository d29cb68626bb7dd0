"""`pd-autoscaler trace stitch`: a multi-day request trace from a rate envelope and real lengths.

One hour of Azure data cannot show a daily cycle; the ServeGen envelope (14 days of 10-minute
rates) has the cycle but no requests. Stitching takes the envelope's *shape* for one model,
scales it so its peak is `--peak-rps`, and draws arrivals from that rate as a non-homogeneous
Poisson process; each arrival gets a (prompt, output) length pair drawn jointly from the Azure
trace (jointly: long prompts and long answers are correlated).

- The envelope's 10-minute averages sit at window centres and are joined by a monotone cubic
  (Fritsch-Carlson PCHIP): smooth, and never above/below the neighbouring points, so no negative
  rates and no invented peaks. Before the first centre / after the last the rate is held.
- Arrivals by thinning (Lewis & Shedler): candidates at the peak rate, each kept with
  probability rate(t) / peak. All draws come from one seeded numpy Generator: same seed, same
  file.
- Longer than the envelope: whole days of it repeat (the span of every ServeGen model is a
  whole number of days).

Output: CSV `timestamp_s,input_tokens,output_tokens`, timestamps in seconds from 0.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt

from autoscaler import errors

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

ENVELOPE_COLUMNS = ("model", "timestamp", "rate")
TOKEN_COLUMNS = ("ContextTokens", "GeneratedTokens")
DAY_S = 86400.0
_CHUNK_S = 3600.0  # thin one hour at a time: bounded memory at any peak rate


def read_envelope(path: Path, model: str) -> tuple[FloatArray, FloatArray]:
    """(window start seconds, rate) of `model`, sorted by time; ConfigError on any problem."""
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            cols = reader.fieldnames or []
            missing = [c for c in ENVELOPE_COLUMNS if c not in cols]
            if missing:
                msg = f"{path}: missing column(s) {', '.join(missing)} (has: {', '.join(cols)})"
                raise errors.ConfigError([msg])
            rows: dict[str, list[tuple[float, float]]] = {}
            for i, row in enumerate(reader, start=2):
                try:
                    rows.setdefault(row["model"], []).append(
                        (float(row["timestamp"]), float(row["rate"]))
                    )
                except ValueError as exc:
                    raise errors.ConfigError([f"{path}: line {i}: {exc}"]) from exc
    except OSError as exc:
        raise errors.ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    if model not in rows:
        known = ", ".join(sorted(rows)) or "none"
        raise errors.ConfigError([f"{path}: unknown model {model!r}; models available: {known}"])
    pts = sorted(rows[model])
    t = np.array([p[0] for p in pts])
    r = np.array([p[1] for p in pts])
    if len(t) < 2 or not np.all(np.isfinite(r)) or (r < 0).any():
        msg = f"{path}: model {model!r} needs >= 2 finite, non-negative rate points"
        raise errors.ConfigError([msg])
    return t, r


def read_tokens(path: Path) -> tuple[IntArray, IntArray]:
    """(prompt tokens, output tokens) per request of an Azure-format trace."""
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            cols = reader.fieldnames or []
            missing = [c for c in TOKEN_COLUMNS if c not in cols]
            if missing:
                msg = f"{path}: missing column(s) {', '.join(missing)} (has: {', '.join(cols)})"
                raise errors.ConfigError([msg])
            pairs = []
            for i, row in enumerate(reader, start=2):
                try:
                    pairs.append((int(row["ContextTokens"]), int(row["GeneratedTokens"])))
                except ValueError as exc:
                    raise errors.ConfigError([f"{path}: line {i}: {exc}"]) from exc
    except OSError as exc:
        raise errors.ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    if not pairs:
        raise errors.ConfigError([f"{path}: no requests"])
    arr = np.array(pairs, dtype=np.int64)
    return arr[:, 0], arr[:, 1]


def _pchip_slopes(x: FloatArray, y: FloatArray) -> FloatArray:
    """Fritsch-Carlson monotone slopes (what scipy's PchipInterpolator computes)."""
    h = np.diff(x)
    delta = np.diff(y) / h
    d = np.zeros_like(y)
    same = delta[:-1] * delta[1:] > 0
    w1 = 2 * h[1:] + h[:-1]
    w2 = h[1:] + 2 * h[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        harm = (w1 + w2) / (w1 / delta[:-1] + w2 / delta[1:])
    d[1:-1] = np.where(same, harm, 0.0)
    d[0], d[-1] = delta[0], delta[-1]
    return d


class Envelope:
    """Smooth rate(t) through an envelope's window centres, scaled so max = peak."""

    def __init__(self, starts: FloatArray, rates: FloatArray, *, days: float, peak: float) -> None:
        width = float(np.median(np.diff(starts)))
        span = float(starts[-1] - starts[0] + width)
        self.duration_s = days * DAY_S
        reps = 1
        if self.duration_s > span:
            if abs(span / DAY_S - round(span / DAY_S)) > 1e-6:
                msg = f"envelope spans {span / DAY_S:.2f} d, not whole days: cannot repeat it"
                raise errors.ConfigError([msg])
            reps = math.ceil(self.duration_s / span)
        starts = np.concatenate([starts + i * span for i in range(reps)])
        rates = np.tile(rates, reps)
        self.x = starts - starts[0] + width / 2  # window centres, from t = 0
        self.y = rates.astype(np.float64)
        self.d = _pchip_slopes(self.x, self.y)
        inside = self.y[self.x <= self.duration_s + width]
        top = float(inside.max()) if len(inside) else float(self.y.max())
        if top <= 0:
            raise errors.ConfigError(["envelope is zero over the requested days"])
        self.scale = peak / top
        self.peak = peak

    def rate(self, t: FloatArray) -> FloatArray:
        """Requests/s at times t (seconds from 0)."""
        x, y, d = self.x, self.y, self.d
        tc = np.clip(t, x[0], x[-1])
        i = np.clip(np.searchsorted(x, tc, side="right") - 1, 0, len(x) - 2)
        h = x[i + 1] - x[i]
        s = (tc - x[i]) / h
        h00 = (1 + 2 * s) * (1 - s) ** 2
        h10 = s * (1 - s) ** 2
        h01 = s * s * (3 - 2 * s)
        h11 = s * s * (s - 1)
        v = h00 * y[i] + h10 * h * d[i] + h01 * y[i + 1] + h11 * h * d[i + 1]
        out: FloatArray = np.maximum(v, 0.0) * self.scale
        return out

    def expected_requests(self, step_s: float = 10.0) -> float:
        """Integral of rate over the duration (midpoint rule)."""
        t = np.arange(step_s / 2, self.duration_s, step_s)
        return float(self.rate(t).sum() * step_s)


def arrivals(env: Envelope, rng: np.random.Generator) -> FloatArray:
    """Non-homogeneous Poisson arrival times by thinning, sorted."""
    out = []
    lam = env.peak
    t0 = 0.0
    while t0 < env.duration_s:
        t1 = min(t0 + _CHUNK_S, env.duration_s)
        n = int(rng.poisson(lam * (t1 - t0)))
        t = np.sort(rng.uniform(t0, t1, n))
        keep = rng.uniform(0.0, lam, n) < env.rate(t)
        out.append(t[keep])
        t0 = t1
    return np.concatenate(out) if out else np.empty(0)


def stitch(
    *,
    envelope: Path,
    model: str,
    tokens: Path,
    days: float,
    peak_rps: float,
    seed: int = 0,
) -> tuple[FloatArray, IntArray, IntArray, Envelope]:
    """Arrival times and (prompt, output) lengths; also the scaled envelope used."""
    if days <= 0:
        raise errors.ConfigError([f"--days must be > 0 (got {days})"])
    if peak_rps <= 0:
        raise errors.ConfigError([f"--peak-rps must be > 0 (got {peak_rps})"])
    starts, rates = read_envelope(envelope, model)
    prompt, output = read_tokens(tokens)
    env = Envelope(starts, rates, days=days, peak=peak_rps)
    rng = np.random.default_rng(seed)
    t = arrivals(env, rng)
    pick = rng.integers(0, len(prompt), len(t))
    return t, prompt[pick], output[pick], env


def write_csv(path: Path, t: FloatArray, prompt: IntArray, output: IntArray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as fh:
        fh.write("timestamp_s,input_tokens,output_tokens\n")
        step = 200_000
        for i in range(0, len(t), step):
            lines = [
                f"{a:.3f},{b},{c}\n"
                for a, b, c in zip(
                    t[i : i + step].tolist(),
                    prompt[i : i + step].tolist(),
                    output[i : i + step].tolist(),
                    strict=True,
                )
            ]
            fh.writelines(lines)


def main(args: argparse.Namespace) -> int:
    t, prompt, output, env = stitch(
        envelope=Path(args.envelope),
        model=str(args.model),
        tokens=Path(args.tokens),
        days=float(args.days),
        peak_rps=float(args.peak_rps),
        seed=int(args.seed),
    )
    write_csv(Path(args.out), t, prompt, output)
    print(
        f"{args.out}: {len(t)} requests over {env.duration_s / DAY_S:g} d "
        f"(expected {env.expected_requests():.0f}), peak {env.peak:g} req/s, "
        f"mean {len(t) / env.duration_s:.3g} req/s, seed {args.seed}",
        file=sys.stderr,
    )
    return 0
