"""`profile check --prom-export` on a real Prometheus' range export of simulated vLLM pods.

`sim serve --aggregated` replays a known trace (Poisson 6 req/s, 500 prompt / 100 output tokens,
two pods of the 8B profile) in wall time; a real Prometheus scrapes the pods every second; the
`/api/v1/query_range` reply for the module's documented selector is written to a file, and
`profile check` with the same profile must reproduce each window's mean TTFT, end-to-end latency
and ITL. This crosses every boundary the feature has: vLLM-named families on pods' own ports,
Prometheus' storage and range API, the JSON file, the window arithmetic and the replay.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from autoscaler import cli
from autoscaler.sim.prom_export import QUERY, experiments_from_export
from tests.prom.promserver import PromServer, eventually

pytestmark = pytest.mark.prometheus

RATE = 6.0
WINDOW_S = 20.0
RUN_S = 70.0


def _trace(path: Path) -> Path:
    rng = np.random.default_rng(3)
    arrival = np.cumsum(rng.exponential(1.0 / RATE, int(RATE * 600)))
    lines = ["timestamp_s,input_tokens,output_tokens"]
    lines += [f"{t:.4f},500,100" for t in arrival]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_range_export_round_trip(
    tmp_path: Path, private_prom: PromServer, capsys: pytest.CaptureFixture[str]
) -> None:
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "autoscaler", "--log-format", "json", "sim", "serve"),
            *("--port", "0", "--replicas", "2", "--speedup", "1", "--aggregated"),
            *("--trace", str(_trace(tmp_path / "trace.csv"))),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        entries = requests.get(f"{url}/targets", timeout=5).json()
        assert len(entries) == 2
        private_prom.set_targets("vllm", "simserve", entries)
        eventually(lambda: len(private_prom.query('up{namespace="sim"} == 1')) == 2)
        start = time.time()
        time.sleep(RUN_S)
        end = time.time()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
    query = QUERY[:-1] + ', namespace="sim"}'
    r = requests.post(
        f"{private_prom.url}/api/v1/query_range",
        data={"query": query, "start": start, "end": end, "step": "1s"},
        timeout=30,
    )
    r.raise_for_status()
    export = tmp_path / "export.json"
    export.write_text(r.text)

    exps = experiments_from_export(
        export, profile="llama-8b-h100", window_s=WINDOW_S, min_requests=50
    )
    assert len(exps) >= 3
    for e in exps:
        assert e.replicas == 2
        # The lengths come from the per-request histograms, observed as each request finishes
        # (the token counters' ratio was off by the requests in flight at a window's edges,
        # up to 6 % on a loaded machine).
        assert e.input_len == 500
        assert e.output_len == 100
        assert e.rate == pytest.approx(RATE, rel=0.35)  # Poisson counts over 20 s
        assert set(e.points) == {"mean_ttft_ms", "mean_e2e_ms", "mean_itl_ms"}

    rc = cli.main(["profile", "check", "--prom-export", str(export), "--window-s",
                   str(WINDOW_S), "--min-requests", "50"])  # fmt: skip
    assert rc == 0
    out = capsys.readouterr().out
    errs = [float(m) for m in re.findall(r"([+-]\d+\.\d)%$", out, flags=re.MULTILINE)]
    assert len(errs) == 3 * len(exps), out
    # The same engine on both sides: what differs is the replay's Poisson draw and its empty
    # start against the pods' steady state, and Prometheus' scrape timing at window edges.
    assert max(abs(e) for e in errs) <= 15.0, out
    print(json.dumps({"windows": len(exps), "errors_pct": errs}))

    # The same range fetched by the CLI itself (prometheus-api-client), written to a file and
    # read back: the same windows and lengths (its start is rounded to a whole second).
    fetched = tmp_path / "fetched.json"
    rc = cli.main(["profile", "check", "--prometheus", private_prom.url,
                   "--match", 'namespace="sim"', "--end", f"{end:.3f}",
                   "--last-s", f"{end - start:.3f}", "--step-s", "1",
                   "--save-export", str(fetched),
                   "--window-s", str(WINDOW_S), "--min-requests", "50"])  # fmt: skip
    assert rc == 0
    again = experiments_from_export(
        fetched, profile="llama-8b-h100", window_s=WINDOW_S, min_requests=50
    )
    assert abs(len(again) - len(exps)) <= 1
    for e in again:
        assert e.replicas == 2
        assert (e.input_len, e.output_len) == (500, 100)
