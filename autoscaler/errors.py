"""pd-autoscaler's own errors; adapters map third-party errors onto these with `raise ... from`.

AutoscalerError
├── ConfigError          a policy or settings file is invalid (carries one line per problem)
├── PolicyError          a policy kind failed at run time (e.g. a forecast fit)
├── MetricsUnavailable   the metric source could not answer (the core then holds)
└── ActuationError       the cluster refused or failed a scale
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
