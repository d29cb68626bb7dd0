"""The shipped policy exists in three places that must never drift: policies/ (the source),
the package data the backtest falls back to in an installed wheel, and the kustomize base
(kustomize reads only files under its own root)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "policies" / "llama-8b-slo.yaml"


@pytest.mark.parametrize(
    "copy",
    [
        pytest.param(REPO / "autoscaler" / "sim" / "default_policy.yaml", id="package-data"),
        pytest.param(
            REPO / "manifests" / "base" / "controller" / "policy" / "llama-8b-slo.yaml",
            id="kustomize-base",
        ),
    ],
)
def test_copy_is_identical(copy: Path) -> None:
    """Edit policies/llama-8b-slo.yaml, then copy it over (cp) - this test says where."""
    assert copy.read_bytes() == SOURCE.read_bytes(), f"cp {SOURCE} {copy}"


def test_policies_dir_holds_policy_yaml_only() -> None:
    """policies/ is data: every file in it is a policy the validator accepts."""
    files = sorted(p.name for p in (REPO / "policies").iterdir())
    assert files
    assert all(name.endswith(".yaml") for name in files), files
