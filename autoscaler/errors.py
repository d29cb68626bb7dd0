"""pd-autoscaler's own errors; adapters map third-party errors onto these with `raise ... from`.

AutoscalerError
├── ConfigError          a policy or settings file is invalid (carries one line per problem)
├── PolicyError          a policy kind failed at run time (e.g. a forecast fit)
├── MetricsUnavailable   the metric source could not answer (the core then holds)
└── ActuationError       the cluster refused or failed a scale
    ├── TargetNotFound        the Deployment is gone (404): that pool is skipped
    ├── Forbidden             RBAC denied a call (403): names verb, resource, namespace
    ├── ActuationUnavailable  timeout, 5xx or 429: the target is backed off
    └── ActuationConflict     409 twice in a row: decided afresh next tick
"""

from __future__ import annotations

from collections.abc import Sequence


class AutoscalerError(Exception):
    """Base of every error pd-autoscaler raises on purpose."""


class ConfigError(AutoscalerError):
    """Invalid configuration; `problems` holds `FILE: path.to.field: message` lines."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


class PolicyError(AutoscalerError):
    """A policy kind could not produce a recommendation."""


class MetricsUnavailable(AutoscalerError):
    """The metric source could not be read at all this tick."""


class ActuationError(AutoscalerError):
    """A scale could not be applied."""


class TargetNotFound(ActuationError):
    """The Deployment (or its scale subresource) does not exist: the pool is skipped this tick."""


class Forbidden(ActuationError):
    """RBAC refused a call; names the missing permission so the fix is one line of YAML."""

    def __init__(self, *, verb: str, resource: str, namespace: str, name: str = "") -> None:
        self.verb, self.resource, self.namespace, self.name = verb, resource, namespace, name
        what = f"{resource}/{name}" if name else resource
        super().__init__(
            f"forbidden: the controller's ServiceAccount may not {verb} {what} in namespace "
            f"{namespace}; grant verb {verb!r} on resource {resource!r} there (see manifests/)"
        )


class ActuationUnavailable(ActuationError):
    """The API server timed out or failed (5xx, 429); the target is backed off and retried."""


class ActuationConflict(ActuationError):
    """The target changed under us twice in a row (409); the next tick decides afresh."""
