"""Which series belong to which role: the label names the queries add, the ReplicaSet pod-name
rule that lets most roles share one selector, and the selectors of the roles that cannot.

A role is *derived* when its Deployment can be read off its pods' names (see `queries.py` for
how the queries use that); otherwise it has a `RoleSelector` of its own. `Selection` is the set
of roles one query covers, in both forms.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from autoscaler.metrics import source

POOL_LABEL = "pd_pool"
ROLE_LABEL = "pd_role"
PART_LABEL = "pd_part"
DEPLOYMENT_LABEL = "pd_deployment"

# A ReplicaSet's pod: `<deployment>-<pod-template-hash>-<suffix>`. The hash is a uint32 written
# in Kubernetes' safe alphabet (1-10 characters), the suffix 5 random characters of it. The
# regex is anchored (label_replace anchors it) and `(.+)` is greedy, so the last two
# dash-separated parts are always the hash and the suffix, whatever dashes the name holds.
REPLICASET_POD = r"(.+)-[a-z0-9]{1,10}-[a-z0-9]{5}"
_POD_TAIL = r"-[a-z0-9]{1,10}-[a-z0-9]{5}"
# Kubernetes cuts a generated name's base (`<replicaset>-`) to 58 characters before adding the
# 5-character suffix. With a 10-character hash, Deployment names up to 46 characters keep
# their pods' names whole; a longer name may lose its hash or its own tail, and its role is
# queried by a prefix selector instead (`role_selector`).
MAX_DERIVED_NAME = 46
_GENERATED_BASE = 58
# Derived roles name their namespaces in the selector while there are at most this many, so
# Prometheus reads only those; past it (a namespace per model is common) the selector names
# none and reads every namespace's vLLM series, which keeps the query's size fixed. The answer
# then holds every vLLM pod Prometheus sees, and Python drops the Deployments no role reads.
MAX_NAMESPACES_IN_QUERY = 20

_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


@dataclass(frozen=True, slots=True)
class RoleSelector:
    """One role's label matchers (without a metric name), e.g. `{namespace="ns",pod=~"p-.*"}`."""

    pool: str
    role: str
    matchers: str

    def tag(self, expr: str) -> str:
        """`expr` with pd_pool/pd_role set to this role (an empty regex on an absent label
        always matches, so label_replace just adds the label)."""
        inner = f'label_replace({expr}, "{POOL_LABEL}", {quote(self.pool)}, "", "")'
        return f'label_replace({inner}, "{ROLE_LABEL}", {quote(self.role)}, "", "")'


def quote(value: str) -> str:
    """A PromQL double-quoted string literal (Go escaping rules)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def is_derived(target: source.RoleTarget) -> bool:
    """Whether the role's pods are found by deriving their Deployment from the pod name (one
    selector for every such role) rather than by a selector of its own: its `metrics:` section
    sets neither `pod_regex` nor `labels`, and Kubernetes keeps its pod names whole."""
    match = target.spec.metrics
    return (
        match.pod_regex is None
        and not match.labels
        and len(target.spec.deployment.name) <= MAX_DERIVED_NAME
    )


def role_namespace(target: source.RoleTarget) -> str:
    match = target.spec.metrics
    return match.namespace if match.namespace is not None else target.spec.deployment.namespace


def default_pod_regex(deployment: str) -> str:
    """The pods of one Deployment: its ReplicaSet pod names exactly (so `llama` does not match
    `llama-decode`'s pods); for a name Kubernetes truncates, the 58-character prefix its pod
    names keep."""
    if len(deployment) <= MAX_DERIVED_NAME:
        return re.escape(deployment) + _POD_TAIL
    return re.escape((deployment + "-")[:_GENERATED_BASE]) + ".*"


def role_selector(
    target: source.RoleTarget, *, pod_label: str, namespace_label: str
) -> RoleSelector:
    """The matchers for one role, from its MetricMatch (defaults: the Deployment's namespace and
    `default_pod_regex` on the pod label)."""
    match = target.spec.metrics
    dep = target.spec.deployment
    pod_regex = match.pod_regex if match.pod_regex is not None else default_pod_regex(dep.name)
    try:
        # Python's and Prometheus' (RE2) syntaxes differ at the edges (RE2 has no lookaround,
        # which Prometheus then rejects with a 400 for the whole query), but what Python cannot
        # compile RE2 cannot either: catch that here, per role.
        re.compile(pod_regex)
    except re.error as exc:
        msg = f"metrics.pod_regex {pod_regex!r} of {target.pool}/{target.role.value}: {exc}"
        raise ValueError(msg) from exc
    parts = [
        f"{namespace_label}={quote(role_namespace(target))}",
        f"{pod_label}=~{quote(pod_regex)}",
    ]
    for name, value in sorted(match.labels.items()):
        if not _LABEL_NAME.match(name) or name.startswith("__"):
            where = f"{target.pool}/{target.role.value}"
            msg = f"metrics.labels key {name!r} of {where} is not a valid label name"
            raise ValueError(msg)
        parts.append(f"{name}={quote(value)}")
    matchers = "{" + ",".join(parts) + "}"
    return RoleSelector(pool=target.pool, role=target.role.value, matchers=matchers)


Pair = tuple[str, str]
"""(pool, role)."""


@dataclass(frozen=True, slots=True)
class Selection:
    """The roles one query covers: derived roles by (namespace, Deployment), selector roles by
    their own `RoleSelector`."""

    deployments: Mapping[Pair, tuple[Pair, ...]] = field(default_factory=dict)
    """(namespace, Deployment name) -> the (pool, role) pairs reading it (one, in a valid
    policy file)."""
    custom: tuple[RoleSelector, ...] = ()

    @classmethod
    def of(cls, roles: Selection | Iterable[RoleSelector]) -> Selection:
        """A Selection as is; selector roles alone (the form `role_total` and older callers
        use) as a Selection of selector roles."""
        return roles if isinstance(roles, Selection) else cls(custom=tuple(roles))

    @property
    def namespaces(self) -> tuple[str, ...]:
        return tuple(sorted({ns for ns, _ in self.deployments}))

    @property
    def pairs(self) -> tuple[Pair, ...]:
        derived = (pr for prs in self.deployments.values() for pr in prs)
        return (*derived, *((r.pool, r.role) for r in self.custom))
