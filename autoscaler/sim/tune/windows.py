"""Cross-validation windows: a trace cut into equal time windows, alternately training and
held-out.

Alternating (0, 2, 4... train; 1, 3, 5... held out) rather than "first part train, last part
test" so that with several windows both sets see the same times of day; with two windows it is
first half / second half. Each window is replayed on its own from t = 0 (its arrivals rebased),
the fleet starting at min_replicas like any backtest: a window's result does not depend on what
the policy did in the window before, so trials are independent replays that can run anywhere.
With `--warmup-s W` each window, in the trials and the fixed-fleet yardsticks alike, is judged
from W on (`ReplayConfig.warmup_s`), so its start at min_replicas is not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from autoscaler import errors
from autoscaler.sim.traces import Trace

# Shorter windows are mostly the cold start: a 90 s start is 15 % of ten minutes.
MIN_WINDOW_S = 600.0


@dataclass(frozen=True, slots=True)
class Window:
    index: int
    start_s: float
    end_s: float
    trace: Trace  # arrivals rebased to start at 0

    @property
    def label(self) -> str:
        return f"#{self.index} [{self.start_s / 60:.0f}, {self.end_s / 60:.0f}) min"


@dataclass(frozen=True, slots=True)
class Split:
    window_s: float
    train: tuple[Window, ...]
    held_out: tuple[Window, ...]


def split(trace: Trace, folds: int, *, source: str = "--trace") -> Split:
    """`folds` equal windows over [0, last arrival]; even-numbered ones train, odd ones are held
    out. ConfigError when a window would be shorter than MIN_WINDOW_S or one is empty."""
    if folds < 2:
        raise errors.ConfigError([f"--folds {folds}: needs at least 2 (training and held-out)"])
    span = trace.duration_s
    width = span / folds
    if width < MIN_WINDOW_S:
        raise errors.ConfigError(
            [
                f"{source}: {span / 60:.1f} min of arrivals in {folds} windows is "
                f"{width / 60:.1f} min each; each needs at least {MIN_WINDOW_S / 60:.0f} min "
                "(use fewer --folds or a longer trace)"
            ]
        )
    out: list[Window] = []
    for k in range(folds):
        lo, hi = k * width, (k + 1) * width
        last = k == folds - 1
        mask = (trace.arrival_s >= lo) & (
            (trace.arrival_s <= hi) if last else (trace.arrival_s < hi)
        )
        part = trace.take(mask)
        if len(part.arrival_s) == 0:
            raise errors.ConfigError([f"{source}: window {k} [{lo:.0f}, {hi:.0f}) s is empty"])
        rebased = Trace(
            part.arrival_s - lo,
            part.prompt_tokens,
            part.output_tokens,
            part.block_hashes,
            part.block_tokens,
        )
        out.append(Window(k, lo, hi, rebased))
    return Split(width, tuple(out[0::2]), tuple(out[1::2]))


def joined(windows: tuple[Window, ...], width_s: float) -> Trace:
    """The windows back to back (window j at [j x width, (j+1) x width)): one trace for a fixed
    fleet, which has no state to carry across a window boundary (the yardsticks)."""
    parts = [w.trace for w in windows]
    t = np.concatenate([p.arrival_s + j * width_s for j, p in enumerate(parts)])
    hashes = None
    if all(p.block_hashes is not None for p in parts):
        hashes = [h for p in parts for h in (p.block_hashes or [])]
    return Trace(
        t,
        np.concatenate([p.prompt_tokens for p in parts]),
        np.concatenate([p.output_tokens for p in parts]),
        hashes,
        parts[0].block_tokens,
    )
