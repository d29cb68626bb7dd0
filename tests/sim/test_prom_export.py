"""Prometheus range exports as measurements for `profile fit|check`.

Hand-built exports (two pods, a restart) pin the arithmetic: windows, counter increases across
a reset, lengths per request, replicas, histogram means; bad exports name file and field.
The real-Prometheus round trip is tests/prom/test_prom_export_roundtrip.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from autoscaler import cli, errors
from autoscaler.sim.prom_export import experiments_from_export

pytestmark = pytest.mark.sim

T0 = 1_700_000_000.0


def _series(name: str, pod: str, values: list[float], step: float = 15.0) -> dict[str, Any]:
    return {
        "metric": {"__name__": name, "pod": pod, "namespace": "llm"},
        "values": [[T0 + i * step, str(v)] for i, v in enumerate(values)],
    }


def _body(series: list[dict[str, Any]]) -> dict[str, Any]:
    return {"status": "success", "data": {"resultType": "matrix", "result": series}}


def _pod(pod: str, per_step: float, *, reset_at: int | None = None) -> list[dict[str, Any]]:
    """41 samples 15 s apart (600 s): `per_step` requests per step, 500 prompt and 100 output
    tokens each, TTFT 0.05 s, e2e 2 s, ITL 0.02 s; the counters restart at `reset_at`."""

    def counter(per: float) -> list[float]:
        vals, v = [], 0.0
        for i in range(41):
            if i == reset_at:
                v = per  # restarted just after the previous sample: counts since then
            vals.append(v)
            v += per
        return vals

    n = per_step
    return [
        _series("vllm:request_success_total", pod, counter(n)),
        _series("vllm:prompt_tokens_total", pod, counter(500 * n)),
        _series("vllm:generation_tokens_total", pod, counter(100 * n)),
        _series("vllm:time_to_first_token_seconds_sum", pod, counter(0.05 * n)),
        _series("vllm:time_to_first_token_seconds_count", pod, counter(n)),
        _series("vllm:e2e_request_latency_seconds_sum", pod, counter(2.0 * n)),
        _series("vllm:e2e_request_latency_seconds_count", pod, counter(n)),
        _series("vllm:inter_token_latency_seconds_sum", pod, counter(0.02 * 99 * n)),
        _series("vllm:inter_token_latency_seconds_count", pod, counter(99 * n)),
    ]


def test_windows_increases_and_means(tmp_path: Path) -> None:
    """Two pods of 30 requests per 15 s each, one restarted mid-export: two 300 s windows of
    1,200 requests (20 steps x 2 pods x 30; windows share their edge sample, so none falls
    between two), 4 req/s, 2 replicas, 500/100 tokens, TTFT 50 ms, e2e 2 s, ITL 20 ms; the
    reset loses nothing."""
    p = tmp_path / "export.json"
    p.write_text(json.dumps(_body(_pod("a", 30.0) + _pod("b", 30.0, reset_at=27))))
    exps = experiments_from_export(p, profile="llama-8b-h100", window_s=300.0)
    assert len(exps) == 2
    for e in exps:
        assert e.replicas == 2
        assert (e.input_len, e.output_len) == (500, 100)
        assert e.num_prompts == 1200
        assert e.rate == pytest.approx(4.0)
        assert e.points == pytest.approx(
            {"mean_ttft_ms": 50.0, "mean_e2e_ms": 2000.0, "mean_itl_ms": 20.0}
        )
    assert exps[0].id == "export@0s"
    assert exps[1].id == "export@300s"


def test_lengths_come_from_the_per_request_histograms_when_exported(tmp_path: Path) -> None:
    """The counters say 500/100 tokens per finished request, the per-request histograms say
    640/80 (what the finished requests themselves had, e.g. while long prompts are still in
    flight at a window's edge): the histograms win. Without them the counters are used (the
    test above)."""
    n = 30.0
    hists = [
        _series(name, pod, [v * i for i in range(41)])
        for pod in ("a", "b")
        for name, v in (("vllm:request_prompt_tokens_sum", 640 * n),
                        ("vllm:request_prompt_tokens_count", n),
                        ("vllm:request_generation_tokens_sum", 80 * n),
                        ("vllm:request_generation_tokens_count", n))
    ]
    p = tmp_path / "export.json"
    p.write_text(json.dumps(_body(_pod("a", n) + _pod("b", n) + hists)))
    exps = experiments_from_export(p, profile="llama-8b-h100", window_s=300.0)
    assert [(e.input_len, e.output_len) for e in exps] == [(640, 80), (640, 80)]


def test_quiet_windows_are_skipped_and_a_list_of_bodies_is_read(tmp_path: Path) -> None:
    """A list of query_range bodies (one query per family) reads like one body; windows under
    --min-requests are skipped, and all of them skipped is an error naming the file."""
    p = tmp_path / "export.json"
    p.write_text(json.dumps([_body([s]) for s in _pod("a", 2.0)]))
    exps = experiments_from_export(p, profile="llama-8b-h100", window_s=150.0, min_requests=20)
    assert [e.num_prompts for e in exps] == [20, 20, 20, 20]
    with pytest.raises(errors.ConfigError, match="no window of 150 s has 50"):
        experiments_from_export(p, profile="llama-8b-h100", window_s=150.0, min_requests=50)


_THREE = [
    _series("vllm:request_success_total", "a", [1, 2]),
    _series("vllm:prompt_tokens_total", "a", [1, 2]),
    _series("vllm:generation_tokens_total", "a", [1, 2]),
]
BAD = [
    pytest.param({"status": "error", "error": "x"}, "status success", id="error-reply"),
    pytest.param(
        {"status": "success", "data": {"resultType": "vector", "result": []}},
        "expected matrix",
        id="instant-query",
    ),
    pytest.param(
        _body([{"metric": {"pod": "a"}, "values": [[T0, "1"]]}]),
        r"data.result\[0\].metric.__name__",
        id="no-name",
    ),
    pytest.param(
        _body([{"metric": {"__name__": "x"}, "values": [["t"]]}]),
        r"values\[0\]: expected \[time, value\]",
        id="bad-sample",
    ),
    pytest.param(_body(_pod("a", 5.0)[1:]), "no vllm:request_success_total", id="missing-family"),
    pytest.param(_body(_THREE), "less than one --window-s", id="too-short"),
]


@pytest.mark.parametrize(("doc", "match"), BAD)
def test_bad_exports_name_file_and_field(tmp_path: Path, doc: Any, match: str) -> None:
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(errors.ConfigError, match=match) as ei:
        experiments_from_export(p, profile="llama-8b-h100")
    assert str(p) in str(ei.value)


def test_check_cli_reads_an_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`profile check --prom-export` replays each window and prints its per-point error; no
    measurement at all is a one-line error."""
    p = tmp_path / "export.json"
    p.write_text(json.dumps(_body(_pod("a", 15.0) + _pod("b", 15.0))))
    assert cli.main(["profile", "check", "--prom-export", str(p), "--window-s", "300"]) == 0
    out = capsys.readouterr().out
    assert "export@0s" in out
    assert "mean_itl_ms" in out
    assert "6 points:" in out
    assert cli.main(["profile", "check"]) == 2
    assert "no measurements" in capsys.readouterr().err


def test_fit_from_an_export_alone_cannot_fit_frontend(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """vLLM's histograms start after the front end: asking to fit frontend_ms from exports
    alone is a one-line error, not a constant fitted to noise."""
    p = tmp_path / "export.json"
    p.write_text(json.dumps(_body(_pod("a", 15.0))))
    args = ["profile", "fit", "--prom-export", str(p), "--out", str(tmp_path / "x.yaml")]
    assert cli.main(args) == 2
    assert "frontend_ms" in capsys.readouterr().err
    assert not (tmp_path / "x.yaml").exists()


def _itl_errors(out: str) -> list[float]:
    return [float(ln.split()[-1].rstrip("%")) for ln in out.splitlines() if "mean_itl_ms" in ln]


def test_fit_from_an_export_moves_toward_its_itl(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`profile fit --prom-export` fits the per-step decode cost toward the export's ITL (20 ms
    per token at a light load, where the 8B profile's step is about 7 ms: -66 %). The hand-made
    export's TTFT (50 ms) is not one the model produces with the same step, so the fit is a
    compromise over all points; the written profile must at least halve the ITL error."""
    p = tmp_path / "export.json"
    p.write_text(json.dumps(_body(_pod("a", 5.0))))
    check = ["profile", "check", "--prom-export", str(p), "--min-requests", "20"]
    assert cli.main(check) == 0
    before = _itl_errors(capsys.readouterr().out)
    out = tmp_path / "fitted.yaml"
    args = ["profile", "fit", "--prom-export", str(p), "--params", "decode_alpha_ms",
            "--max-evaluations", "40", "--min-requests", "20", "--out", str(out)]  # fmt: skip
    assert cli.main(args) == 0
    capsys.readouterr()
    assert cli.main([*check, "--profile", str(out)]) == 0
    after = _itl_errors(capsys.readouterr().out)
    assert before
    assert len(after) == len(before)
    assert all(b < -50 for b in before), before
    assert all(abs(a) < abs(b) / 2 for a, b in zip(after, before, strict=True)), (before, after)
