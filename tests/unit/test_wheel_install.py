"""What the image build does, without a container engine (issue 12): build the wheel from a
clean clone, install it with constraints.txt into a fresh venv, run the installed command.

The image once shipped an empty placeholder package (an in-tree build reused a stale
build/lib), so `pd-autoscaler --version` failed with an ImportError and the kind path ended in
CrashLoopBackOff, while the only Dockerfile test read its text. This test runs the same steps
as the Dockerfile's build stage (pip wheel --no-deps of the tree, pip install -c
constraints.txt of the wheel, no extras) and checks the result runs, pins what the
constraints say, and carries none of the simulator-only dependencies.

Marked `image`: it takes a minute or two (dependency downloads; pip's cache helps), so it runs
in `make test` and not in `make test-fast`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from autoscaler import __version__

pytestmark = pytest.mark.image

ROOT = Path(__file__).resolve().parents[2]
SIM_ONLY = ("matplotlib", "rich", "optuna", "psycopg")


def _run(*cmd: str | Path, cwd: Path | None = None, timeout: float = 900) -> str:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd,
                       timeout=timeout, check=False)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} failed ({r.returncode}):\n{r.stderr}"
    return r.stdout


def _dockerfile_build_steps() -> str:
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text(encoding="utf-8"))
    return "\n".join(ln for ln in text.splitlines() if ln.startswith("RUN "))


def test_dockerfile_builds_the_way_this_test_does() -> None:
    """If the Dockerfile's build stage changes shape, this test must change with it."""
    steps = _dockerfile_build_steps()
    assert "pip wheel --no-cache-dir --no-deps --wheel-dir /wheels ." in steps
    assert "pip install --no-cache-dir -c constraints.txt /wheels/pd_autoscaler-*.whl" in steps
    ignore = (ROOT / ".dockerignore").read_text(encoding="utf-8")
    assert "!constraints.txt" in ignore


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin directory of a fresh venv holding the wheel built from a clean clone."""
    if shutil.which("git") is None:
        pytest.fail("git is needed to make a clean clone")
    tmp = tmp_path_factory.mktemp("wheel")
    clone = tmp / "clone"
    _run("git", "clone", "--quiet", "--no-hardlinks", ROOT, clone)
    assert not (clone / "build").exists()
    wheels = tmp / "wheels"
    _run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", wheels,
         clone)
    (wheel,) = wheels.glob("pd_autoscaler-*.whl")
    venv = tmp / "venv"
    _run(sys.executable, "-m", "venv", venv)
    _run(venv / "bin" / "python", "-m", "pip", "install", "--quiet",
         "--disable-pip-version-check", "-c", clone / "constraints.txt", wheel)
    return venv / "bin"


def test_installed_command_runs(installed: Path) -> None:
    out = _run(installed / "pd-autoscaler", "--version")
    assert out.strip() == f"pd-autoscaler {__version__}"
    help_text = _run(installed / "pd-autoscaler", "run", "--help")
    assert "--prometheus-url" in help_text


def test_controller_imports_without_the_sim_extra(installed: Path) -> None:
    """The controller's modules import in the image's environment; matplotlib and rich are not
    there, nor the tuner's optuna and PostgreSQL driver (all the `sim` extra)."""
    code = (
        "import importlib.util, autoscaler.controller, autoscaler.metrics.prometheus,"
        " autoscaler.sim.serve;"  # the kind overlay's simulated pods run from the image too
        f"print([m for m in {SIM_ONLY!r} if importlib.util.find_spec(m)])"
    )
    assert _run(installed / "python", "-c", code).strip() == "[]"
    r = subprocess.run([str(installed / "pd-autoscaler"), "backtest", "--trace", "x"],
                       capture_output=True, text=True, check=False, timeout=120)
    assert r.returncode == 2
    assert "pip install 'pd-autoscaler[sim]'" in r.stderr


def test_installed_versions_are_the_constraints(installed: Path) -> None:
    pins = {}
    for raw in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[_norm(name)] = version
    frozen = _run(installed / "python", "-m", "pip", "freeze", "--disable-pip-version-check")
    for line in frozen.splitlines():
        name, _, version = line.partition("==")
        if not version or _norm(name) in ("pd-autoscaler", "pip", "setuptools", "wheel"):
            continue
        assert _norm(name) in pins, f"{name} is installed but not pinned in constraints.txt"
        assert pins[_norm(name)] == version, f"{name}: {version} != {pins[_norm(name)]}"
    _run(installed / "python", "-m", "pip", "check", "--disable-pip-version-check")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()
