"""The per-tick instant queries at scale (issue 16): their text does not grow with the pool count,
rows come back to the right (pool, role) by (namespace, Deployment), roles with a custom
`metrics:` section keep a selector of their own, and the PromQL travels in a form-encoded POST
body. The same against a real Prometheus: tests/prom/test_source.py (every signal, both naming
generations, partial and stale pods) and tests/prom/test_thousand_pools.py (1,000 pools)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from autoscaler.metrics import http, queries, samples, validate
from autoscaler.metrics.source import RoleTarget
from autoscaler.spec import PolicyFile
from autoscaler.types import PROMPT_LENGTH_CV, Role

SIGNALS: list[dict[str, Any]] = [
    {"signal": "queue_depth", "target": 4},
    {"signal": "batched_tokens", "target": 0.8},
    {"signal": "kv_cache", "target": 0.8},
    {"signal": "running", "target": 40},
    {"signal": "ttft", "target": 1.0, "quantile": 0.9},
    {"signal": "itl", "target": 0.1, "quantile": 0.5},
]


def _role(ns: str, name: str, **metrics: Any) -> dict[str, Any]:
    return {
        "deployment": {"namespace": ns, "name": name},
        "max_replicas": 8,
        "signals": SIGNALS,
        "metrics": metrics,
    }


def _policy(pools: int, *, namespaces: int = 20) -> PolicyFile:
    return PolicyFile.model_validate(
        {
            "pools": [
                {
                    "name": f"pool-{i}",
                    "roles": {
                        "prefill": _role(f"ns-{i % namespaces}", f"pool-{i}-prefill"),
                        "decode": _role(f"ns-{i % namespaces}", f"pool-{i}-decode"),
                    },
                }
                for i in range(pools)
            ]
        }
    )


def _targets(policy: PolicyFile) -> list[RoleTarget]:
    return [RoleTarget(p.name, r, s) for p in policy.pools for r, s in p.roles.items()]


def _plan(policy: PolicyFile, **builder: Any) -> queries.Plan:
    b = queries.Builder(names=queries.Names.all(), rate_window_s=60, **builder)
    return queries.plan(_targets(policy), b)


@pytest.mark.parametrize("namespaces", [1, 10, 10_000])
def test_query_text_does_not_grow_with_pools(namespaces: int) -> None:
    """10 to 5,000 pools send the same PromQL, key for key: no branch per role, no pool name.
    With a namespace per pool, past MAX_NAMESPACES_IN_QUERY namespaces the selector names
    none, so from 100 pools on the text is fixed then too (at 10 pools it names the 10)."""
    plans = {n: _plan(_policy(n, namespaces=namespaces)) for n in (10, 100, 1000, 5000)}
    base = plans[10] if namespaces <= 10 else plans[100]
    keys = [q.key for q in base.queries]
    assert len(keys) == 9  # 6 signals + 3 rates, whatever the pool count
    for n, plan in plans.items():
        assert [q.key for q in plan.queries] == keys
        for q, same in zip(plan.queries, base.queries, strict=True):
            if n >= 100 or namespaces <= 10:
                assert q.promql == same.promql, (n, q.key)
            assert "pool-" not in q.promql
            assert len(q.roles) == 2 * n
            # Every spelling of every family is in there; the longest is the ITL quantile.
            assert len(q.promql.encode()) < 8_000, (q.key, len(q.promql))
    if namespaces > queries.MAX_NAMESPACES_IN_QUERY:
        assert all('{namespace!=""}' in q.promql for q in plans[100].queries)


def test_deployments_map_back_to_pools_and_roles() -> None:
    """Each query carries (namespace, Deployment) -> (pool, role) for the roles it covers; a
    metrics.namespace override is the namespace looked up."""
    policy = PolicyFile.model_validate(
        {
            "pools": [
                {
                    "name": "llama",
                    "roles": {
                        "prefill": _role("llm", "llama-prefill"),
                        "decode": _role("llm", "llama-decode", namespace="llm-metrics"),
                    },
                },
                {"name": "mistral", "roles": {"aggregated": _role("other", "mistral")}},
            ]
        }
    )
    plan = _plan(policy)
    assert plan.invalid == {}
    for q in plan.queries:
        assert q.deployments == {
            ("llm", "llama-prefill"): (("llama", "prefill"),),
            ("llm-metrics", "llama-decode"): (("llama", "decode"),),
            ("other", "mistral"): (("mistral", "aggregated"),),
        }
        assert 'namespace=~"llm|llm\\\\-metrics|other"' in q.promql


POD_NAMES = [
    ("llama-7c9d5b8f4-x2k9q", "llama"),
    ("llama-decode-7c9d5b8f4-x2k9q", "llama-decode"),  # `llama` no longer takes these pods
    ("a.b-c-d-1234567890-abcde", "a.b-c-d"),  # dots, dashes and a 10-character hash
    ("m-5-bbbbb", "m"),  # a 1-character hash
    ("sts-0", None),  # a StatefulSet's pod: not a ReplicaSet's
    ("llama-x2k9q", None),
]


@pytest.mark.parametrize(("pod", "deployment"), POD_NAMES)
def test_replicaset_pod_names_give_their_deployment(pod: str, deployment: str | None) -> None:
    """label_replace anchors its regex at both ends, as fullmatch does (RE2 and Python agree
    on this regex: no lookaround, no backreference)."""
    m = re.fullmatch(queries.REPLICASET_POD, pod)
    assert (m.group(1) if m else None) == deployment
    if deployment is not None:
        # The range query's selector for that Deployment matches exactly its pods too.
        assert re.fullmatch(queries.default_pod_regex(deployment), pod)
    assert not re.fullmatch(queries.default_pod_regex("llama"), "llama-decode-7c9d5b8f4-x2k9q")


def _generated(deployment: str, hash_: str = "5d8f7c9b4z", suffix: str = "x2k9q") -> str:
    # Kubernetes' SimpleNameGenerator: the base `<replicaset>-` cut to 58, then 5 characters.
    return (f"{deployment}-{hash_}-")[:58] + suffix


@pytest.mark.parametrize("length", [1, 30, 46, 47, 52, 58, 63, 200])
def test_long_deployment_names_use_a_prefix_selector(length: int) -> None:
    """Up to MAX_DERIVED_NAME characters the pod name is whole and the Deployment derived; a
    longer name can lose its hash, so its role gets a selector on the prefix Kubernetes keeps,
    which still matches its pods."""
    name = ("d" * length)[:length]
    policy = PolicyFile.model_validate(
        {"pools": [{"name": "p", "roles": {"aggregated": _role("ns", name)}}]}
    )
    (target,) = _targets(policy)
    pod = _generated(name)
    derived = queries.is_derived(target)
    assert derived == (length <= queries.MAX_DERIVED_NAME)
    if derived:
        m = re.fullmatch(queries.REPLICASET_POD, pod)
        assert m is not None
        assert m.group(1) == name
    assert re.fullmatch(queries.default_pod_regex(name), pod)
    q = _plan(policy).queries[0]
    assert (q.deployments != {}) == derived
    assert ('"pd_pool", "p"' in q.promql) == (not derived)


def test_custom_roles_keep_their_own_selector() -> None:
    """A role with pod_regex or labels is a tagged branch of its own next to the derived half;
    each such role adds one branch, the derived roles none. A regex Python cannot compile makes
    only its role invalid."""

    def policy(custom: int, *, bad: bool = False) -> PolicyFile:
        pools: list[dict[str, Any]] = [
            {"name": f"d{i}", "roles": {"aggregated": _role("llm", f"d{i}")}} for i in range(50)
        ]
        pools += [
            {
                "name": f"c{i}",
                "roles": {
                    "aggregated": _role(
                        "llm", f"c{i}", pod_regex=f"srv-{i}-[0-9]+", labels={"model_name": "m"}
                    )
                },
            }
            for i in range(custom)
        ]
        if bad:
            pools.append({"name": "bad", "roles": {"aggregated": _role("llm", "b", pod_regex="(")}})
        return PolicyFile.model_validate({"pools": pools})

    sizes = [len(_plan(policy(n)).queries[0].promql) for n in (0, 1, 2, 3)]
    step = sizes[2] - sizes[1]
    assert step > 0
    assert sizes[3] - sizes[2] == step
    q = _plan(policy(2)).queries[0]
    assert 'pod=~"srv-1-[0-9]+",model_name="m"}' in q.promql
    assert '"pd_pool", "c1"' in q.promql
    assert len(q.deployments) == 50
    assert len(q.roles) == 52
    bad = _plan(policy(2, bad=True))
    assert list(bad.invalid) == [("bad", "aggregated")]
    assert "bad" not in bad.queries[0].promql
    assert len(bad.queries[0].roles) == 52


def _row(value: float, **labels: str) -> validate.Row:
    return validate.Row(labels=labels, value=value)


def test_rows_go_to_their_roles() -> None:
    """Derived rows by (namespace, pd_deployment); selector rows by pd_pool/pd_role; rows of a
    Deployment no role reads, of another namespace or with no deployment label are dropped."""
    policy = PolicyFile.model_validate(
        {
            "pools": [
                {
                    "name": "llama",
                    "roles": {
                        "prefill": _role("llm", "llama"),
                        "decode": _role("llm", "llama-decode"),
                    },
                },
                {"name": "srv", "roles": {"aggregated": _role("llm", "s", pod_regex="srv-.*")}},
            ]
        }
    )
    q = _plan(policy).queries[0]
    dep = queries.DEPLOYMENT_LABEL
    rows = [
        _row(1, namespace="llm", pod="llama-5d8f7c9b4-aaaaa", **{dep: "llama"}),
        _row(2, namespace="llm", pod="llama-decode-5d8f7c9b4-aaaaa", **{dep: "llama-decode"}),
        _row(3, namespace="llm", pod="llama-decode-5d8f7c9b4-bbbbb", **{dep: "llama-decode"}),
        _row(4, namespace="llm", pod="other-5d8f7c9b4-aaaaa", **{dep: "other"}),
        _row(5, namespace="elsewhere", pod="llama-5d8f7c9b4-aaaaa", **{dep: "llama"}),
        _row(6, namespace="llm", pod="sts-0"),
        _row(7, pd_pool="srv", pd_role="aggregated", pod="srv-1"),
        _row(8, pd_pool="nope", pd_role="aggregated", pod="srv-2"),
    ]
    grouped = samples.by_role(q, rows, namespace_label="namespace")
    values = {pr: [v for _, v in got] for pr, got in grouped.items()}
    assert values == {
        ("llama", "prefill"): [1],
        ("llama", "decode"): [2, 3],
        ("srv", "aggregated"): [7],
    }


def test_gauge_age_rows_only_for_stale_pods() -> None:
    """With max_sample_age_s set, only pods older than it send an age row (the only ones
    samples.per_pod acts on); without, every pod's age comes back."""
    policy = _policy(3)
    gauge = next(q for q in _plan(policy, max_sample_age_s=60.0).queries if q.key == "running")
    assert gauge.kind is queries.Kind.GAUGE
    assert "time() - timestamp(vllm:num_requests_running{" in gauge.promql
    assert ") > 60.0)" in gauge.promql
    every = next(q for q in _plan(policy).queries if q.key == "running")
    assert " > 60.0" not in every.promql


@pytest.fixture
def recorder() -> Iterator[tuple[list[dict[str, Any]], str]]:
    """An HTTP server that records each request and answers an empty vector."""
    import asyncio  # noqa: PLC0415
    import threading  # noqa: PLC0415

    seen: list[dict[str, Any]] = []
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def handle(request: web.Request) -> web.Response:
        form = await request.post()
        seen.append(
            {
                "method": request.method,
                "path_qs": request.path_qs,
                "content_type": request.content_type,
                "form": dict(form),
            }
        )
        return web.json_response(
            {"status": "success", "data": {"resultType": "vector", "result": []}}
        )

    def run() -> None:
        loop = asyncio.new_event_loop()
        box["loop"] = loop
        app = web.Application()
        app.router.add_route("*", "/api/v1/query", handle)
        runner = web.AppRunner(app, access_log=None)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        box["port"] = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        box["runner"] = runner
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    yield seen, f"http://127.0.0.1:{box['port']}"
    box["loop"].call_soon_threadsafe(box["loop"].stop)
    thread.join(10)


async def test_promql_travels_in_a_form_encoded_post_body(
    recorder: tuple[list[dict[str, Any]], str],
) -> None:
    """No PromQL in the URL (proxies and Prometheus cap the request line and headers); the whole
    query, 5,000 pools' worth, is the form field `query` of the body."""
    seen, url = recorder
    promql = _plan(_policy(5000)).queries[-1].promql
    async with aiohttp.ClientSession() as session:
        await http.instant_query(
            session, http.Endpoint(url=url), promql, deadline_s=5.0, max_bytes=1 << 20
        )
    (req,) = seen
    assert req["method"] == "POST"
    assert req["path_qs"] == "/api/v1/query"
    assert req["content_type"] == "application/x-www-form-urlencoded"
    assert req["form"]["query"] == promql
    assert req["form"]["timeout"] == "5000ms"


def test_plan_is_reused_while_roles_and_spellings_stay() -> None:
    """The source rebuilds its queries only when a role's spec object (a policy reload), the
    role list or the spellings change."""
    from autoscaler.metrics.prometheus import PrometheusSource  # noqa: PLC0415
    from autoscaler.metrics.settings import PrometheusSettings  # noqa: PLC0415

    src = PrometheusSource(PrometheusSettings(url="http://prom.invalid:9090"))
    builder = queries.Builder(names=queries.Names.all(), rate_window_s=60)
    targets = _targets(_policy(3))
    first = src._plan(targets, builder)
    assert src._plan(list(targets), builder) is first
    assert src._plan(_targets(_policy(3)), builder) is not first  # reloaded: new specs
    narrowed = queries.Names.from_present(["vllm:num_requests_waiting"])
    assert src._plan(targets, builder) is not first  # the reload replaced the cache
    again = src._plan(targets, builder)
    assert src._plan(targets, queries.Builder(names=narrowed, rate_window_s=60)) is not again
    assert src._plan(targets[:-1], builder) is not again
    src.close()


def test_the_prompt_mix_is_asked_only_for_roles_whose_policies_read_it() -> None:
    """PROMPT_LENGTH_CV (an optional key, `RoleTarget.extra`) adds one query, of a size
    independent of the pool count, covering only the roles that asked."""
    b = queries.Builder(names=queries.Names.all(), rate_window_s=60)
    texts = []
    for n in (100, 1000):
        targets = [
            replace(t, extra=(PROMPT_LENGTH_CV,)) if t.role is Role.PREFILL else t
            for t in _targets(_policy(n))
        ]
        plan = queries.plan(targets, b)
        (q,) = [q for q in plan.queries if q.key == PROMPT_LENGTH_CV]
        assert q.kind is queries.Kind.SPREAD
        assert len(q.roles) == n
        assert all(role == "prefill" for _, role in q.roles)
        assert "vllm:request_prompt_tokens_bucket" in q.promql
        texts.append(q.promql)
    assert texts[0] == texts[1]
    plain = queries.plan(_targets(_policy(10)), b)
    assert PROMPT_LENGTH_CV not in [q.key for q in plain.queries]


def _spread_rows(buckets: dict[str, float], **parts: float) -> list[tuple[dict[str, str], float]]:
    rows = [({queries.PART_LABEL: "bucket", "le": le}, v) for le, v in buckets.items()]
    rows += [({queries.PART_LABEL: k}, v) for k, v in parts.items()]
    return rows


@pytest.mark.parametrize(
    ("rows", "value", "reasons"),
    [
        # 200 and 1,800 tokens in equal shares, le in text order (1000.0 sorts before 200.0).
        (
            _spread_rows(
                {"100.0": 0, "1000.0": 1, "200.0": 1, "2000.0": 2, "+Inf": 2},
                sum=2000, count=2, replicas=2,
            ),
            "cv",
            (),
        ),
        (_spread_rows({}, replicas=0), None, ("empty",)),
        (_spread_rows({"+Inf": 0}, sum=0, count=0, replicas=1), None, ()),  # idle: no request
        (_spread_rows({"200.0": 1}, sum=200, count=1, replicas=1), None, ("nan",)),  # no +Inf
    ],
)
def test_spread_rows_become_a_prompt_length_cv(
    rows: list[tuple[dict[str, str], float]], value: str | None, reasons: tuple[str, ...]
) -> None:
    sample, why = samples.spread(rows)
    assert why == reasons
    if value is None:
        assert sample.value is None
    else:
        assert sample.value is not None
        assert 0.8 <= sample.value <= 0.95
        assert sample.replicas == 2
