"""The policy-kind protocol: how a source of replica recommendations plugs into the core.

A *kind* (reactive signals, forecast, or a third party's) is a `PolicyPlugin[ConfigT]`: a name,
a pydantic config model `ConfigT` (its schema), and a `build` that returns a `Policy` for one role
of one pool from an already validated `ConfigT`: the loader (`policy/load.py`) validates every
`policies:` entry with `config_model` before anything is built, so `build` never re-checks.
Each tick the core asks every policy of a role for its `Need`s and combines them (scale-up:
max; scale-down: every source must agree). A policy may keep state between ticks (a forecast
keeps history and a fitted model), but `needs` must depend only on what it was given and what
it observed before. Plug-ins import this through the facade `autoscaler.plugin`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from autoscaler.spec import RoleSpec
    from autoscaler.types import Need, Role, RoleObservation


@dataclass(frozen=True, slots=True)
class RoleContext:
    """What a policy sees for one role at one tick."""

    pool: str
    role: Role
    spec: RoleSpec
    obs: RoleObservation
    now: float


@runtime_checkable
class Policy(Protocol):
    """One built policy for one role."""

    def needs(self, ctx: RoleContext) -> Sequence[Need]:
        """This tick's opinions on the role's replica count (one per signal or series)."""
        ...


def extra_keys(policy: Policy) -> tuple[str, ...]:
    """Optional sample keys a policy reads besides its role's signals and the rates, declared
    as an `extra_keys` attribute (e.g. the slo kind's PROMPT_LENGTH_CV). The metric source is
    asked for them; a policy must cope when one is missing. Not part of the `Policy` protocol:
    most kinds read nothing extra, and a plug-in need not declare an empty tuple."""
    keys = getattr(policy, "extra_keys", ())
    return tuple(str(k) for k in keys)


class PluginConfig(BaseModel):
    """A convenient base for a kind's config model: frozen, and an unknown key is an error (as
    everywhere in a policy file). Any pydantic model works as `config_model`."""

    model_config = ConfigDict(extra="forbid", frozen=True)


ConfigT = TypeVar("ConfigT", bound=BaseModel)


class PolicyPlugin(Protocol[ConfigT]):
    """A policy kind: what the `pd_autoscaler.policies` entry points must resolve to."""

    kind: str
    config_model: type[ConfigT]

    def build(self, config: ConfigT, *, pool: str, role: Role, spec: RoleSpec) -> Policy:
        """A policy instance for one role, from its validated config."""
        ...
