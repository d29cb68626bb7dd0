"""llm-d's vLLM simulator (llm-d-inference-sim), built from source when missing, run locally.

An independent emitter of vLLM metrics: if our queries only worked against our own fakes, a
shared misreading of vLLM would go unnoticed. Build: `go install ...@VERSION` into
~/.cache/pd-autoscaler/llmd-sim-VERSION with Go caches under ~/.cache/pd-autoscaler/go and the
local toolchain only. Some module proxies refuse the version *list* that `go install pkg@v`
reads for deprecation notices (403 on @v/list) while serving the module itself; the fallback
downloads the module (`go mod download`) and builds it in place with its own go.sum.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import requests

VERSION = "v0.10.2"
MODULE = "github.com/llm-d/llm-d-inference-sim"
CACHE = Path.home() / ".cache" / "pd-autoscaler"
BIN_DIR = CACHE / f"llmd-sim-{VERSION}"
BINARY = BIN_DIR / "llm-d-inference-sim"


def _go_env() -> dict[str, str]:
    go = CACHE / "go"
    return {
        **os.environ,
        "GOBIN": str(BIN_DIR),
        "GOPATH": str(go / "path"),
        "GOMODCACHE": str(go / "mod"),
        "GOCACHE": str(go / "build"),
        "GOTOOLCHAIN": "local",
        "GOFLAGS": "-buildvcs=false",
        # v0.8.0 and later are pure Go (VLLM-METRICS.md §7a).
        "CGO_ENABLED": "0",
    }


def ensure_binary() -> Path:
    """The simulator binary, built on first use (about 2.5 min on 2 cores, most of it
    downloading and compiling the Kubernetes client libraries it links)."""
    if BINARY.exists():
        return BINARY
    BIN_DIR.mkdir(parents=True, exist_ok=True)
    env = _go_env()
    pkg = f"{MODULE}/cmd/llm-d-inference-sim@{VERSION}"
    direct = subprocess.run(
        ["go", "install", pkg], check=False, env=env, capture_output=True, text=True
    )
    if direct.returncode != 0:
        dl = subprocess.run(
            ["go", "mod", "download", "-json", f"{MODULE}@{VERSION}"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        src = json.loads(dl.stdout)["Dir"]
        build = subprocess.run(
            ["go", "build", "-o", str(BINARY), "./cmd/llm-d-inference-sim"],
            check=False,
            cwd=src,
            env=env,
            capture_output=True,
            text=True,
        )
        assert build.returncode == 0, (
            f"go install failed:\n{direct.stderr[-2000:]}\ngo build failed:\n{build.stderr[-3000:]}"
        )
    assert BINARY.exists(), f"no binary at {BINARY}"
    return BINARY


class LlmdSim:
    """One simulator process on 127.0.0.1."""

    def __init__(self, port: int, *args: str, log: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        cmd = [
            str(ensure_binary()),
            "--port",
            str(port),
            "--model",
            "fake/model",
            "--force-dummy-tokenizer",
            *args,
        ]
        with log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, log.read_text()[-2000:]
            try:
                if requests.get(f"{self.url}/metrics", timeout=1).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise AssertionError(f"llm-d sim on {port} not up: {log.read_text()[-2000:]}")

    def complete(self, *, max_tokens: int) -> None:
        r = requests.post(
            f"{self.url}/v1/completions",
            json={"model": "fake/model", "prompt": "hello there", "max_tokens": max_tokens},
            timeout=30,
        )
        r.raise_for_status()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
