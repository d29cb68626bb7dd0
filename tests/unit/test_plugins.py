"""Third-party policy kinds: installed as a real distribution, found through the entry-point
group, validated by their own config model, and combined by the core like any other source."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from autoscaler import errors
from autoscaler.loop import build_policies
from autoscaler.policy import load, registry
from autoscaler.testing import Ticker, obs, pool_policy
from autoscaler.types import Role

PLUGIN_SRC = Path(__file__).parent.parent / "fixtures" / "example_plugin"


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """pip-install the example plug-in into a private target dir and put it on sys.path."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(PLUGIN_SRC),
        ],
        check=True,
        capture_output=True,
    )
    sys.path.insert(0, str(target))
    registry.clear_cache()
    yield target
    sys.path.remove(str(target))
    registry.clear_cache()
    for name in [m for m in sys.modules if m.startswith("pd_example_plugin")]:
        del sys.modules[name]


def test_plugin_kind_is_discovered(installed_plugin: Path) -> None:
    """The entry point makes `floor` an available kind."""
    assert "floor" in registry.available()


def test_plugin_policy_is_used_by_the_core(installed_plugin: Path) -> None:
    """A policy file selecting `kind: floor` keeps its replicas even when the signals are idle."""
    policy = pool_policy(
        aggregated={
            "signals": [{"signal": "queue_depth", "target": 5}],
            "policies": [{"kind": "floor", "replicas": 3}],
            "behavior": {"scale_down": {"stabilization_window_s": 0}},
        }
    )
    _, per_role = build_policies(policy)
    t = Ticker(policy, policies=per_role)
    d = t.tick(0, aggregated=obs(6, queue_depth=0.0))[Role.AGGREGATED]
    assert d.desired == 3
    assert d.driver.startswith("scale-down: floor")
    d = t.tick(15, aggregated=obs(1, queue_depth=0.0))[Role.AGGREGATED]
    assert d.desired == 3


def test_plugin_config_errors_name_the_field(installed_plugin: Path) -> None:
    """The plug-in's own model validates its mapping; errors carry file and field path."""
    text = """
pools:
  - name: p
    roles:
      aggregated:
        deployment: {name: d}
        max_replicas: 4
        policies: [{kind: floor, replicas: -2}]
"""
    with pytest.raises(errors.ConfigError) as exc:
        load.parse_policy(text, source="f.yaml")
    assert exc.value.problems == (
        "f.yaml: pools.0.roles.aggregated.policies.0.replicas: "
        "Input should be greater than or equal to 0 (got -2)",
    )


def test_unknown_kind_lists_known_ones() -> None:
    """An unknown kind is a clear error naming the kinds that exist."""
    text = """
pools:
  - name: p
    roles:
      aggregated:
        deployment: {name: d}
        max_replicas: 4
        policies: [{kind: nope}]
"""
    with pytest.raises(errors.ConfigError) as exc:
        load.parse_policy(text, source="f.yaml")
    (line,) = exc.value.problems
    assert line.startswith(
        "f.yaml: pools.0.roles.aggregated.policies.0.kind: unknown policy kind 'nope'"
    )
    assert "forecast" in line
