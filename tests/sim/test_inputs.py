"""Inputs of the simulator: trace loaders (format detection, options, errors), profile YAML,
and the built-in workload generator (including its fit against the shared traces)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from autoscaler import errors
from autoscaler import profile as profiles
from autoscaler.sim.traces import detect_format, load_trace, scale_rate
from autoscaler.sim.workload import AZURE_CODE, AZURE_CONV, fit_workload, generate
from tests.conftest import shared_traces_missing
from tests.sim.conftest import CONV_TRACE, SHARED_TRACES

pytestmark = pytest.mark.sim

AZURE = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:15:50.9951690,396,109
2023-11-16 18:15:46.6805900,374,44
2023-11-16 18:15:47.1805900,10,1
"""
BURSTGPT = """Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type
5,ChatGPT,472,18,490,Conversation log
45,GPT-4,1087,0,1087,Conversation log
"""
GENERIC = """timestamp_s,input_tokens,output_tokens
10.5,100,20
12.0,200,30
"""
MOONCAKE = "\n".join(
    json.dumps(r)
    for r in (
        {"timestamp": 27482, "input_length": 6955, "output_length": 52, "hash_ids": [1, 2]},
        {"timestamp": 30535, "input_length": 6472, "output_length": 26, "hash_ids": [3]},
    )
)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


@pytest.mark.parametrize(
    ("text", "fmt", "arrival", "prompt", "output"),
    [
        pytest.param(
            AZURE, "azure", [0.0, 0.5, 4.314579], [374, 10, 396], [44, 1, 109], id="azure"
        ),
        pytest.param(BURSTGPT, "burstgpt", [0.0, 40.0], [472, 1087], [18, 0], id="burstgpt"),
        pytest.param(GENERIC, "generic", [0.0, 1.5], [100, 200], [20, 30], id="generic"),
        pytest.param(MOONCAKE, "mooncake", [0.0, 3.053], [6955, 6472], [52, 26], id="mooncake"),
    ],
)
def test_formats(  # noqa: PLR0917 - one parametrized case per format
    tmp_path: Path, text: str, fmt: str, arrival: list[float], prompt: list[int], output: list[int]
) -> None:
    """Each format is detected from its header and loaded sorted, starting at 0."""
    p = _write(tmp_path, "t.txt", text)
    assert detect_format(p) == fmt
    tr = load_trace(p)
    np.testing.assert_allclose(tr.arrival_s, arrival)
    assert tr.prompt_tokens.tolist() == prompt
    assert tr.output_tokens.tolist() == output
    assert tr.arrival_s.dtype == np.float64
    assert tr.prompt_tokens.dtype == np.int64


@pytest.mark.parametrize(
    ("text", "match"),
    [
        pytest.param("a,b,c\n1,2,3\n", r"t\.csv: line 1: unknown trace header", id="header"),
        pytest.param(
            GENERIC + "13,abc,4\n", r"line 4: column 'input_tokens': not a number", id="bad-number"
        ),
        pytest.param(
            GENERIC + "13,-4,4\n",
            r"line 4: column 'input_tokens': expected a non-neg",
            id="negative",
        ),
        pytest.param(GENERIC + "13,4\n", r"line 4: expected 3 columns, got 2", id="short-row"),
        pytest.param(
            AZURE + "yesterday,1,2\n",
            r"line 5: column 'TIMESTAMP': not a datetime",
            id="bad-datetime",
        ),
        pytest.param(
            MOONCAKE + '\n{"timestamp": 1, "input_length": 2}\n',
            r"line 3: column 'output_length': missing field",
            id="jsonl-missing",
        ),
        pytest.param(MOONCAKE + "\n{oops\n", r"line 3: invalid JSON at column 2", id="jsonl-bad"),
        pytest.param("", r"empty trace", id="empty"),
        pytest.param("timestamp_s,input_tokens,output_tokens\n", r"no requests", id="no-rows"),
    ],
)
def test_errors_name_file_line_column(tmp_path: Path, text: str, match: str) -> None:
    """Bad input is reported with the file, the line and the column."""
    p = _write(tmp_path, "t.csv", text)
    with pytest.raises(errors.ConfigError, match=match):
        load_trace(p)


def test_missing_file(tmp_path: Path) -> None:
    """A missing file is a ConfigError naming it."""
    with pytest.raises(errors.ConfigError, match=r"nope\.csv: cannot read"):
        load_trace(tmp_path / "nope.csv")


def test_speedup_and_rate_scale(tmp_path: Path) -> None:
    """speedup compresses time; rate_scale thins or replicates deterministically per seed."""
    rows = "\n".join(f"{i * 2.0},{100 + i},{10}" for i in range(1000))
    p = _write(tmp_path, "g.csv", "timestamp_s,input_tokens,output_tokens\n" + rows + "\n")
    base = load_trace(p)
    fast = load_trace(p, speedup=4.0)
    np.testing.assert_allclose(fast.arrival_s, base.arrival_s / 4.0)
    half = load_trace(p, rate_scale=0.5, seed=7)
    assert 400 < len(half.arrival_s) < 600
    assert np.array_equal(half.arrival_s, load_trace(p, rate_scale=0.5, seed=7).arrival_s)
    triple = load_trace(p, rate_scale=2.5, seed=1)
    assert 2400 < len(triple.arrival_s) < 2600
    assert np.all(np.diff(triple.arrival_s) >= 0)
    assert triple.arrival_s[-1] <= base.arrival_s[-1]
    assert scale_rate(base, 1.0).prompt_tokens.tolist() == base.prompt_tokens.tolist()
    cut = load_trace(p, duration_s=100.0)
    assert len(cut.arrival_s) == 51
    with pytest.raises(errors.ConfigError, match="speedup"):
        load_trace(p, speedup=0)


@pytest.mark.skipif(shared_traces_missing(CONV_TRACE), reason="shared traces not present")
def test_real_azure_trace_loads() -> None:
    """The shared Azure conversation trace: 19,366 requests over about 58 minutes."""
    tr = load_trace(CONV_TRACE)
    assert len(tr.arrival_s) == 19_366
    assert 3400 < tr.duration_s < 3600


# --- profiles ---------------------------------------------------------------------------------


def test_builtin_profiles_match_sim_model_table() -> None:
    """The two built-ins carry the constants of docs/simulator.md: SIM-MODEL §2.8 with the
    corrections (decode gamma at 90 % of HBM bandwidth) and the constants fitted on measured
    vLLM 0.15.1 H100 runs (benchmarks/data/vllm_published.yaml)."""
    p8 = profiles.resolve_profile(None)
    assert p8.name == "llama-8b-h100"
    assert (p8.prefill_beta_ms_per_token, p8.decode_alpha_ms, p8.kv_capacity_tokens) == (
        0.025,
        6.57,
        430_000,
    )
    p70 = profiles.builtin("llama-70b-tp4-h100")
    assert (p70.gpus_per_replica, p70.decode_gamma_ms_per_ctx_token) == (4, 2.67e-5)
    # The 70B's soft-L1 fit (autoscaler/sim/profile_fit.py) on its fit split.
    assert (p70.decode_alpha_ms, p70.decode_beta_ms_per_seq, p70.frontend_ms) == (
        17.34,
        0.0159,
        32.3,
    )
    assert (p8.decode_gamma_ms_per_ctx_token, p8.decode_beta_ms_per_seq) == (4.4e-5, 0.0344)
    assert (p8.frontend_ms, p8.sched_ms_per_seq) == (24.3, 0.0)
    assert (p8.gpu, p70.gpu) == ("H100-80GB-SXM", "H100-80GB-SXM")
    # One decode step at B=1, 1000 context tokens: 6.57 + 0.0344 + 4.4e-5 x 1000 ms.
    assert p8.decode_step_s(1, 1000) == pytest.approx(0.0066484)


@pytest.mark.parametrize(
    ("name", "layers", "heads_per_gpu"),
    [("llama-8b-h100", 32, 32), ("llama-70b-tp4-h100", 80, 64 // 4)],
)
def test_prefill_attention_is_flash_attention_3_throughput(
    name: str, layers: int, heads_per_gpu: int
) -> None:
    """The H100 profiles' prefill attention constant is derived, not fitted: causal attention
    FLOPs per token pair on one GPU (2 x layers x query heads per GPU x head dim 128, the count
    FlashAttention's benchmarks use) at FlashAttention-3's published BF16 causal forward
    throughput at head dim 128 on H100 SXM, 616 TF/s at 16k tokens (docs/simulator.md,
    "Constants"). A refit of it to the held-out runs or to chart readings would show here."""
    prof = profiles.builtin(name)
    flops_per_pair = 2 * layers * heads_per_gpu * 128
    want_ms = flops_per_pair / 616e12 * 1e3
    assert prof.prefill_gamma_ms_per_token2 == pytest.approx(want_ms, rel=0.005)


def test_h100_pcie_profile_is_the_sxm_profile_at_the_datasheet_ratios() -> None:
    """llama-8b-h100-pcie moves the SXM constants by the H100 datasheet ratios: memory-bound
    terms by HBM bandwidth (3.35 / 2.0 TB/s; only the weight read of decode_alpha, 16.06 GB),
    compute-bound terms by dense BF16 FLOPS (989 / 756); CPU-side terms stay."""
    sxm, pcie = profiles.builtin("llama-8b-h100"), profiles.builtin("llama-8b-h100-pcie")
    bw, fl = 3.35 / 2.0, 989 / 756
    read_sxm_ms = 16.06e9 / 3.35e12 * 1e3
    want_alpha = read_sxm_ms * bw + (sxm.decode_alpha_ms - read_sxm_ms)
    assert pcie.decode_alpha_ms == pytest.approx(want_alpha, abs=0.01)
    assert pcie.decode_gamma_ms_per_ctx_token == pytest.approx(
        sxm.decode_gamma_ms_per_ctx_token * bw, rel=0.005
    )
    assert pcie.prefill_beta_ms_per_token == pytest.approx(
        sxm.prefill_beta_ms_per_token * fl, rel=0.005
    )
    assert pcie.prefill_gamma_ms_per_token2 == pytest.approx(
        sxm.prefill_gamma_ms_per_token2 * fl, rel=0.005
    )
    same = ("prefill_alpha_ms", "decode_beta_ms_per_seq", "kv_capacity_tokens", "max_num_seqs")
    assert all(getattr(pcie, f) == getattr(sxm, f) for f in same)
    assert (pcie.gpu, pcie.allreduce_ms_per_token) == ("H100-80GB-PCIe", 0.0)


def test_profile_yaml_overrides(tmp_path: Path) -> None:
    """A YAML starts from a built-in and overrides fields."""
    p = _write(tmp_path, "a100.yaml", "base: llama-8b-h100\nprefill_beta_ms_per_token: 0.08\n")
    prof = profiles.resolve_profile(p)
    assert prof.prefill_beta_ms_per_token == 0.08
    assert prof.decode_alpha_ms == profiles.builtin("llama-8b-h100").decode_alpha_ms
    assert prof.name == "llama-8b-h100+a100"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        pytest.param("decode_alpha_ms: -1\n", r"x\.yaml: decode_alpha_ms: .*got -1", id="range"),
        pytest.param("nope: 1\n", r"x\.yaml: nope: Extra inputs", id="unknown-field"),
        pytest.param(
            "base: gpt5\n",
            r"x\.yaml: base: unknown built-in profile \(got 'gpt5'\)",
            id="unknown-base",
        ),
        pytest.param("- 1\n", r"x\.yaml: \(top level\): expected a mapping", id="not-mapping"),
        pytest.param("a: [\n", r"x\.yaml: line \d+, column \d+: malformed YAML", id="yaml"),
    ],
)
def test_profile_yaml_errors(tmp_path: Path, text: str, match: str) -> None:
    """Errors name the file, the field and the value."""
    with pytest.raises(errors.ConfigError, match=match):
        profiles.load_profile(_write(tmp_path, "x.yaml", text))


def test_unknown_builtin() -> None:
    """An unknown built-in name lists the known ones."""
    with pytest.raises(errors.ConfigError, match="llama-70b-tp4-h100"):
        profiles.builtin("nope")


# --- workload generator -----------------------------------------------------------------------


@pytest.mark.parametrize("spec", [AZURE_CONV, AZURE_CODE], ids=lambda s: s.name)
def test_generator_reproduces_its_fit(spec: object) -> None:
    """An hour of generated load (no daily swing) has the fitted rate, burstiness and lengths."""
    assert spec in (AZURE_CONV, AZURE_CODE)
    w = AZURE_CONV if spec is AZURE_CONV else AZURE_CODE
    g = generate(w, duration_s=3 * 3600, seed=11, diurnal=False)
    fit = fit_workload(g)
    assert fit.mean_rate_rps == pytest.approx(w.mean_rate_rps, rel=0.15)
    assert fit.burst_var == pytest.approx(w.burst_var, rel=0.5, abs=0.03)
    assert fit.prompt_p50 == pytest.approx(w.prompt_p50, rel=0.05)
    assert fit.output_p99 == pytest.approx(w.output_p99, rel=0.1)
    assert np.array_equal(
        g.arrival_s, generate(w, duration_s=3 * 3600, seed=11, diurnal=False).arrival_s
    )


def test_generator_daily_shape() -> None:
    """Over a day the rate swings by about the fitted peak/trough ratio (2.55)."""
    g = generate(AZURE_CONV, duration_s=86_400, seed=2)
    hourly = np.bincount((g.arrival_s // 3600).astype(int), minlength=24)
    assert 1.8 < hourly.max() / hourly.min() < 3.5
    assert int(np.argmax(hourly)) in range(16, 22)


@pytest.mark.skipif(shared_traces_missing(SHARED_TRACES), reason="shared traces not present")
@pytest.mark.parametrize(
    ("name", "spec"),
    [
        ("AzureLLMInferenceTrace_conv.csv", AZURE_CONV),
        ("AzureLLMInferenceTrace_code.csv", AZURE_CODE),
    ],
)
def test_builtin_constants_are_the_fit_of_the_shared_traces(name: str, spec: object) -> None:
    """The numbers in workload.py are what fit_workload measures on the shared traces."""
    w = AZURE_CONV if spec is AZURE_CONV else AZURE_CODE
    fit = fit_workload(load_trace(SHARED_TRACES / name))
    assert fit.mean_rate_rps == pytest.approx(w.mean_rate_rps, abs=5e-4)
    assert fit.burst_var == pytest.approx(w.burst_var, abs=5e-4)
    assert (fit.prompt_p50, fit.prompt_max, fit.output_p50, fit.output_max) == (
        w.prompt_p50,
        w.prompt_max,
        w.output_p50,
        w.output_max,
    )
    assert fit.prompt_p99 == pytest.approx(w.prompt_p99, abs=1)
    assert fit.output_p99 == pytest.approx(w.output_p99, abs=1)
