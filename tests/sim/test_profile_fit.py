"""`pd-autoscaler profile fit / check`: measurements in, constants and per-point errors out.

The measurements are made by simulating a profile with a known constant, written as
`vllm bench serve --save-result` files; fitting from a different start must find the constant."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from autoscaler import cli, errors
from autoscaler.profile import builtin, load_profile
from autoscaler.sim.fidelity import DataFile, closed_loop_arrivals, run_experiment, simulate
from autoscaler.sim.profile_fit import experiment_from_bench_json, fit_profile

pytestmark = pytest.mark.sim


def bench_file(tmp_path: Path, name: str, rate: float, *, decode_alpha_ms: float) -> Path:
    """A --save-result JSON of a run of 300 requests (600 in / 150 out) at `rate`."""
    prof = builtin("llama-8b-h100").model_copy(update={"decode_alpha_ms": decode_alpha_ms})
    n = 300
    arrival = np.cumsum(np.random.default_rng(1).exponential(1.0 / rate, n))
    m = simulate(prof, arrival, np.full(n, 600), np.full(n, 150))
    doc = {
        "backend": "vllm", "model_id": "meta-llama/Llama-3.1-8B-Instruct",
        "num_prompts": n, "request_rate": rate, "max_concurrency": None, "completed": n,
        "total_input_tokens": 600 * n, "total_output_tokens": 150 * n,
        "mean_ttft_ms": m["mean_ttft_ms"], "median_ttft_ms": m["median_ttft_ms"],
        "mean_tpot_ms": m["mean_tpot_ms"], "median_tpot_ms": m["median_tpot_ms"],
        "mean_e2el_ms": m["mean_e2e_ms"], "request_throughput": m["request_throughput"],
    }  # fmt: skip
    p = tmp_path / f"{name}.json"
    p.write_text(json.dumps(doc))
    return p


def test_fit_recovers_a_known_constant_and_writes_a_loadable_profile(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = [bench_file(tmp_path, f"r{r}", r, decode_alpha_ms=11.0) for r in (2.0, 8.0)]
    out = tmp_path / "mine.yaml"
    rc = cli.main(["profile", "fit", *map(str, files), "--params", "decode_alpha_ms",
                   "--out", str(out)])  # fmt: skip
    assert rc == 0
    fitted = load_profile(out)
    assert fitted.decode_alpha_ms == pytest.approx(11.0, rel=0.03)
    assert fitted.name == "mine"
    text = capsys.readouterr().out
    assert "decode_alpha_ms" in text
    assert "standard error" in text
    # check: the fitted profile replays the measurements within 3 % at every point.
    rc = cli.main(["profile", "check", *map(str, files), "--profile", str(out)])
    assert rc == 0
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("r")]
    assert len(rows) == 2 * 6
    # Latencies replay within 3 %; throughput depends on the arrival draw (the replay draws its
    # own Poisson arrivals at the file's rate), so it only has to be in the right range.
    for ln in rows:
        err = abs(float(ln.split()[-1].rstrip("%")))
        assert err < (20.0 if "throughput" in ln else 3.0), ln


def test_check_with_the_wrong_profile_shows_the_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Measurements of a 30 % slower decode against the built-in: TPOT comes out too low."""
    f = bench_file(tmp_path, "slow", 4.0, decode_alpha_ms=8.1 * 1.3)
    assert cli.main(["profile", "check", str(f)]) == 0
    tpot = [ln for ln in capsys.readouterr().out.splitlines() if "mean_tpot_ms" in ln]
    assert float(tpot[0].split()[-1].rstrip("%")) < -15.0


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ({"completed": 0, "total_input_tokens": 1, "total_output_tokens": 1}, "no request"),
        ({"completed": 3, "total_input_tokens": "x", "total_output_tokens": 1},
         "total_input_tokens: expected a number"),
        ({"completed": 3, "total_input_tokens": 9, "total_output_tokens": 9, "max_concurrency": 4,
          "request_rate": 2.0, "mean_ttft_ms": 5}, "max_concurrency: 4 with request_rate 2"),
        ({"completed": 3, "total_input_tokens": 9, "total_output_tokens": 9, "max_concurrency": 0,
          "mean_ttft_ms": 5}, "max_concurrency: expected an integer >= 1"),
        ({"completed": 3, "total_input_tokens": 9, "total_output_tokens": 9}, "no metric"),
    ],
)  # fmt: skip
def test_bad_result_files_name_file_and_field(
    tmp_path: Path, doc: dict[str, object], match: str
) -> None:
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(errors.ConfigError, match=match) as ei:
        experiment_from_bench_json(p, profile="llama-8b-h100")
    assert str(p) in str(ei.value)


@pytest.mark.parametrize(
    ("robust_scale", "lands_within"),
    [
        # Soft-L1: the one tail-inflated mean counts little, the other points set the constant.
        (0.10, 0.10),
        # Plain least squares: the same point drags the constant far off.
        (None, None),
    ],
)  # fmt: skip
def test_one_tail_inflated_mean_does_not_drag_a_robust_fit(
    tmp_path: Path, robust_scale: float | None, lands_within: float | None
) -> None:
    """Measurements made with frontend_ms 20 at three rates; the mean TTFT of the busiest run is
    doubled, as a latency tail the engine does not produce would (the 70B TP4 run at 20 req/s:
    mean 121 ms over a median of 68). Fitted from 60 ms, the robust fit finds 20 within 10 % (about 6 %); the
    least-squares fit lands more than 20 % away (about 27 %)."""
    prof = builtin("llama-8b-h100").model_copy(update={"frontend_ms": 20.0})
    exps = []
    for rate in (2.0, 4.0, 8.0):
        f = bench_file(tmp_path, f"r{rate:g}", rate, decode_alpha_ms=prof.decode_alpha_ms)
        doc = json.loads(f.read_text())
        # bench_file simulates the built-in (frontend 24.3); shift to the profile's 20 ms.
        for k in ("mean_ttft_ms", "median_ttft_ms", "mean_e2el_ms"):
            doc[k] -= 24.3 - 20.0
        if rate == 8.0:
            doc["mean_ttft_ms"] *= 2.0
        f.write_text(json.dumps(doc))
        exps.append(experiment_from_bench_json(f, profile=prof.name))
    start = prof.model_copy(update={"frontend_ms": 60.0})
    res = fit_profile(
        start, exps, DataFile(sources={}, datasets={}), params=["frontend_ms"],
        robust_scale=robust_scale,
    )  # fmt: skip
    err = abs(res.profile.frontend_ms - 20.0) / 20.0
    if lands_within is not None:
        assert err < lands_within, res.profile.frontend_ms
    else:
        assert err > 0.20, res.profile.frontend_ms


def test_a_closed_loop_result_file_is_replayed_as_one(tmp_path: Path) -> None:
    """`vllm bench serve --max-concurrency 4 --request-rate inf`: the file's run is replayed as
    the closed loop it was (4 in flight), not as 60 requests sent at once, which would queue
    56 of them behind the first batch and read as a far longer TTFT."""
    prof = builtin("llama-8b-h100").model_copy(update={"decode_alpha_ms": 11.0})
    n, c = 60, 4
    prompt, output = np.full(n, 1200), np.full(n, 200)
    m = simulate(prof, closed_loop_arrivals(prof, prompt, output, c), prompt, output)
    doc = {
        "num_prompts": n, "request_rate": "inf", "max_concurrency": c, "completed": n,
        "total_input_tokens": 1200 * n, "total_output_tokens": 200 * n,
        "mean_ttft_ms": m["mean_ttft_ms"], "mean_tpot_ms": m["mean_tpot_ms"],
    }  # fmt: skip
    f = tmp_path / "c4.json"
    f.write_text(json.dumps(doc))
    exp = experiment_from_bench_json(f, profile="llama-8b-h100")
    assert exp.concurrency == c
    replay = run_experiment(exp, DataFile(sources={}, datasets={}), profile=prof)
    assert replay["mean_ttft_ms"] == pytest.approx(m["mean_ttft_ms"], rel=1e-6)
    assert replay["mean_tpot_ms"] == pytest.approx(m["mean_tpot_ms"], rel=1e-6)
    burst = simulate(prof, np.zeros(n), prompt, output)
    assert burst["mean_ttft_ms"] > 3 * m["mean_ttft_ms"]

