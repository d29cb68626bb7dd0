"""`pd-autoscaler validate` warns when an absolute latency target is unreachable for the
profile (`policy/reach.py`): a scenario table of policies, with and without `--profile`.

The prompt lengths in the messages are computed from the profile here, not written down: a
recalibrated profile moves them, the rule stays.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from autoscaler import cli
from autoscaler.policy.load import load_policy_file
from autoscaler.policy.reach import longest_prompt_within, unreachable_targets
from autoscaler.profile import builtin
from autoscaler.types import Role

P8B = builtin("llama-8b-h100")


def policy(prefill: str, decode: str = "signals: [{signal: kv_cache, target: 0.7}]") -> str:
    return f"""
pools:
  - name: p
    roles:
      prefill: {{deployment: {{name: a}}, max_replicas: 4, {prefill}}}
      decode: {{deployment: {{name: b}}, max_replicas: 4, {decode}}}
"""


TTFT_075 = "signals: [{signal: queue_depth, target: 2}, {signal: ttft, target: 0.75}]"
SLO_ABS = "policies: [{kind: slo, profile: llama-8b-h100, ttft_slowdown: null, ttft_floor_s: 0.5}]"
SLO_REL = "policies: [{kind: slo, profile: llama-8b-h100}]"


def _n(limit: float, role: Role = Role.PREFILL) -> str:
    return f"over {longest_prompt_within(P8B, limit, role=role):,} tokens"


@pytest.mark.parametrize(
    ("prefill", "decode", "flags", "warnings"),
    [
        pytest.param(
            TTFT_075,
            None,
            ["--profile", "llama-8b-h100"],
            [("pools.0.roles.prefill.signals.1: ttft target 0.75 s", _n(0.75))],
            id="absolute-ttft-guard",
        ),
        pytest.param(TTFT_075, None, [], [], id="no-profile-no-check"),
        pytest.param(
            "signals: [{signal: ttft, target: 3600}]",
            None,
            ["--profile", "llama-8b-h100"],
            [],
            id="reachable-for-every-prompt",
        ),
        pytest.param(
            "signals: [{signal: ttft_relative, target: 3, floor_s: 0.5}]",
            None,
            ["--profile", "llama-8b-h100"],
            [],
            id="relative-guard",
        ),
        pytest.param(
            SLO_ABS,
            SLO_REL,
            [],
            [("pools.0.roles.prefill.policies.0: absolute TTFT", _n(0.5))],
            id="slo-absolute-ttft-its-own-profile",
        ),
        pytest.param(SLO_REL, SLO_REL, [], [], id="slo-relative"),
        pytest.param(
            TTFT_075.replace("0.75", "1.5"),
            "signals: [{signal: itl, target: 0.005}]",
            ["--profile", "llama-8b-h100"],
            [
                ("prefill.signals.1: ttft target 1.5 s", _n(1.5)),
                ("decode.signals.0: itl target 0.005 s", "a decode step of a single sequence"),
            ],
            id="itl-below-the-step-floor",
        ),
    ],
)
def test_warnings(  # noqa: PLR0917 - the scenario table's columns
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    prefill: str,
    decode: str | None,
    flags: list[str],
    warnings: list[tuple[str, str]],
) -> None:
    f = tmp_path / "policy.yaml"
    f.write_text(policy(prefill) if decode is None else policy(prefill, decode))
    assert cli.main(["validate", str(f), *flags]) == 0  # warnings never fail validation
    out = capsys.readouterr()
    assert out.out.count(": valid") == 1
    lines = [ln for ln in out.err.splitlines() if ": warning: " in ln]
    assert len(lines) == len(warnings), out.err
    for line, (field, detail) in zip(lines, warnings, strict=True):
        assert line.startswith(f"{f}: warning: "), line
        assert field in line
        assert detail in line
        assert "llama-8b-h100" in line


def test_unknown_profile_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "policy.yaml"
    f.write_text(policy(TTFT_075))
    assert cli.main(["validate", str(f), "--profile", "no-such-profile"]) == 2
    assert "no-such-profile" in capsys.readouterr().err


@pytest.mark.parametrize("limit", [0.05, 0.5, 0.75, 2.0, 10.0])
@pytest.mark.parametrize("role", [Role.PREFILL, Role.AGGREGATED])
def test_longest_prompt_is_the_boundary(limit: float, role: Role) -> None:
    """n meets the limit and n + 1 does not (prefill replicas also pay the KV transfer)."""
    n = longest_prompt_within(P8B, limit, role=role)

    def t(p: int) -> float:
        x = P8B.idle_prefill_s(p)
        return x + (P8B.kv_transfer_s(p) if role is Role.PREFILL else 0.0)

    if n == 0:
        assert t(1) > limit
    elif n < P8B.kv_capacity_tokens - 1:
        assert t(n) <= limit < t(n + 1)


@pytest.mark.parametrize(
    ("roles", "warnings"),
    [
        pytest.param(
            "prefill: {deployment: {name: a}, max_replicas: 4, signals: [{signal: batched_tokens, target: 0.8}]}\n"
            "      decode: {deployment: {name: b}, max_replicas: 4, signals: [{signal: kv_cache, target: 0.7}]}",
            [("pools.0.roles.prefill.signals.0: batched_tokens target 0.8", "over 6,553 tokens")],
            id="prefill-default-budget",
        ),
        pytest.param(
            "aggregated: {deployment: {name: a}, max_replicas: 4, max_num_batched_tokens: 2048, "
            "signals: "
            "[{signal: queue_depth, target: 4}, {signal: batched_tokens, target: 0.5}]}",
            [
                (
                    "pools.0.roles.aggregated.signals.1: batched_tokens target 0.5",
                    "over 1,024 tokens",
                )
            ],
            id="aggregated-own-budget",
        ),
        pytest.param(
            "prefill: {deployment: {name: a}, max_replicas: 4, signals: [{signal: prompt_tokens_rate, target: 24000}]}"
            "\n      decode: {deployment: {name: b}, max_replicas: 4, signals: [{signal: batched_tokens, target: 0.5}]}",
            [],
            id="decode-steps-are-one-token-per-sequence",
        ),
    ],
)
def test_batched_tokens_on_prefill_warns_without_a_profile(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    roles: str,
    warnings: list[tuple[str, str]],
) -> None:
    """batched_tokens reads a completing prompt's whole length in one step (vLLM V1), so on a
    role that prefills it is warned about whatever the profile: the file, field, value and the
    prompt length above which one prompt alone exceeds the target."""
    f = tmp_path / "policy.yaml"
    f.write_text(f"pools:\n  - name: p\n    roles:\n      {roles}\n")
    assert cli.main(["validate", str(f)]) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ": warning: " in ln]
    assert len(lines) == len(warnings), lines
    for line, (field, detail) in zip(lines, warnings, strict=True):
        assert line.startswith(f"{f}: warning: {field}"), line
        assert detail in line
        assert "prompt_tokens_rate" in line


@pytest.mark.parametrize(
    "path",
    sorted((Path(__file__).resolve().parents[2] / "policies").glob("*.yaml")),
    ids=lambda p: p.name,
)
def test_shipped_policies_have_no_prefill_batched_tokens_or_unreachable_ttft(path: Path) -> None:
    """No shipped policy scales a prefill role on batched_tokens or guards an absolute TTFT its
    profile cannot meet (the 70B policy is checked against its own profile)."""
    prof = builtin("llama-70b-tp4-h100" if "70b" in path.name else "llama-8b-h100")
    assert unreachable_targets(load_policy_file(path), prof) == []
