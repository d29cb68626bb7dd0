"""The `tune` command's flags, apart from the command so that `pd-autoscaler --help` does not
import Optuna (the controller image has no `sim` extra)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

# Default reversal budget: 2 per hour of training windows (a reversal is a role's change opposite
# to its previous one within 10 min; the default policy makes a few a day, keda-queue's flapping
# tens an hour).
REVERSALS_PER_HOUR = 2.0


def add_arguments(p: argparse.ArgumentParser, positive: Any) -> None:
    p.add_argument("--trace", type=Path, required=True, help="trace file (as backtest)")
    p.add_argument("--policy", type=Path, required=True, help="the policy file to tune")
    p.add_argument("--out", type=Path, required=True, help="tuned policy YAML to write")
    p.add_argument("--plot", type=Path, default=None, help="trials PNG (default: --out with .png)")
    p.add_argument("--profile", default=None, help="simulator profile name or YAML file")
    p.add_argument(
        "--target-attainment",
        type=float,
        default=None,
        help="SLO attainment the tuned policy must reach on training (0.99)",
    )
    p.add_argument(
        "--max-reversals",
        type=int,
        default=None,
        help=f"scale reversals allowed on the training windows "
        f"(default {REVERSALS_PER_HOUR:g} per hour of them)",
    )
    p.add_argument(
        "--objective",
        choices=("target", "pareto"),
        default="target",
        help="target: fewest GPU-h at the target attainment; pareto: a policy dominating the "
        "input (attainment >=, GPU-h <= its own), highest capped attainment then fewest GPU-h",
    )
    p.add_argument("--trials", type=int, default=40, help="completed trials in the study")
    p.add_argument("--jobs", type=int, default=1, help="worker processes on this machine")
    p.add_argument(
        "--storage",
        default=None,
        help="Optuna RDB URL (postgresql://user@host/db) shared by workers on "
        "several machines; a study there resumes",
    )
    p.add_argument(
        "--study",
        default=None,
        help="study name (default: derived from trace, policy, folds, target)",
    )
    p.add_argument(
        "--folds",
        type=int,
        default=2,
        help="time windows; even ones train, odd ones are held out (2)",
    )
    p.add_argument("--seed", type=int, default=0, help="sampler seed")
    p.add_argument("--no-yardsticks", action="store_true", help="skip best-static")
    p.add_argument(
        "--hindsight",
        action="store_true",
        help="also the hindsight schedule on the held-out windows (slower)",
    )
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (terminal, one process) or per-trial lines")
    p.add_argument("--tick-s", type=positive, default=15.0, help="controller tick interval")
    p.add_argument("--scrape-s", type=positive, default=5.0, help="metric scrape interval")
    p.add_argument(
        "--warmup-s",
        type=float,
        default=None,
        help="judge each window from this second on, the trials and the fixed fleets alike "
        "(default 0; one cold start plus one rate window, 180 s on the built-in profiles, "
        "leaves out each window's start at min_replicas)",
    )
    p.add_argument("--ttft-floor-s", type=positive, default=None, help="SLO TTFT floor (0.5)")
    p.add_argument(
        "--ttft-slowdown", type=positive, default=None, help="SLO TTFT x idle prefill (3.0)"
    )
    p.add_argument("--itl-mean-s", type=positive, default=None, help="SLO mean ITL (0.05)")
