"""The fidelity benchmark's data file and loader: every point cited and well-formed, bad entries
refused with file, entry and field named, workloads built as the sources describe them."""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from autoscaler import errors
from autoscaler.sim.fidelity import METRICS, Experiment, load_data, run_experiment, workload

pytestmark = pytest.mark.sim

DATA = Path(__file__).resolve().parents[2] / "benchmarks" / "data" / "vllm_published.yaml"


def test_shipped_data_is_cited_and_split() -> None:
    data = load_data(DATA)
    assert len(data.experiments) >= 20
    points = sum(len(e.points) for e in data.experiments)
    assert points >= 40
    assert len(data.sources) >= 4
    for e in data.experiments:
        src = data.sources[e.source]
        assert src.url.startswith("https://"), e.id
        assert all((e.gpu, e.model, e.vllm_version)), e.id
        assert e.split in ("fit", "held-out"), e.id
        assert set(e.points) <= set(METRICS), e.id
        data.profile_for(e)  # resolves (built-in or derived) with the run's settings
    held = [e for e in data.experiments if e.split == "held-out" and not e.note.startswith("context:")]
    assert sum(len(e.points) for e in held) >= 30


def test_held_out_points_meet_the_calibration_target() -> None:
    """Issue 13's bar on the benchmark's held-out points: at least 85 % within +-15 % and a
    median absolute error of at most 8 % (benchmarks/sim_fidelity.py prints the same figures;
    measured 96 % and 6.3 % when this test was written, 93 % and 5.2 % on 84 points with the
    IOG runs). A change to the engine or a built-in profile that loses the calibration fails
    here, not only in a benchmark nobody re-ran."""
    errs = _held_out_errors(lambda e: True)
    assert len(errs) >= 80
    within = sum(x <= 0.15 for x in errs) / len(errs)
    assert within >= 0.85, f"{100 * within:.0f} % within +-15 %"
    assert statistics.median(errs) <= 0.08


def test_independent_source_meets_the_calibration_target() -> None:
    """The same bar on the held-out points of the one source outside the inference-sim team
    (IOG-Foundation, vLLM 0.8.5, H100 PCIe: a profile derived by datasheet ratios, only its
    front end fitted; 89 % and 4.1 % when this test was written)."""
    errs = _held_out_errors(lambda e: e.source == "iog-llm-inference-benchmarks")
    assert len(errs) >= 36
    within = sum(x <= 0.15 for x in errs) / len(errs)
    assert within >= 0.85, f"{100 * within:.0f} % within +-15 %"
    assert statistics.median(errs) <= 0.08


def _held_out_errors(keep: Callable[[Experiment], bool]) -> list[float]:
    data = load_data(DATA)
    errs: list[float] = []
    for e in data.experiments:
        if e.split != "held-out" or e.note.startswith("context:") or not keep(e):
            continue
        sim = run_experiment(e, data)
        errs += [abs(sim[m] - v) / v for m, v in e.points.items()]
    return errs


def write(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "d.yaml"
    p.write_text(
        "sources:\n  s: {url: 'https://x', title: t, kind: k}\n"
        "experiments:\n" + body
    )
    return p


BASE = (
    "  - {id: a, source: s, profile: llama-8b-h100, model: m, gpu: g, tp: 1, vllm_version: v,"
    " rate: 2, num_prompts: 10, input_len: 100, output_len: 10, split: fit, points: %s%s}\n"
)


@pytest.mark.parametrize(
    ("points", "extra", "match"),
    [
        ("{mean_ttft_ms: 10}", ", source: nope", "source: unknown source 'nope'"),
        ("{p99_itl_ms: 10}", "", r"points\.p99_itl_ms: unknown metric"),
        ("{mean_ttft_ms: -1}", "", r"points\.mean_ttft_ms: expected a number > 0"),
        ("{mean_ttft_ms: 1}", ", split: train", "split: expected one of"),
        ("{mean_ttft_ms: 1}", ", rate: fast", "rate: expected a number or 'inf'"),
        ("{mean_ttft_ms: 1}", ", profile: h900", "profile: unknown profile"),
        ("{mean_ttft_ms: 1}", ", stages: [[1]]", r"stages\[0\]: expected \[rate, duration_s\]"),
    ],
)
def test_bad_entries_name_file_entry_and_field(
    tmp_path: Path, points: str, extra: str, match: str
) -> None:
    body = BASE % (points, "")
    if extra:
        # The override replaces the base field (duplicate keys are an error of their own).
        key = extra.split(":", maxsplit=1)[0].strip(", ")
        body = re.sub(rf"\b{key}: [^,}}]+, ", "", body, count=1).replace("}\n", f"{extra}}}\n", 1)
    p = write(tmp_path, body)
    with pytest.raises(errors.ConfigError, match=match) as ei:
        load_data(p)
    assert str(p) in str(ei.value)
    assert "experiments[0] (a)" in str(ei.value)


def test_stages_and_constant_arrivals(tmp_path: Path) -> None:
    """Two stages back to back, evenly spaced as inference-perf's constant load sends them."""
    body = (BASE % ("{mean_ttft_ms: 1}", "")).replace(
        "}\n", ", stages: [[2, 10], [5, 4]], arrivals: constant}\n", 1
    )
    data = load_data(write(tmp_path, body))
    arrival, prompt, output = workload(data.experiments[0], data.datasets)
    assert len(arrival) == 2 * 10 + 5 * 4
    assert arrival[:3] == pytest.approx([0.0, 0.5, 1.0])
    assert arrival[20:23] == pytest.approx([10.0, 10.2, 10.4])
    assert np.all(prompt == 100)
    assert np.all(output == 10)
    assert not math.isinf(arrival[-1])
