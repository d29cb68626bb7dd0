"""The distributed path against a real PostgreSQL (Debian's package, a throw-away cluster on
127.0.0.1): two `pd-autoscaler tune` processes fill one study; a killed run resumes; both for
each objective (`pareto`'s reference, the input's trial 0, must be the same for every worker)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.tune.conftest import POOR_POLICY, code_trace, write_azure_csv
from tests.tune.pgserver import PgServer, ensure_postgres

pytestmark = [pytest.mark.postgres, pytest.mark.sim]


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    server = PgServer(ensure_postgres())
    server.start()
    yield server
    server.stop()


def _tune(
    trace: Path, out: Path, url: str, study: str, trials: int, *, objective: str = "target"
) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "autoscaler", "tune", "--trace", str(trace), "--policy",
            str(POOR_POLICY), "--out", str(out), "--storage", url, "--study", study,
            "--trials", str(trials), "--no-yardsticks", "--objective", objective]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _trials(url: str, study: str) -> list[optuna.trial.FrozenTrial]:
    storage = optuna.storages.RDBStorage(url)
    try:
        return optuna.load_study(study_name=study, storage=storage).get_trials()
    except KeyError:  # not created yet
        return []
    finally:
        storage.remove_session()
        storage.engine.dispose()


def _wait(proc: subprocess.Popen[bytes], timeout: float = 300) -> None:
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err.decode()[-3000:]


def _objective_line(out: Path) -> str:
    return next(line for line in out.read_text().splitlines() if "objective:" in line)


OBJECTIVES = pytest.mark.parametrize("objective", ["target", "pareto"])


@OBJECTIVES
def test_two_workers_contribute_to_one_study(
    pg: PgServer, tmp_path: Path, objective: str
) -> None:
    trace = write_azure_csv(code_trace(), tmp_path / "code.csv")
    name = f"two-workers-{objective}"
    a = _tune(trace, tmp_path / "a.yaml", pg.url, name, 12, objective=objective)
    b = _tune(trace, tmp_path / "b.yaml", pg.url, name, 12, objective=objective)
    _wait(a)
    _wait(b)
    done = [t for t in _trials(pg.url, name) if t.state == TrialState.COMPLETE]
    # Each worker stops once the study holds 12; the other may finish the trial it had begun.
    assert 12 <= len(done) <= 13
    pids = {int(t.user_attrs["worker"].rsplit(":", 1)[1]) for t in done}
    assert pids == {a.pid, b.pid}
    # Trial numbers are the study's, shared: no duplicates, one sequence.
    numbers = sorted(t.number for t in done)
    assert len(set(numbers)) == len(numbers)
    # Both wrote a tuned policy from the same study.
    assert (tmp_path / "a.yaml").exists()
    assert (tmp_path / "b.yaml").exists()
    # Both state the objective; under pareto, the same reference: trial 0's measurement, or the
    # same replay of the input by the worker that found trial 0 taken.
    line_a, line_b = _objective_line(tmp_path / "a.yaml"), _objective_line(tmp_path / "b.yaml")
    assert f"objective: {objective}" in line_a
    assert line_a == line_b
    if objective == "pareto":
        first = next(t for t in done if t.number == 0)
        a0 = first.user_attrs
        assert f"({100 * a0['attainment']:.2f} %, {a0['gpu_hours']:.2f} GPU-h)" in line_a


@OBJECTIVES
def test_interrupted_study_resumes(pg: PgServer, tmp_path: Path, objective: str) -> None:
    trace = write_azure_csv(code_trace(), tmp_path / "code.csv")
    name = f"resume-{objective}"
    first = _tune(trace, tmp_path / "first.yaml", pg.url, name, 10, objective=objective)
    deadline = time.monotonic() + 240
    while True:
        done = [t for t in _trials(pg.url, name) if t.state == TrialState.COMPLETE]
        if len(done) >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    os.kill(first.pid, signal.SIGKILL)
    first.communicate()
    before = {t.number: t.params for t in _trials(pg.url, name)
              if t.state == TrialState.COMPLETE}  # fmt: skip
    assert 3 <= len(before) < 10, "the first run was to be interrupted part-way"
    assert not (tmp_path / "first.yaml").exists()
    again = _tune(trace, tmp_path / "again.yaml", pg.url, name, 10, objective=objective)
    _wait(again)
    after = _trials(pg.url, name)
    done = {t.number: t for t in after if t.state == TrialState.COMPLETE}
    assert len(done) == 10
    # The interrupted run's trials are kept as they were and count towards the 10.
    for number, params in before.items():
        assert done[number].params == params
    mine = [t for t in done.values() if t.user_attrs["worker"].endswith(f":{again.pid}")]
    assert len(mine) == 10 - len(before)
    # The killed run's trial in flight is left RUNNING until its heartbeat's grace period
    # ends (then the next worker marks it failed); it never counts as a result.
    stale = [t for t in after if t.state not in (TrialState.COMPLETE, TrialState.WAITING)]
    assert all(t.state in (TrialState.RUNNING, TrialState.FAIL) for t in stale)
    assert (tmp_path / "again.yaml").exists()
