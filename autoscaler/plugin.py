"""The plug-in facade: everything a third-party policy kind needs, and nothing else.

A kind is a distribution with an entry point in the `pd_autoscaler.policies` group resolving to
a `PolicyPlugin[YourConfig]` (see tests/fixtures/example_plugin for a complete one):

    from autoscaler.plugin import Need, PluginConfig, Policy, PolicyPlugin, RoleContext, RoleSpec

    class FloorConfig(PluginConfig):       # the kind's schema: the rest of its `policies:` entry
        replicas: int = Field(ge=0)

    class _Floor:
        kind = "floor"
        config_model = FloorConfig
        def build(self, config: FloorConfig, *, pool: str, role: Role, spec: RoleSpec) -> Policy:
            ...                            # config is validated already

    PLUGIN: PolicyPlugin[FloorConfig] = _Floor()

Each tick the core calls `policy.needs(ctx)` with a `RoleContext` (the role's `RoleObservation`,
its `RoleSpec`, the tick's time) and combines the `Need`s with every other source of the role.
Only the names in `__all__` are the plug-in API (pinned by tests/unit/test_public_api.py); the
modules they come from may move.
"""

from __future__ import annotations

from autoscaler.errors import ConfigError
from autoscaler.policy.base import ConfigT, PluginConfig, Policy, PolicyPlugin, RoleContext
from autoscaler.policy.registry import ENTRY_POINT_GROUP
from autoscaler.spec import DeploymentRef, RoleSpec, SignalSpec
from autoscaler.types import Need, Role, RoleObservation, SignalName, SignalSample

__all__ = [
    "ENTRY_POINT_GROUP",
    "ConfigError",
    "ConfigT",
    "DeploymentRef",
    "Need",
    "PluginConfig",
    "Policy",
    "PolicyPlugin",
    "Role",
    "RoleContext",
    "RoleObservation",
    "RoleSpec",
    "SignalName",
    "SignalSample",
    "SignalSpec",
]
