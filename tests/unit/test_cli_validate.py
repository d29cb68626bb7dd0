"""`pd-autoscaler validate`: exit codes and `FILE: path.to.field: message` errors, never a
traceback, for every kind of broken policy a user is likely to write."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from autoscaler import cli

POLICIES = sorted((Path(__file__).parents[2] / "policies").glob("*.yaml"))

GOOD = """
pools:
  - name: p
    roles:
      prefill: {deployment: {name: a}, max_replicas: 4, signals: [{signal: queue_depth, target: 2}]}
      decode: {deployment: {name: b}, max_replicas: 4, signals: [{signal: kv_cache, target: 0.7}]}
"""


def run(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    f = tmp_path / "policy.yaml"
    f.write_text(text)
    rc = cli.main(["validate", str(f)])
    out = capsys.readouterr()
    return rc, out.err.replace(str(f), "F")


def test_shipped_policies_are_valid(capsys: pytest.CaptureFixture[str]) -> None:
    """Every example policy in policies/ validates."""
    assert len(POLICIES) >= 3
    assert cli.main(["validate", *map(str, POLICIES)]) == 0
    assert capsys.readouterr().out.count(": valid") == len(POLICIES)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        pytest.param(
            ("target: 2", "target: -1"),
            "F: pools.0.roles.prefill.signals.0.target: Input should be greater than or equal to 0.000001 (got -1)",
            id="negative-target",
        ),
        pytest.param(
            ("target: 2", "target: 0"),
            "F: pools.0.roles.prefill.signals.0.target: Input should be greater than or equal to 0.000001 (got 0)",
            id="zero-target",
        ),
        pytest.param(
            (
                "max_replicas: 4, signals: [{signal: queue",
                "min_replicas: 9, max_replicas: 4, signals: [{signal: queue",
            ),
            "F: pools.0.roles.prefill: min_replicas 9 > max_replicas 4",
            id="min-gt-max",
        ),
        pytest.param(
            ("name: p", "name: p\n    colour: red"),
            "F: pools.0.colour: Extra inputs are not permitted (got 'red')",
            id="unknown-field",
        ),
        pytest.param(
            ("queue_depth", "queue_length"),
            "F: pools.0.roles.prefill.signals.0.signal: Input should be 'queue_depth', 'batched_tokens', 'kv_cache', 'running', 'ttft', 'itl', 'ttft_relative', 'prompt_tokens_rate' or 'generation_tokens_rate' (got 'queue_length')",
            id="unknown-signal",
        ),
        pytest.param(
            ("target: 0.7", "target: 70"),
            "F: pools.0.roles.decode.signals.0: target 70.0 for kv_cache is a 0-1 fraction; must be <= 1",
            id="kv-percent",
        ),
        pytest.param(
            (
                "max_replicas: 4, signals: [{signal: queue",
                "behavior: {scale_down: {stabilization_window_s: -5}}, max_replicas: 4, signals: [{signal: queue",
            ),
            "F: pools.0.roles.prefill.behavior.scale_down.stabilization_window_s: Input should be greater than or equal to 0 (got -5)",
            id="negative-window",
        ),
        pytest.param(
            ("    roles:", "    coupling: {mode: ratio, prefill: 1, decode: 5}\n    roles:"),
            "F: pools.0: ratio 1:5 is impossible within prefill [1,4] and decode [1,4]",
            id="impossible-ratio",
        ),
        pytest.param(
            ("    roles:", "    coupling: {mode: ratio, prefill: 2, decode: 4}\n    roles:"),
            "F: pools.0.coupling: ratio 2:4 is not in lowest terms; write 1:2",
            id="unreduced-ratio",
        ),
        pytest.param(
            (
                "      decode:",
                "      aggregated: {deployment: {name: c}, max_replicas: 2, signals: [{signal: running, target: 8}]}\n      decode:",
            ),
            "F: pools.0.roles: roles must be prefill+decode or aggregated alone; got aggregated, decode, prefill",
            id="mixed-roles",
        ),
        pytest.param(
            ("pools:", "gpu_budget: 1\npools:"),
            "F: (top level): gpu_budget 1 is below the 2 GPUs min_replicas need",
            id="budget-too-small",
        ),
    ],
)
def test_invalid_policy_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: tuple[str, str], expected: str
) -> None:
    """Each broken policy exits 2 with one line naming the field, the value and what is allowed."""
    old, new = edit
    assert old in GOOD
    rc, err = run(tmp_path, GOOD.replace(old, new, 1), capsys)
    assert rc == 2
    assert expected in err.splitlines(), err


def test_duplicate_pool_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two pools with one name are rejected."""
    body = GOOD.split("pools:\n", 1)[1]
    twice = "pools:\n" + body + body.replace("name: a", "name: a2").replace("name: b", "name: b2")
    rc, err = run(tmp_path, twice, capsys)
    assert (rc, err.strip()) == (2, "F: (top level): duplicate pool name(s): p")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "pools: [\n",
            "F: line 2, column 1: malformed YAML: did not find expected node content",
            id="malformed",
        ),
        pytest.param("", "F: (top level): expected a mapping, got an empty document", id="empty"),
        pytest.param("- a\n- b\n", "F: (top level): expected a mapping, got list", id="list"),
        pytest.param(
            "pools: []\n",
            "F: pools: Tuple should have at least 1 item after validation, not 0",
            id="no-pools",
        ),
    ],
)
def test_unparseable_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    """Malformed or empty YAML is one clear line, not a traceback."""
    rc, err = run(tmp_path, text, capsys)
    assert (rc, err.strip()) == (2, expected)


def test_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A path that does not exist is named."""
    rc = cli.main(["validate", str(tmp_path / "nope.yaml")])
    assert rc == 2
    assert "nope.yaml: cannot read: No such file or directory" in capsys.readouterr().err


def test_one_bad_file_among_good_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Good files are reported valid, the bad one is named, and the exit code is 2."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("pools: 7\n")
    rc = cli.main(["validate", str(POLICIES[0]), str(bad)])
    out = capsys.readouterr()
    assert rc == 2
    assert ": valid" in out.out
    assert f"{bad}: pools:" in out.err


def test_explain_and_schema(capsys: pytest.CaptureFixture[str]) -> None:
    """--explain documents every field; --schema is JSON Schema an editor can use."""
    assert cli.main(["validate", "--explain"]) == 0
    text = capsys.readouterr().out
    for field in ("min_replicas", "stabilization_window_s", "coupling", "floor_after_s", "dry_run"):
        assert field in text
    assert cli.main(["validate", "--schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "PolicyFile"


def test_python_dash_m_entry_point() -> None:
    """`python -m autoscaler` is the same command."""
    proc = subprocess.run(
        [sys.executable, "-m", "autoscaler", "validate", str(POLICIES[0])],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
