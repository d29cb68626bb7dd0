"""Each policy kind's search space, and writing a trial's values into the policy document.

A parameter is addressed by its path in the policy YAML (`pools[0].roles.prefill.behavior.
tolerance`), so the tuned file is the user's file with only those values changed. Ranges are
relative to the policy's own value where the unit depends on the deployment (a signal target in
tokens/s means nothing across models), absolute where the field is a dimensionless knob.

Kinds with a space (`KIND_SPACES`): `reactive` (a role's `signals`) and `slo`. A role whose
policies are of another kind (e.g. `forecast`) keeps those untouched; its behaviour and floor
are still searched (`common`), and `unsearched_kinds` names the kind so the tool can say so.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from autoscaler import errors
from autoscaler.policy.load import validate_plugins
from autoscaler.spec import MAX_TOLERANCE, PolicyFile, RoleSpec
from autoscaler.types import Role, SignalName
from autoscaler.yamlsafe import format_validation_error

Path = tuple[str | int, ...]

# Fraction signals are capped at 1 by the schema; 0.95 keeps a target that can still be exceeded.
_FRACTION_CAP = 0.95
# Relative range of a reactive target: a third to three times the policy's value (log scale),
# enough to undo a hand-set target off by a factor of a few; wider ranges spend most trials on
# fleets that are obviously idle or obviously short.
_TARGET_SPAN = 3.0


@dataclass(frozen=True, slots=True)
class Param:
    """One searched value: its name (also the Optuna parameter name), where it lives in the
    policy document, its range, and the policy's own value (the first trial's)."""

    name: str
    path: Path
    low: float
    high: float
    default: float
    integer: bool = False
    log: bool = False
    step: float | None = None

    def clamp(self, value: float) -> float:
        v = min(self.high, max(self.low, value))
        return round(v) if self.integer else v


def _role_path(pool: int, role: Role) -> Path:
    return ("pools", pool, "roles", role.value)


def common(pool: int, role: Role, spec: RoleSpec) -> list[Param]:
    """Every kind: the deadband, the scale-down window and rate, the floor."""
    base = _role_path(pool, role)
    b = spec.behavior
    prefix = f"{role.value}."
    out = [
        Param(prefix + "tolerance", (*base, "behavior", "tolerance"), 0.0, 0.3, b.tolerance),
        Param(
            prefix + "scale_down.window_s",
            (*base, "behavior", "scale_down", "stabilization_window_s"),
            0.0,
            900.0,
            b.scale_down.stabilization_window_s,
            step=30.0,
        ),
        Param(
            prefix + "min_replicas",
            (*base, "min_replicas"),
            1,
            # Up to the policy's own floor when that is higher: the first trial is the input.
            max(1, min(4, spec.max_replicas), spec.min_replicas),
            spec.min_replicas,
            integer=True,
        ),
    ]
    if b.scale_down.rules:
        r = b.scale_down.rules[0]
        lo, hi = (10.0, 100.0) if r.type == "percent" else (1.0, 8.0)
        out.append(
            Param(
                prefix + f"scale_down.rule0_{r.type}",
                (*base, "behavior", "scale_down", "rules", 0, "value"),
                lo,
                hi,
                r.value,
                integer=True,
            )
        )
    return out


def reactive(pool: int, role: Role, spec: RoleSpec) -> list[Param]:
    """Signal targets (a third to three times the policy's), the scale-up window."""
    base = _role_path(pool, role)
    out: list[Param] = []
    for i, s in enumerate(spec.signals):
        hi = s.target * _TARGET_SPAN
        if s.signal in (SignalName.KV_CACHE, SignalName.BATCHED_TOKENS):
            hi = min(hi, _FRACTION_CAP)
        lo = min(s.target / _TARGET_SPAN, hi)
        if s.signal is SignalName.TTFT_RELATIVE:
            # A slowdown over the prompt's own prefill time: 1 or less is unmeetable (and
            # rejected by the spec).
            lo = min(max(lo, 1.1), hi)
        out.append(
            Param(
                f"{role.value}.{s.signal.value}{i}.target",
                (*base, "signals", i, "target"),
                lo,
                hi,
                s.target,
                log=True,
            )
        )
    out.append(
        Param(
            f"{role.value}.scale_up.window_s",
            (*base, "behavior", "scale_up", "stabilization_window_s"),
            0.0,
            120.0,
            spec.behavior.scale_up.stabilization_window_s,
            step=15.0,
        )
    )
    return out


def inputs(params: Sequence[Param]) -> dict[str, float]:
    """The input policy's own values as a trial's parameters, each within its range: trial 0,
    and the base the seeds change."""
    return {p.name: p.clamp(p.default) for p in params}


# The slo kind's searched fields: (field, low, high, the kind's default, Param options), in the
# trials' order, the burst shape's after the headroom's (prefill and aggregated roles only).
_Field = tuple[str, float, float, float, dict[str, Any]]
_SLO_FIELDS: tuple[_Field, ...] = (
    ("attainment", 0.9, 0.999, 0.99, {}),
    ("burst_memory_s", 0.0, 3600.0, 1800.0, {"step": 300.0}),
    ("burst_halflife_s", 60.0, 3600.0, 600.0, {"log": True}),
    ("trend_window_s", 0.0, 3600.0, 1800.0, {"step": 300.0}),
    ("prompt_length_cv_prior", 0.25, 3.0, 1.0, {"log": True}),
)
_SLO_SHAPE_FIELDS: tuple[_Field, ...] = (
    ("burst_shape_memory_s", 0.0, 21600.0, 10800.0, {"step": 1800.0}),
    ("burst_shape_halflife_s", 600.0, 7200.0, 3600.0, {"log": True}),
)


def slo(pool: int, role: Role, spec: RoleSpec) -> list[Param]:
    """The SLO kind's margins: the Erlang-C tail it sizes for (`attainment`), the burst headroom
    (memory, half-life), the burst shape's (prefill and aggregated roles), the trend window and
    the prompt-spread prior. The SLO itself
    (floor, slowdown, ITL) is the user's contract, never searched."""
    base = _role_path(pool, role)
    fields = [*_SLO_FIELDS[:3], *(_SLO_SHAPE_FIELDS if role is not Role.DECODE else []),
              *_SLO_FIELDS[3:]]  # fmt: skip
    out: list[Param] = []
    for i, ref in enumerate(spec.policies):
        if ref.kind != "slo":
            continue
        cfg: dict[str, Any] = dict(ref.model_extra or {})
        at = (*base, "policies", i)
        out += [
            Param(f"{role.value}.slo{i}.{key}", (*at, key), low, high, float(cfg.get(key, dflt)),
                  **opts)
            for key, low, high, dflt, opts in fields
        ]  # fmt: skip
    return out


Space = Callable[[int, Role, RoleSpec], list[Param]]
# Policy kind -> its search space. `reactive` is a role's `signals` list.
KIND_SPACES: dict[str, Space] = {"reactive": reactive, "slo": slo}


def role_kinds(spec: RoleSpec) -> list[str]:
    kinds = ["reactive"] if spec.signals else []
    return kinds + [p.kind for p in spec.policies]


def search_space(policy: PolicyFile, *, pool: int = 0) -> tuple[list[Param], list[str]]:
    """The parameters of `policy`'s pool, and the kinds found there that have no search space."""
    params: list[Param] = []
    unsearched: list[str] = []
    for role, spec in policy.pools[pool].roles.items():
        params += common(pool, role, spec)
        for kind in dict.fromkeys(role_kinds(spec)):
            space = KIND_SPACES.get(kind)
            if space is None:
                unsearched.append(f"{role.value}: {kind}")
            else:
                params += space(pool, role, spec)
    # A default outside its range (a hand-set value) widens the range: the first trial is the
    # user's policy exactly.
    params = [
        Param(
            p.name,
            p.path,
            min(p.low, p.default),
            max(p.high, p.default),
            p.default,
            p.integer,
            p.log and min(p.low, p.default) > 0,
            p.step if _on_grid(p) else None,
        )
        for p in params
    ]
    return params, unsearched


def _on_grid(p: Param) -> bool:
    if p.step is None:
        return True
    lo = min(p.low, p.default)
    hi = max(p.high, p.default)
    k = (p.default - lo) / p.step
    return abs(k - round(k)) < 1e-9 and abs((hi - lo) / p.step - round((hi - lo) / p.step)) < 1e-9


def _set(doc: Any, path: Path, value: float) -> None:
    node = doc
    for i, key in enumerate(path[:-1]):
        nxt = path[i + 1]
        if isinstance(node, dict):
            if key not in node or node[key] is None:
                node[key] = [] if isinstance(nxt, int) else {}
            node = node[key]
        else:
            node = node[int(key)]
    last = path[-1]
    if isinstance(node, dict):
        node[last] = value
    else:
        node[int(last)] = value


def apply(doc: dict[str, Any], params: Sequence[Param], values: dict[str, float]) -> dict[str, Any]:
    """A copy of the policy document with each parameter set to `values[name]` (ints as ints,
    floats rounded to 4 significant digits so the YAML reads like a hand-written one)."""
    out = copy.deepcopy(doc)
    for p in params:
        if p.name not in values:
            continue
        _set(out, p.path, written(p, values[p.name]))
    return out


def materialise(doc: dict[str, Any], policy: PolicyFile, *, pool: int = 0) -> dict[str, Any]:
    """A copy of the document with each role's scale_up / scale_down written out where the
    user left them to the defaults: a searched window in a direction the file omits must not
    replace the default direction (and its rules) with a window alone."""
    out = copy.deepcopy(doc)
    roles = out["pools"][pool]["roles"]
    for role, spec in policy.pools[pool].roles.items():
        raw = roles[role.value]
        behavior = raw.setdefault("behavior", {})
        if behavior is None:
            behavior = raw["behavior"] = {}
        for key in ("scale_up", "scale_down"):
            if behavior.get(key) is None:
                behavior[key] = getattr(spec.behavior, key).model_dump(mode="json")
    return out


def written(p: Param, value: float) -> float:
    return round(value) if p.integer else _round(value)


def _round(v: float) -> float:
    if v == 0 or not math.isfinite(v):
        return v
    return float(f"{v:.4g}")


def validate(doc: dict[str, Any], *, source: str) -> PolicyFile:
    """Schema and plug-in validation of a candidate document (ConfigError on any problem)."""
    try:
        policy = PolicyFile.model_validate(doc)
    except ValidationError as exc:
        raise errors.ConfigError(format_validation_error(source, exc)) from exc
    validate_plugins(policy)
    return policy


assert MAX_TOLERANCE >= 0.3  # the tolerance range above stays inside the schema's
