"""The one explicit registry of policy kinds.

Built-in kinds are listed in `_BUILTIN`; third parties add kinds without forking through the
`pd_autoscaler.policies` entry-point group, each entry resolving to a `PolicyPlugin`. A policy
file selects a kind by `kind:` and the kind's own pydantic model validates the rest of the
mapping. Reactive signals are not a kind here: they are the role's `signals:` list, evaluated by
the core itself.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from autoscaler import errors

if TYPE_CHECKING:
    from autoscaler.policy.base import Policy, PolicyPlugin
    from autoscaler.spec import PolicyRef, RoleSpec
    from autoscaler.types import Role

ENTRY_POINT_GROUP = "pd_autoscaler.policies"

# kind -> "module:attribute" of a PolicyPlugin. Imported lazily so statsmodels is only loaded
# when a policy uses a forecast.
_BUILTIN: dict[str, str] = {
    "forecast": "autoscaler.policy.forecast:PLUGIN",
    "slo": "autoscaler.policy.slo:PLUGIN",
}

# Any: each kind has its own config type; validate_ref hands build the type it validated.
_cache: dict[str, PolicyPlugin[Any]] = {}


def _load(target: str) -> PolicyPlugin[Any]:
    module, _, attr = target.partition(":")
    plugin: PolicyPlugin[Any] = getattr(importlib.import_module(module), attr)
    return plugin


def available() -> dict[str, str]:
    """kind -> where it comes from (built-in module or entry point), for `validate --explain`."""
    kinds = dict(_BUILTIN)
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        kinds.setdefault(ep.name, ep.value)
    return kinds


def get(kind: str) -> PolicyPlugin[Any]:
    """The plug-in for `kind`; raises KeyError naming the kinds that exist."""
    if kind in _cache:
        return _cache[kind]
    if kind in _BUILTIN:
        plugin = _load(_BUILTIN[kind])
    else:
        eps = [ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == kind]
        if not eps:
            known = ", ".join(sorted(available())) or "none"
            msg = f"unknown policy kind {kind!r}; known kinds: {known}"
            raise KeyError(msg)
        plugin = eps[0].load()
    _cache[kind] = plugin
    return plugin


def _config_of(ref: PolicyRef) -> dict[str, Any]:
    return dict(ref.model_extra or {})


def validate_ref(ref: PolicyRef, *, where: str) -> BaseModel:
    """Validate a `policies:` entry with its kind's model; errors name the field path."""
    try:
        plugin = get(ref.kind)
    except KeyError as exc:
        raise errors.ConfigError([f"{where}.kind: {exc.args[0]}"]) from exc
    try:
        config: BaseModel = plugin.config_model.model_validate(_config_of(ref))
        return config
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            path = f"{where}.{loc}" if loc else where  # whole-model checks have no field
            got = ""
            if err["type"] != "missing" and not isinstance(err.get("input"), dict | list):
                got = f" (got {err.get('input')!r})"
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{path}: {msg}{got}")
        raise errors.ConfigError(problems) from exc


def build(ref: PolicyRef, *, pool: str, role: Role, spec: RoleSpec, where: str) -> Policy:
    """Instantiate a validated `policies:` entry for one role."""
    config = validate_ref(ref, where=where)
    return get(ref.kind).build(config, pool=pool, role=role, spec=spec)


def clear_cache() -> None:
    """Forget loaded plug-ins (tests install and remove entry points)."""
    _cache.clear()
