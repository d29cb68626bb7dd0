"""The test-environment cache (tests/k8senv/cached_build.sh) is built atomically.

An interrupted build once left `.complete` written but no kwok stage files, and every k8s test
failed until the cache was repaired by hand. The frame now builds into a temporary stage,
checks the required files, stamps and renames: a cache directory is complete or absent.

These tests drive the real shell frame with a build that writes files instead of compiling
(a stand-in `go` answers only `go env GOPROXY`), in a temporary PD_CACHE: no Go build, and the
machine's real cache is never touched.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

K8SENV = Path(__file__).resolve().parents[1] / "k8senv"

# A build in the shape of build.sh: required files, then finish. STEP decides how it ends.
BUILD = """#!/usr/bin/env bash
set -euo pipefail
PD_CACHE=${PD_CACHE:?}
OUT="$PD_CACHE/thing-v1"
source "%(frame)s"
begin_cached_build thing.sh "$OUT" .thing.lock bin/tool stages/pod/ready.yaml
echo built > "$BIN/tool"; chmod +x "$BIN/tool"
echo "$(date +%%s%%N)" >> "$PD_CACHE/build-count"
if [[ "${STEP:-}" == kill ]]; then kill -9 $$; fi
if [[ "${STEP:-}" != no-stages ]]; then
  mkdir -p "$STAGE/stages/pod" && echo stage > "$STAGE/stages/pod/ready.yaml"
fi
finish_cached_build
"""


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    fake_bin = tmp_path / "fakebin"
    fake_bin.mkdir()
    go = fake_bin / "go"
    go.write_text('#!/bin/sh\n[ "$1 $2" = "env GOPROXY" ] && echo "off"\n', encoding="utf-8")
    go.chmod(0o755)
    script = tmp_path / "thing.sh"
    script.write_text(BUILD % {"frame": K8SENV / "cached_build.sh"}, encoding="utf-8")
    cache = tmp_path / "cache"
    return {
        "PATH": f"{fake_bin}:{os.environ['PATH']}",
        "PD_CACHE": str(cache),
        "HOME": str(tmp_path),
        "SCRIPT": str(script),
    }


def run(env: dict[str, str], **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", env["SCRIPT"]], env={**env, **extra}, capture_output=True,
                          text=True, check=False, timeout=60)


def builds(env: dict[str, str]) -> int:
    f = Path(env["PD_CACHE"]) / "build-count"
    return len(f.read_text().split()) if f.exists() else 0


def test_build_is_renamed_into_place_complete(env: dict[str, str]) -> None:
    r = run(env)
    out = Path(env["PD_CACHE"]) / "thing-v1"
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == str(out / "bin")
    assert (out / ".complete").is_file()
    assert (out / "stages/pod/ready.yaml").is_file()
    assert not list(Path(env["PD_CACHE"]).glob("thing-v1.stage.*"))
    # Complete: the next call is a no-op.
    assert run(env).returncode == 0
    assert builds(env) == 1


def test_interrupted_build_leaves_no_cache_dir(env: dict[str, str]) -> None:
    """Killed after the binary but before the stage files: no stamped directory appears, and
    the next run builds it whole."""
    r = run(env, STEP="kill")
    assert r.returncode != 0
    out = Path(env["PD_CACHE"]) / "thing-v1"
    assert not out.exists()
    r = run(env)
    assert r.returncode == 0, r.stderr
    assert (out / "stages/pod/ready.yaml").is_file()
    assert builds(env) == 2
    # The interrupted stage was cleaned up by the next build.
    assert not list(Path(env["PD_CACHE"]).glob("thing-v1.stage.*"))


def test_build_missing_a_required_file_is_not_installed(env: dict[str, str]) -> None:
    r = run(env, STEP="no-stages")
    assert r.returncode == 1
    assert "finished without stages/pod/ready.yaml" in r.stderr
    assert not (Path(env["PD_CACHE"]) / "thing-v1").exists()


def test_old_stamped_but_incomplete_cache_is_rebuilt(env: dict[str, str]) -> None:
    """The state the issue found: `.complete` written, kwok's stages missing."""
    out = Path(env["PD_CACHE"]) / "thing-v1"
    (out / "bin").mkdir(parents=True)
    (out / "bin/tool").write_text("old", encoding="utf-8")
    (out / ".complete").touch()
    r = run(env)
    assert r.returncode == 0, r.stderr
    assert (out / "stages/pod/ready.yaml").is_file()
    assert (out / "bin/tool").read_text(encoding="utf-8") == "built\n"
    assert builds(env) == 1


def test_no_go_build_refuses_instead_of_building(env: dict[str, str]) -> None:
    r = run(env, PD_NO_GO_BUILD="1")
    assert r.returncode == 3
    assert "PD_NO_GO_BUILD=1" in r.stderr
    assert builds(env) == 0


@pytest.mark.parametrize("script", ["build.sh", "build_keda.sh"])
def test_real_build_scripts_use_the_frame(env: dict[str, str], script: str) -> None:
    """build.sh and build_keda.sh on an empty cache with PD_NO_GO_BUILD=1: they check their
    required files through the frame and refuse (no compile starts, nothing is created)."""
    r = subprocess.run(["bash", str(K8SENV / script)], env={**env, "PD_NO_GO_BUILD": "1"},
                       capture_output=True, text=True, check=False, timeout=60)
    assert r.returncode == 3, r.stderr
    assert "is not built and PD_NO_GO_BUILD=1" in r.stderr
    assert not Path(env["PD_CACHE"]).exists()


def test_fast_suite_kubectl_needs_no_build() -> None:
    """The kubectl the fast suite renders manifests with is not the k8senv-built one, and its
    kustomize understands the manifests' `labels:` (kustomize >= v4.1)."""
    from tests import kubectl  # noqa: PLC0415

    exe = kubectl.find()
    # build.sh's output is <PD_CACHE>/k8s-<versions>/bin/kubectl.
    assert not exe.resolve().parent.parent.name.startswith("k8s-v"), exe
    out = subprocess.run([str(exe), "version", "--client"], capture_output=True, text=True,
                         check=True).stdout
    assert "Kustomize Version: v5" in out, out
