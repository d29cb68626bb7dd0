"""pd-autoscaler's numbers as an aggregated `external.metrics.k8s.io/v1beta1` API (opt-in).

Why: teams that already drive their Deployments with an HPA (or must, by policy) can let
pd-autoscaler decide and the HPA actuate. Each pool and role exposes `pd_desired_replicas` (the
final, already stabilized and limited decision) and the signal values behind it, labelled
`pool`, `role`, `namespace` and `deployment`. An HPA with an `External` metric
`pd_desired_replicas`, selector `pool=...,role=...` and an `AverageValue` target of 1 then sets
exactly our number (see docs/adoption.md for the tolerance arithmetic).

The pieces, one concern per module, from the inside out:
- `quantity.py`: float -> Kubernetes quantity string ("3", "750m"), never NaN or negative.
- `selector.py`: the Kubernetes label-selector grammar, with limits, raising `SelectorError`.
- `api.py`: group/version and metav1.Status error bodies.
- `auth.py`: authentication as the aggregation layer requires it (a TLS client certificate from
  the requestheader CA, its CN in the allowed names, and only then the X-Remote-* headers);
  optional delegated authorization through SubjectAccessReview.
- `app.py`: the aiohttp application (discovery, metric lists).
- `server.py`: `ExternalMetricsServer`, the app behind TLS with request-size limits and the
  connection limits of `server/limits.py` (cap, request-head deadline, TLS and keep-alive timeouts).

The numbers come from the one `server.store.DecisionStore` (as `server.points` metric points),
which the KEDA scaler (server/keda.py) reads too; the two servers do not import each other, and
the decision core never sees any of it. This package's public names are listed below.
"""

from autoscaler.server.external_metrics.api import GROUP, GROUP_VERSION, VERSION
from autoscaler.server.external_metrics.app import ExternalMetricsOptions, make_app
from autoscaler.server.external_metrics.auth import (
    CONFIGMAP_NAME,
    CONFIGMAP_NAMESPACE,
    AllowAuthenticated,
    Authorizer,
    RequestHeaderConfig,
    SubjectAccessReviewAuthorizer,
    UserInfo,
    load_requestheader_config,
    make_server_ssl_context,
)
from autoscaler.server.external_metrics.quantity import format_quantity
from autoscaler.server.external_metrics.selector import (
    Requirement,
    Selector,
    SelectorError,
    parse_selector,
)
from autoscaler.server.external_metrics.server import (
    ExternalMetricsServer,
    ExternalMetricsSettings,
)

__all__ = [
    "CONFIGMAP_NAME",
    "CONFIGMAP_NAMESPACE",
    "GROUP",
    "GROUP_VERSION",
    "VERSION",
    "AllowAuthenticated",
    "Authorizer",
    "ExternalMetricsOptions",
    "ExternalMetricsServer",
    "ExternalMetricsSettings",
    "RequestHeaderConfig",
    "Requirement",
    "Selector",
    "SelectorError",
    "SubjectAccessReviewAuthorizer",
    "UserInfo",
    "format_quantity",
    "load_requestheader_config",
    "make_app",
    "make_server_ssl_context",
    "parse_selector",
]
