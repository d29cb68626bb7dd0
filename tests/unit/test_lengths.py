"""The prompt-length CV from vLLM's 1-2-5 bucket histogram (metrics/lengths.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from autoscaler.metrics.lengths import prompt_length_cv
from autoscaler.sim.vllm_metrics import DEFAULT_MAX_MODEL_LEN, buckets_1_2_5

BOUNDS = buckets_1_2_5(DEFAULT_MAX_MODEL_LEN)


def counts_of(x: np.ndarray) -> list[float]:
    """Non-cumulative counts as Prometheus' `le` buckets hold them (v <= bound), +Inf last."""
    idx = np.searchsorted(np.asarray(BOUNDS), x, side="left")
    return np.bincount(idx, minlength=len(BOUNDS) + 1).astype(float).tolist()


@pytest.mark.parametrize(
    ("cv", "low", "high"),
    [
        # Bounds on the read CV over the true one. A narrow mix reads wider (one bucket spans a
        # factor 2-2.5, so CV 0.3 reads about 0.5): it errs towards more replicas.
        (0.3, 0.9, 1.8),
        (1.0, 0.85, 1.25),
        (2.0, 0.85, 1.25),
    ],
)
def test_lognormal_mixes_are_read_within_a_bucket_width(cv: float, low: float, high: float) -> None:
    rng = np.random.default_rng(7)
    s = math.sqrt(math.log1p(cv * cv))
    x = np.clip(rng.lognormal(math.log(1500) - s * s / 2, s, 5000), 1, 120_000)
    true = float(x.std() / x.mean())
    got = prompt_length_cv(BOUNDS, counts_of(x), float(x.mean()))
    assert got is not None
    assert low * true <= got <= high * true


def test_one_length_reads_as_its_buckets_width_only() -> None:
    x = np.full(100, 1500.0)
    got = prompt_length_cv(BOUNDS, counts_of(x), 1500.0)
    assert got is not None
    assert got < 0.3


@pytest.mark.parametrize(
    ("counts", "mean"),
    [
        ([0.0] * (len(BOUNDS) + 1), 100.0),  # nothing finished
        ([1.0] * len(BOUNDS), 100.0),  # no +Inf slot: not this histogram's buckets
        ([1.0] * (len(BOUNDS) + 1), 0.0),
        ([1.0] * (len(BOUNDS) + 1), math.nan),
    ],
)
def test_no_estimate_without_observations_or_with_foreign_buckets(
    counts: list[float], mean: float
) -> None:
    assert prompt_length_cv(BOUNDS, counts, mean) is None
