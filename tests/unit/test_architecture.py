"""The architecture as a test: the import-linter contracts of pyproject.toml ([tool.importlinter],
explained in docs/architecture.md) hold, and they are able to fail.

`make lint` runs the same contracts; this test makes CI (`make test`) run them too."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    if not LINT_IMPORTS.exists():
        pytest.fail(f"{LINT_IMPORTS} missing: `make install` installs import-linter (dev extra)")
    # The package under `cwd` must win over the installed (editable) one.
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=cwd, env=env,
                          capture_output=True, text=True, check=False, timeout=300)


def test_import_contracts_hold() -> None:
    """Layers, the I/O-free core, independent adoption servers: all kept on the code as it is."""
    run = _lint_imports(ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert " broken" in run.stdout
    assert "0 broken" in run.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        # An upward arrow: the schema (a leaf) reaching for the plug-in registry, which is how
        # the old policy/config.py -> registry -> base -> config circle started.
        ("spec.py", "from autoscaler.policy import registry", "Layers"),
        # The core reaching for an I/O client.
        ("decision/state.py", "import aiohttp", "The pure core imports no I/O client"),
        # A metrics adapter importing the telemetry above it (the old prometheus <-> telemetry).
        ("metrics/prometheus.py", "from autoscaler import telemetry", "Layers"),
        # The KEDA scaler borrowing from the external-metrics server (it once read its store).
        ("server/keda.py", "from autoscaler.server import external_metrics",
         "The adoption servers do not import each other"),
    ],
    ids=["schema-imports-registry", "core-imports-aiohttp", "metrics-imports-telemetry",
         "keda-imports-external-metrics"],
)
def test_contracts_catch_a_violation(tmp_path: Path, module: str, line: str, broken: str) -> None:
    """The same contracts on a copy of the package with one bad import added: broken."""
    shutil.copytree(ROOT / "autoscaler", tmp_path / "autoscaler",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "autoscaler" / module
    target.write_text(target.read_text() + f"\n{line}  # injected by the test\n")
    run = _lint_imports(tmp_path)
    assert run.returncode != 0, run.stdout
    assert f"{broken}" in run.stdout
    assert "1 broken" in run.stdout
