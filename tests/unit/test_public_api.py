"""The managed public surface: the plug-in facade and the test kit export exactly their
`__all__`, and a third-party plug-in needs nothing else."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from types import ModuleType

import pytest

from autoscaler import plugin, testing

EXAMPLE_PLUGIN = Path(__file__).parent.parent / "fixtures" / "example_plugin"

PINNED = {
    plugin: [
        "ENTRY_POINT_GROUP", "ConfigError", "ConfigT", "DeploymentRef", "Need", "PluginConfig",
        "Policy", "PolicyPlugin", "Role", "RoleContext", "RoleObservation", "RoleSpec",
        "SignalName", "SignalSample", "SignalSpec",
    ],
    testing: [
        "DEFAULT_POOL", "FakeActuator", "FakeClock", "FakeEvents", "FakeLease", "FakeMetricsSource",
        "FakeStateStore", "ReadyFn", "Ticker", "desired", "fake_cluster", "obs", "pool_policy",
        "signals_of",
    ],
}


@pytest.mark.parametrize("module", list(PINNED), ids=lambda m: m.__name__)
def test_all_is_pinned(module: ModuleType) -> None:
    """Adding or removing a public name is a deliberate change to this list (and the docs)."""
    assert sorted(module.__all__) == sorted(PINNED[module])
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert missing == []


def test_testing_defines_nothing_public_outside_all() -> None:
    """Every public class or function written in testing.py is in `__all__`."""
    defined = {name for name, obj in vars(testing).items()
               if not name.startswith("_") and (inspect.isclass(obj) or inspect.isfunction(obj))
               and obj.__module__ == testing.__name__}
    assert defined <= set(testing.__all__)


def test_example_plugin_imports_only_the_facade() -> None:
    """The example third-party kind reaches the project through `autoscaler.plugin` alone."""
    imported: set[str] = set()
    for path in (EXAMPLE_PLUGIN / "pd_example_plugin").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(a.name for a in node.names)
    ours = {m for m in imported if m == "autoscaler" or m.startswith("autoscaler.")}
    assert ours == {"autoscaler.plugin"}
