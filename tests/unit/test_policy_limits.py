"""Policy input limits (issue 17): size, depth, alias expansion and duplicate keys before a
document is built, every number in a sane range after, each refusal naming file, line or field
and value; and a large policy parsed off the event loop."""

from __future__ import annotations

import asyncio

import pytest

from autoscaler import errors, yamlsafe
from autoscaler.policy.load import parse_policy, parse_policy_async

ROLE = """\
pools:
  - name: p
    roles:
      aggregated:
        deployment: {{name: d}}
        max_replicas: {max_replicas}
        signals:
          - signal: queue_depth
            target: {target}
        behavior:
          tolerance: {tolerance}
          scale_up:
            stabilization_window_s: 0
            rules: [{{type: pods, value: {rule}, period_s: 15}}]
"""


def doc(**over: object) -> str:
    values: dict[str, object] = {"max_replicas": 8, "target": 5, "tolerance": 0.1, "rule": 4}
    values.update(over)
    return ROLE.format(**values)


def problems(text: str) -> str:
    with pytest.raises(errors.ConfigError) as info:
        parse_policy(text, source="cm/policy.yaml")
    return "\n".join(info.value.problems)


def test_control_document_parses() -> None:
    assert parse_policy(doc()).pools[0].roles  # the template itself is valid


@pytest.mark.parametrize(
    ("over", "field", "shown"),
    [
        ({"max_replicas": 10**400}, "max_replicas", "characters"),
        ({"max_replicas": 100_000}, "max_replicas", "100000"),
        ({"target": "inf"}, "target", "'inf'"),
        ({"target": ".inf"}, "target", "inf"),
        ({"target": "1e308"}, "target", "1e308"),
        ({"target": 1.0e308}, "target", "1e+308"),
        ({"target": 5e-324}, "target", "5e-324"),
        ({"target": 1.0e-308}, "target", "1e-308"),
        ({"target": ".nan"}, "target", "nan"),
        ({"tolerance": 0.9999999999999999}, "tolerance", "0.9999999999999999"),
        ({"rule": 4_000_000_000_000}, "rules.0.value", "4000000000000"),
        ({"rule": "4e12"}, "rules.0.value", "4e12"),
    ],
)
def test_numbers_out_of_range_name_file_field_and_value(
    over: dict[str, object], field: str, shown: str
) -> None:
    text = problems(doc(**over))
    assert text.startswith("cm/policy.yaml: pools.0.roles.aggregated.")
    assert field in text
    assert shown in text


def test_duplicate_key_names_line_and_key() -> None:
    text = doc().replace("max_replicas: 8\n", "max_replicas: 8\n        max_replicas: 800\n")
    msg = problems(text)
    assert "cm/policy.yaml: line 7, column 9:" in msg
    assert "duplicate key 'max_replicas' (first at line 6)" in msg


def test_merge_keys_are_not_duplicates() -> None:
    text = """\
base: &base {deployment: {name: d}, max_replicas: 8, signals: [{signal: running, target: 4}]}
pools:
  - name: p
    roles:
      aggregated:
        <<: *base
        max_replicas: 9
"""
    with pytest.raises(errors.ConfigError, match="base: Extra inputs"):
        parse_policy(text)  # only the unknown top-level key is wrong, not the merge


def test_deep_nesting_is_refused_before_it_is_built() -> None:
    """1,000 levels in 5 KB used to escape validation as RecursionError."""
    text = "pools: " + "[" * 1000 + "]" * 1000
    assert len(text) < 5000
    msg = problems(text)
    assert "cm/policy.yaml: line 1, column" in msg
    # libyaml's scanner stops at 1,000 flow levels on its own; below that, the prescan does.
    assert "nesting depth" in msg or "nested deeper" in msg
    msg = problems("pools: " + "[" * 200 + "]" * 200)
    assert f"cm/policy.yaml: line 1, column 39: nested deeper than {yamlsafe.MAX_DEPTH}" in msg


def test_deep_block_nesting_is_refused() -> None:
    text = "".join(f"{' ' * i}k{i}:\n" for i in range(200)) + " " * 200 + "v\n"
    assert "nested deeper" in problems(text)


def test_alias_bomb_is_refused() -> None:
    lines = ['a0: &a0 ["x","x","x","x","x","x","x","x","x","x"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    msg = problems("\n".join(lines) + "\n")
    assert f"more than {yamlsafe.MAX_NODES} nodes once aliases expand" in msg


def test_oversized_document_is_refused_by_size() -> None:
    text = doc() + "#" * yamlsafe.MAX_BYTES
    assert "a policy may be at most 1048576 bytes" in problems(text)


def test_huge_integer_literal_is_an_error_not_a_crash() -> None:
    assert "cm/policy.yaml:" in problems(doc(max_replicas="9" * 5000))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("season_s", "1e300"),
        ("history_s", "inf"),
        ("capacity_per_replica", "1e308"),
        ("arima_order", "[400, 1, 1]"),
        ("learn_band", "[0.5, 1e300]"),
    ],
)
def test_forecast_numbers_bounded(field: str, value: str) -> None:
    text = doc().replace(
        "        signals:\n",
        f"        policies: [{{kind: forecast, {field}: {value}}}]\n        signals:\n",
    )
    msg = problems(text)
    assert "policies.0" in msg
    assert field in msg or "arima_order" in msg or "learn_band" in msg


def big_policy(pools: int) -> str:
    out = ["pools:"]
    for i in range(pools):
        out.append(f"""\
  - name: pool-{i}
    roles:
      aggregated:
        deployment: {{namespace: ns, name: dep-{i}}}
        max_replicas: 8
        signals: [{{signal: queue_depth, target: 5}}, {{signal: kv_cache, target: 0.8}}]""")
    return "\n".join(out) + "\n"


async def test_large_policy_parses_off_the_event_loop() -> None:
    """While ~1,500 pools parse in a worker thread the event loop keeps running (lease
    renewals and probes live there): a 10 ms heartbeat gets to beat during the parse."""
    text = big_policy(1500)
    beats = 0
    done = False

    async def heartbeat() -> None:
        nonlocal beats
        while not done:
            await asyncio.sleep(0.01)
            beats += 1

    hb = asyncio.create_task(heartbeat())
    await asyncio.sleep(0)
    before = beats
    policy = await parse_policy_async(text, source="big.yaml")
    during = beats - before
    done = True
    await hb
    assert len(policy.pools) == 1500
    assert during > 0
