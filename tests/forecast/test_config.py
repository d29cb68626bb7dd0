"""Forecast config validation: errors name the field path and value, through the policy file."""

from __future__ import annotations

import pytest

from autoscaler import errors
from autoscaler.policy.forecast import ForecastConfig
from autoscaler.policy.load import parse_policy
from tests.forecast.conftest import policy, role_spec

DOC = """
pools:
  - name: p
    roles:
      prefill:
        deployment: {{name: p-prefill}}
        max_replicas: 4
        signals: [{{signal: batched_tokens, target: 0.5}}]
        policies: [{{kind: forecast, {field}}}]
      decode:
        deployment: {{name: p-decode}}
        max_replicas: 4
        signals: [{{signal: kv_cache, target: 0.7}}]
"""


@pytest.mark.parametrize(
    ("field", "message"),
    [
        pytest.param(
            "quantile: 1.5",
            "policies.0.quantile: Input should be less than 1 (got 1.5)",
            id="quantile",
        ),
        pytest.param(
            "model: prophet", "policies.0.model: Input should be 'auto', 'local', 'holt'", id="model"
        ),
        pytest.param(
            "horizon: 60", "policies.0.horizon: Extra inputs are not permitted", id="unknown-field"
        ),
        pytest.param(
            "series: tokens", "policies.0.series: Input should be 'request_rate'", id="series"
        ),
        pytest.param(
            "bin_s: 70", "season_s 86400 must be a whole number of bin_s 70", id="season-bins"
        ),
        pytest.param(
            "model: holt_winters, history_s: 86400",
            "history_s 86400 must hold 2 seasons (172800)",
            id="history-seasons",
        ),
        pytest.param(
            "refit_every_s: 10", "policies.0.refit_every_s: Input should be greater", id="refit"
        ),
        pytest.param("capacity_per_replica: -1", "policies.0.capacity_per_replica", id="capacity"),
    ],
)
def test_errors_name_the_field(field: str, message: str) -> None:
    """Each bad value is reported with its path under the role's policies."""
    with pytest.raises(errors.ConfigError) as exc:
        parse_policy(DOC.format(field=field), source="f.yaml")
    text = "\n".join(exc.value.problems)
    assert "f.yaml: pools.0.roles.prefill." in text
    assert message in text


def test_defaults_are_documented() -> None:
    """Every field carries a description (it feeds `validate --explain`)."""
    for name, f in ForecastConfig.model_fields.items():
        assert f.description, name


def test_valid_config_and_default_horizon() -> None:
    """The default horizon is the role's cold start plus one tick."""
    parse_policy(DOC.format(field="model: auto"), source="f.yaml")
    p = policy(role_spec(cold_start_s=90), tick_s=15)
    assert p.settings.horizon_s == 105
    assert policy(horizon_s=300).settings.horizon_s == 300


def test_running_series_needs_running_signal() -> None:
    """series running on a role without a running signal is refused at build time."""
    with pytest.raises(errors.ConfigError, match="series running needs a `running` signal"):
        policy(series="running")


def test_no_capacity_and_nothing_to_learn_from() -> None:
    """Without capacity_per_replica the role must have a load signal to learn it from."""
    spec = role_spec(signals=[{"signal": "queue_depth", "target": 2}])
    with pytest.raises(errors.ConfigError, match="needs capacity_per_replica, or a load signal"):
        policy(spec)
