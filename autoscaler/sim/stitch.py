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
- `--bursts TRACE` keeps a bursty trace's short-term structure instead of Poisson arrivals
  around the envelope: the trace's arrivals are counted in `--burst-window-s` windows (10 s,
  the scale of the bursts the traces README reports), divided by their mean, and that
  multiplier m(t) (mean 1, cycled over the stitched span from `--burst-offset-s` into the
  trace) multiplies the envelope: rate(t) = envelope(t) x m(t). The daily shape and the request
  count stay the envelope's; inside a window arrivals are Poisson. `--peak-rps` is the
  envelope's peak; short windows then reach peak x max(m) (12.7 for the Azure code trace).

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


class BurstPattern:
    """A bursty trace's short-term rate multiplier m(t): arrivals per window over their mean,
    cycled, starting `offset_s` into the trace."""

    def __init__(self, arrival_s: FloatArray, *, window_s: float, offset_s: float = 0.0) -> None:
        if window_s <= 0:
            raise errors.ConfigError([f"--burst-window-s must be > 0 (got {window_s})"])
        if len(arrival_s) < 2:
            raise errors.ConfigError(["--bursts: the trace needs at least 2 requests"])
        t = np.asarray(arrival_s, dtype=np.float64) - float(np.min(arrival_s))
        n = max(1, math.ceil((float(t.max()) + 1e-9) / window_s))
        counts = np.bincount(np.minimum((t // window_s).astype(np.int64), n - 1), minlength=n)
        self.m: FloatArray = counts / counts.mean()
        self.window_s = window_s
        self.offset = round(offset_s / window_s) % n

    @property
    def max(self) -> float:
        return float(self.m.max())

    def at(self, t: FloatArray) -> FloatArray:
        i = ((t // self.window_s).astype(np.int64) + self.offset) % len(self.m)
        out: FloatArray = self.m[i]
        return out


def arrivals(
    env: Envelope, rng: np.random.Generator, bursts: BurstPattern | None = None
) -> FloatArray:
    """Non-homogeneous Poisson arrival times by thinning, sorted (rate x m(t) with bursts)."""
    out = []
    lam = env.peak * (bursts.max if bursts is not None else 1.0)
    t0 = 0.0
    while t0 < env.duration_s:
        t1 = min(t0 + _CHUNK_S, env.duration_s)
        n = int(rng.poisson(lam * (t1 - t0)))
        t = np.sort(rng.uniform(t0, t1, n))
        rate = env.rate(t)
        if bursts is not None:
            rate = rate * bursts.at(t)
        keep = rng.uniform(0.0, lam, n) < rate
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
    bursts: Path | None = None,
    burst_window_s: float = 10.0,
    burst_offset_s: float = 0.0,
) -> tuple[FloatArray, IntArray, IntArray, Envelope]:
    """Arrival times and (prompt, output) lengths; also the scaled envelope used. With `bursts`
    (a trace file of any format `load_trace` reads) the arrivals keep its short-term structure
    (see the module docstring)."""
    if days <= 0:
        raise errors.ConfigError([f"--days must be > 0 (got {days})"])
    if peak_rps <= 0:
        raise errors.ConfigError([f"--peak-rps must be > 0 (got {peak_rps})"])
    starts, rates = read_envelope(envelope, model)
    prompt, output = read_tokens(tokens)
    env = Envelope(starts, rates, days=days, peak=peak_rps)
    pattern = None
    if bursts is not None:
        from autoscaler.sim.traces import load_trace  # noqa: PLC0415 - only with --bursts

        pattern = BurstPattern(
            load_trace(bursts).arrival_s, window_s=burst_window_s, offset_s=burst_offset_s
        )
    rng = np.random.default_rng(seed)
    t = arrivals(env, rng, pattern)
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
        bursts=getattr(args, "bursts", None),
        burst_window_s=float(getattr(args, "burst_window_s", 10.0)),
        burst_offset_s=float(getattr(args, "burst_offset_s", 0.0)),
    )
    write_csv(Path(args.out), t, prompt, output)
    print(
        f"{args.out}: {len(t)} requests over {env.duration_s / DAY_S:g} d "
        f"(expected {env.expected_requests():.0f}), peak {env.peak:g} req/s, "
        f"mean {len(t) / env.duration_s:.3g} req/s, seed {args.seed}",
        file=sys.stderr,
    )
    return 0
