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
from autoscaler import profile as profiles
from autoscaler.sim.fidelity import (
    METRICS,
    Experiment,
    _run,
    closed_loop_arrivals,
    load_data,
    run_experiment,
    single_request_itl_fit,
    workload,
)

pytestmark = pytest.mark.sim

# The data file's A100 profile candidate, derived and rejected (it misses every held-out run).
REJECTED_A100 = "llama-8b-a100"

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
    held = [
        e for e in data.experiments if e.split == "held-out" and not e.note.startswith("context:")
    ]
    assert sum(len(e.points) for e in held) >= 30


def test_held_out_points_meet_the_calibration_target() -> None:
    """Issue 13's bar on the held-out points: at least 85 % within +-15 % and a median absolute
    error of at most 8 % (benchmarks/sim_fidelity.py prints the same figures; 96 % and 6.3 %
    when this test was written, 93 % and 5.2 % on 84 points with the IOG runs). A change to
    the engine or a profile that loses the calibration fails here, not only in a benchmark
    nobody re-ran. The one exception is the A100 candidate (`llama-8b-a100`, derived from the
    SXM profile by datasheet ratios): it misses all 12 of its held-out runs
    (docs/simulator.md), which is why it is not shipped, and the bar is about the profiles
    that are kept, the built-ins and the data file's other derived ones."""
    errs = _held_out_errors(lambda e: e.profile != REJECTED_A100)
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
    p.write_text("sources:\n  s: {url: 'https://x', title: t, kind: k}\nexperiments:\n" + body)
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
        ("{mean_ttft_ms: 1}", ", burstiness: 0", "burstiness: expected a number > 0"),
        ("{mean_ttft_ms: 1}", ", routing: round-robin", "routing: expected one of"),
        ("{mean_ttft_ms: 1}", ", concurrency: 8", "concurrency: a closed loop sends at rate 'inf'"),
        ("{mean_ttft_ms: 1}", ", range_ratio: 1.5", r"range_ratio: expected 0 <= ratio < 1"),
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


def test_burstiness_draws_gamma_gaps_as_vllm_bench_does(tmp_path: Path) -> None:
    """`burstiness: 50` (vLLM's benchmark `--burstiness`): gamma gaps of shape 50 and the
    rate's mean, so nearly even arrivals (coefficient of variation 1/sqrt(50) = 0.14), where
    the default Poisson gaps vary as much as they average (CV 1)."""
    body = (BASE % ("{mean_ttft_ms: 1}", "")).replace("num_prompts: 10", "num_prompts: 4000")
    cvs = {}
    for burst in ("", ", burstiness: 50"):
        data = load_data(write(tmp_path, body.replace("}\n", f"{burst}}}\n", 1)))
        gaps = np.diff(workload(data.experiments[0], data.datasets)[0])
        assert gaps.mean() == pytest.approx(0.5, rel=0.05)  # rate 2
        cvs[burst] = gaps.std() / gaps.mean()
    assert cvs[""] == pytest.approx(1.0, abs=0.05)
    assert cvs[", burstiness: 50"] == pytest.approx(50**-0.5, abs=0.02)


def test_constant_arrivals_refuse_burstiness(tmp_path: Path) -> None:
    body = (BASE % ("{mean_ttft_ms: 1}", "")).replace(
        "}\n", ", arrivals: constant, burstiness: 2}\n", 1
    )
    with pytest.raises(errors.ConfigError, match="burstiness: only with poisson arrivals"):
        load_data(write(tmp_path, body))


def test_a100_candidate_is_the_sxm_profile_at_the_datasheet_ratios() -> None:
    """The data file's llama-8b-a100 is derived as the built-in H100 PCIe profile is: memory-
    bound terms by HBM bandwidth (3.35 / 2.039 TB/s; only the 16.06 GB weight read of
    decode_alpha), compute-bound ones by dense BF16 FLOPS (989 / 312), nothing fitted (its front
    end is IOG's, same client and vLLM release). A refit to its own held-out runs would show
    here."""
    data = load_data(DATA)
    sxm, a100 = profiles.builtin("llama-8b-h100"), data.profiles["llama-8b-a100"]
    bw, fl = 3.35 / 2.039, 989 / 312
    read_sxm_ms = 16.06e9 / 3.35e12 * 1e3
    assert a100.decode_alpha_ms == pytest.approx(
        read_sxm_ms * bw + (sxm.decode_alpha_ms - read_sxm_ms), abs=0.01
    )
    assert a100.decode_gamma_ms_per_ctx_token == pytest.approx(
        sxm.decode_gamma_ms_per_ctx_token * bw, rel=0.005
    )
    assert a100.prefill_beta_ms_per_token == pytest.approx(
        sxm.prefill_beta_ms_per_token * fl, rel=0.005
    )
    # The attention term was scaled from the SXM profile's 7e-7 of its derivation (causal
    # attention FLOPs at about 400 TF/s). The SXM profile now takes FlashAttention-3's H100
    # throughput (4.26e-7), a Hopper-only kernel, so that figure does not carry to an A100
    # (FlashAttention-2 there) by the FLOPS ratio; the rejected candidate keeps its derivation.
    assert a100.prefill_gamma_ms_per_token2 == pytest.approx(7e-7 * fl, rel=0.005)
    assert a100.frontend_ms == profiles.builtin("llama-8b-h100-pcie").frontend_ms
    same = ("prefill_alpha_ms", "decode_beta_ms_per_seq", "kv_capacity_tokens")
    assert all(getattr(a100, f) == getattr(sxm, f) for f in same)
    runs = [e for e in data.experiments if e.profile == "llama-8b-a100"]
    assert runs
    assert all(e.split == "held-out" for e in runs)
    # Several replicas behind a plain Service (llm-d's runs): kube-proxy's random pick.
    assert all(e.routing == "random" for e in runs if e.replicas > 1)


def test_a_data_file_profile_refines_another_and_names_its_fit_runs(tmp_path: Path) -> None:
    """A profile may take a profile defined above it as its base, and list the runs that set its
    constants (its fit points when another profile's runs are replayed with it); an id that
    names no run is refused with the file and profile named."""
    head = (
        "sources:\n  s: {url: 'https://x', title: t, kind: k}\n"
        "profiles:\n"
        "  first: {base: llama-8b-h100, decode_alpha_ms: 9.0}\n"
        "  second: {base: first, prefill_beta_ms_per_token: 0.05, fit_experiments: [%s]}\n"
        "experiments:\n"
    )
    body = BASE % ("{mean_ttft_ms: 10}", "")
    p = tmp_path / "d.yaml"
    p.write_text(head % "a" + body)
    data = load_data(p)
    second = data.profiles["second"]
    assert second.decode_alpha_ms == 9.0
    assert second.prefill_beta_ms_per_token == 0.05
    assert data.profile_fits == {"first": (), "second": ("a",)}
    p.write_text(head % "zz" + body)
    with pytest.raises(
        errors.ConfigError, match=r"profiles\.second: fit_experiments: unknown"
    ) as ei:
        load_data(p)
    assert str(p) in str(ei.value)


def test_accelmark_a100_candidate_follows_its_stated_rule() -> None:
    """The second A100 candidate is the datasheet one with its step costs set from AccelMark's
    one-at-a-time runs by the rule its derivation states (one factor on both prefill terms from
    the 28.7k-token TTFT; decode from the two batch-of-one steps), nothing else: a refit to the
    runs it is checked on would show here."""
    data = load_data(DATA)
    ds, am = data.profiles[REJECTED_A100], data.profiles["llama-8b-a100-accelmark"]
    assert data.profile_fits["llama-8b-a100-accelmark"] == (
        "accelmark-a100-8b-longctx-seq",
        "accelmark-a100-8b-sharegpt-seq",
    )
    runs = {e.id: e for e in data.experiments}
    long_run = runs["accelmark-a100-8b-longctx-seq"]
    short_run = runs["accelmark-a100-8b-sharegpt-seq"]
    p = long_run.input_len
    assert p is not None
    assert short_run.input_len is not None
    assert short_run.output_len is not None
    chunks = math.ceil(p / long_run.overrides["max_num_batched_tokens"])
    k = (long_run.points["median_ttft_ms"] - ds.frontend_ms - chunks * ds.prefill_alpha_ms) / (
        ds.prefill_beta_ms_per_token * p + ds.prefill_gamma_ms_per_token2 * p * p
    )
    assert am.prefill_beta_ms_per_token == pytest.approx(
        ds.prefill_beta_ms_per_token * k, rel=0.005
    )
    assert am.prefill_gamma_ms_per_token2 == pytest.approx(
        ds.prefill_gamma_ms_per_token2 * k, rel=0.005
    )
    assert long_run.output_len is not None
    ctx_short = short_run.input_len + short_run.output_len / 2
    ctx_long = p + long_run.output_len / 2
    slope = (long_run.points["median_tpot_ms"] - short_run.points["median_tpot_ms"]) / (
        ctx_long - ctx_short
    )
    assert am.decode_gamma_ms_per_ctx_token == pytest.approx(slope, rel=0.005)
    assert am.decode_alpha_ms == pytest.approx(
        short_run.points["median_tpot_ms"] - am.decode_beta_ms_per_seq - slope * ctx_short,
        abs=0.01,
    )
    changed = {
        "prefill_beta_ms_per_token",
        "prefill_gamma_ms_per_token2",
        "decode_alpha_ms",
        "decode_gamma_ms_per_ctx_token",
        "name",
        "vllm_version",
    }
    d_ds, d_am = ds.model_dump(), am.model_dump()
    assert {f for f in d_ds if d_ds[f] != d_am[f]} <= changed


def test_published_decode_line_is_met() -> None:
    """The held-out single-request ITL line of the vLLM blog's FP8 KV-cache post (Llama-3.1-8B,
    one H100, vLLM 0.19.1: 4.37e-5 ms per input token, 6.44 ms at none) against the line
    through the simulator's own sweep over the same range, held to the points' +-15 %
    (+0.7 % and +2.6 % when this test was written). The 8B's decode terms were set before
    this source was found; a change to them or to the engine's decode step that breaks the
    agreement fails here."""
    data = load_data(DATA)
    assert data.decode_fits, "no published decode line in the data file"
    for f in data.decode_fits:
        assert f.split == "held-out"
        assert data.sources[f.source].url.startswith("https://")
        prof = data.profiles.get(f.profile) or profiles.builtin(f.profile)
        lens = [round(x) for x in np.linspace(f.input_min, f.input_max, 8)]
        slope, icpt = single_request_itl_fit(prof, lens, f.output_len)
        assert slope == pytest.approx(f.slope_ms_per_token, rel=0.15), f.id
        assert icpt == pytest.approx(f.intercept_ms, rel=0.15), f.id
        for n in (f.input_min, f.input_max):
            pub = f.intercept_ms + f.slope_ms_per_token * n
            assert icpt + slope * n == pytest.approx(pub, rel=0.15), (f.id, n)


@pytest.mark.parametrize("gamma", [4.4e-5, 1.5e-4])
def test_single_request_sweep_recovers_the_decode_step(gamma: float) -> None:
    """A concurrency-1 sweep through the engine measures the decode step of one sequence: its
    slope is the per-context-token cost and its intercept the fixed step cost plus half the
    output's context (each request's ITL averages its gaps)."""
    prof = profiles.builtin("llama-8b-h100").model_copy(
        update={"decode_gamma_ms_per_ctx_token": gamma}
    )
    slope, icpt = single_request_itl_fit(prof, [512, 8192, 40000, 100000], 64)
    assert slope == pytest.approx(gamma, rel=1e-6)
    step = prof.decode_alpha_ms + prof.decode_beta_ms_per_seq + gamma * 32
    assert icpt == pytest.approx(step, rel=1e-6)


FIT = (
    "decode_fits:\n  - {id: f, source: s, profile: llama-8b-h100, model: m, gpu: g, tp: 1,"
    " vllm_version: v, split: held-out, input_min: %s, input_max: 1000, output_len: 128,"
    " slope_ms_per_token: 1e-5, intercept_ms: 6%s}\n"
)


@pytest.mark.parametrize(
    ("lo", "extra", "match"),
    [
        ("256", ", source: nope", "source: unknown source 'nope'"),
        ("2000", "", "input_min/input_max: need 0 < min < max"),
        ("256", ", profile: h900", "profile: unknown profile"),
        ("256", ", split: train", "split: expected one of"),
    ],
)
def test_bad_decode_fits_name_file_entry_and_field(
    tmp_path: Path, lo: str, extra: str, match: str
) -> None:
    body = FIT % (lo, "")
    if extra:
        key = extra.split(":", maxsplit=1)[0].strip(", ")
        body = re.sub(rf"\b{key}: [^,}}]+, ", "", body, count=1).replace("}\n", f"{extra}}}\n", 1)
    p = tmp_path / "d.yaml"
    p.write_text("sources:\n  s: {url: 'https://x', title: t, kind: k}\n" + body)
    with pytest.raises(errors.ConfigError, match=match) as ei:
        load_data(p)
    assert str(p) in str(ei.value)
    assert "decode_fits[0] (f)" in str(ei.value)


def test_closed_loop_keeps_its_requests_in_flight() -> None:
    """`vllm bench serve --max-concurrency c` at rate inf: the first c requests go at once and
    each later one the moment an earlier one finishes, so c are in flight until the tail; the
    send times are the completions of the run itself, not of a run without the later requests
    (which would finish sooner: the later ones share the batch)."""
    prof = profiles.builtin("llama-8b-h100")
    rng = np.random.default_rng(3)
    prompt = rng.integers(500, 3000, 40).astype(np.int64)
    output = rng.integers(50, 400, 40).astype(np.int64)
    c = 4
    arrival = closed_loop_arrivals(prof, prompt, output, c)
    assert np.all(arrival[:c] == 0)
    assert np.all(arrival[c:] > 0)
    sim = np.asarray(
        _run(
            prof, arrival, prompt, output, replicas=1, block_hashes=None, routing="least-loaded"
        ).finish_s
    )
    finish = np.sort(sim)
    assert arrival[c:] == pytest.approx(finish[: len(prompt) - c], abs=1e-9)
    for t in arrival[c:]:
        in_flight = np.sum((arrival < t) & (sim > t))
        assert in_flight == c - 1  # the one that just finished freed the slot


def test_range_ratio_draws_lengths_as_vllms_random_dataset(tmp_path: Path) -> None:
    body = (BASE % ("{mean_ttft_ms: 1}", "")).replace(
        "rate: 2, num_prompts: 10, input_len: 100, output_len: 10",
        "rate: inf, concurrency: 2, num_prompts: 400, input_len: 20000, output_len: 2000,"
        " range_ratio: 0.15",
    )
    exp = load_data(write(tmp_path, body)).experiments[0]
    _, prompt, output = workload(exp, {})
    assert prompt.min() >= 17000
    assert prompt.max() <= 23000
    assert output.min() >= 1700
    assert output.max() <= 2300
    assert abs(prompt.mean() - 20000) < 300
    assert prompt.std() > 1500

