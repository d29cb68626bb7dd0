"""`pd-autoscaler run`'s settings: PD_AUTOSCALER_* variables, then the `run` flags on top.

Every field is documented on `Settings`; docs/controller.md lists the variables.
"""

from __future__ import annotations

import argparse
import secrets
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoscaler import errors

ENV_PREFIX = "PD_AUTOSCALER_"
POLICY_LABEL = "pd-autoscaler.io/policy"
SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Everything `pd-autoscaler run` needs; flags win over PD_AUTOSCALER_* variables."""

    namespace: str
    """Where the Lease, the state ConfigMap and the policy ConfigMaps live."""
    identity: str
    """Leader-election identity; the Pod name in a cluster (unique per replica)."""
    kubeconfig: Path | None = None
    policy_file: Path | None = None
    """A policy file instead of ConfigMaps (polled for changes every `policy_poll_s`)."""
    policy_selector: str = f"{POLICY_LABEL}=true"
    prometheus_url: str | None = None
    prometheus_token_file: str | None = None
    prometheus_ca_file: str | None = None
    dry_run: bool = False
    """Shadow mode: full decisions, logged and exported, no writes to Deployments."""
    tick_s: float = 15.0
    """Seconds between ticks; matches a typical Prometheus scrape interval."""
    leader_election: bool = True
    lease_name: str = "pd-autoscaler"
    lease_duration_s: int = 15
    """How long a standby waits after the leader's last renewal before taking over (whole
    seconds: Lease.spec.leaseDurationSeconds is an integer)."""
    renew_deadline_s: float = 10.0
    """The leader stops (and stops writing) when it could not renew for this long."""
    retry_period_s: float = 2.0
    state_configmap: str = "pd-autoscaler-state"
    http_host: str = "0.0.0.0"  # noqa: S104 - probes and scrapes come from outside the Pod
    http_port: int = 8080
    api_timeout_s: float = 10.0
    """Per-request timeout for API calls."""
    policy_poll_s: float = 5.0
    # Adoption servers (docs/adoption.md); each is off unless configured. They bind `http_host`.
    external_metrics_port: int | None = None
    """Serve external.metrics.k8s.io/v1beta1 over TLS on this port (0: a free port)."""
    external_metrics_cert_dir: Path | None = None
    """Directory with the serving cert `tls.crt` and key `tls.key` (a mounted TLS Secret)."""
    keda_grpc_port: int | None = None
    """Serve the KEDA External Scaler (gRPC) on this port (0: a free port)."""
    keda_grpc_cert_dir: Path | None = None
    """`tls.crt`/`tls.key` for the gRPC scaler; unset: plaintext inside the cluster."""
    keda_grpc_client_ca_file: Path | None = None
    """Require client certificates signed by this CA (mTLS); needs `keda_grpc_cert_dir`."""
    keda_metrics_api: bool = False
    """Mount KEDA's metrics-api JSON endpoint (`/keda/v1/<pool>/<role>`) on the HTTP port."""
    serve_max_age_s: float = 120.0
    """The adoption servers answer "no data" once the latest decision is older than this."""
    leader_label: bool = False
    """Label this replica's Pod `pd-autoscaler.io/leader=true` while it leads (the adoption
    overlays' Services select it); needs `pod_name` and `pods` get/patch in `pod_namespace`."""
    pod_name: str | None = None
    """This replica's Pod (`POD_NAME` from the downward API)."""
    pod_namespace: str | None = None
    """The Pod's namespace (`POD_NAMESPACE`); defaults to `namespace`."""
    # Forecast history backfill (docs/prometheus.md): range queries before the first tick.
    forecast_backfill_s: float = 8 * 86400.0
    """History refilled per forecast policy on gaining leadership or adding forecast roles
    (also capped by each policy's history_s); 0 turns the backfill off."""
    forecast_backfill_timeout_s: float = 30.0
    """Bound on one backfill round; the first tick waits for it, so it must stay well inside
    the liveness probe's stall limit (max(60 s, 4 ticks))."""

    @property
    def external_metrics_cert(self) -> tuple[Path, Path] | None:
        d = self.external_metrics_cert_dir
        return None if d is None else (d / "tls.crt", d / "tls.key")

    @property
    def keda_grpc_cert(self) -> tuple[Path, Path] | None:
        d = self.keda_grpc_cert_dir
        return None if d is None else (d / "tls.crt", d / "tls.key")

    def validate(self) -> None:
        problems = []
        if self.tick_s <= 0:
            problems.append(f"tick_s: must be > 0 (got {self.tick_s})")
        if not self.lease_duration_s > self.renew_deadline_s > 1.2 * self.retry_period_s:
            problems.append(
                "lease_duration_s > renew_deadline_s > 1.2 x retry_period_s must hold (got "
                f"{self.lease_duration_s}, {self.renew_deadline_s}, {self.retry_period_s})"
            )
        if min(self.lease_duration_s, self.renew_deadline_s, self.retry_period_s) < 1:
            problems.append("lease durations must be >= 1 s (the elector's own limit)")
        for name in ("http_port", "external_metrics_port", "keda_grpc_port"):
            port = getattr(self, name)
            if port is not None and not 0 <= port <= 65535:
                problems.append(f"{name}: must be 0-65535 (got {port})")
        if self.external_metrics_port is not None and self.external_metrics_cert_dir is None:
            # The aggregator only speaks TLS and verifies the name; there is no plaintext mode.
            problems.append("external_metrics_cert_dir: required with external_metrics_port "
                            "(a directory with tls.crt and tls.key)")
        if self.keda_grpc_client_ca_file is not None and self.keda_grpc_cert_dir is None:
            problems.append("keda_grpc_client_ca_file: needs keda_grpc_cert_dir (mTLS is TLS)")
        # Checked at start-up so a missing Secret mount is one clear line, not a TLS traceback.
        for name, files in (("external_metrics_cert_dir", self.external_metrics_cert),
                            ("keda_grpc_cert_dir", self.keda_grpc_cert),
                            ("keda_grpc_client_ca_file",
                             (self.keda_grpc_client_ca_file,) if self.keda_grpc_client_ca_file
                             else None)):
            for f in files or ():
                if not f.is_file():
                    problems.append(f"{name}: {f} is not a readable file")
        if self.serve_max_age_s <= self.tick_s:
            problems.append(f"serve_max_age_s: must be > tick_s (got {self.serve_max_age_s}, "
                            f"tick {self.tick_s}): every answer would be stale between ticks")
        if self.leader_label and not self.pod_name:
            problems.append("leader_label: needs the Pod name (set POD_NAME from the downward "
                            "API: fieldRef metadata.name)")
        if self.forecast_backfill_s < 0:
            problems.append(f"forecast_backfill_s: must be >= 0 (got {self.forecast_backfill_s})")
        # Half the stall limit of Health (Controller.__init__): a slow Prometheus must not make
        # the liveness probe restart a new leader before its first tick.
        stall_s = max(60.0, 4 * self.tick_s)
        if not 0 < self.forecast_backfill_timeout_s <= stall_s / 2:
            problems.append(f"forecast_backfill_timeout_s: must be > 0 and <= {stall_s / 2:g} "
                            f"(got {self.forecast_backfill_timeout_s}): the first tick waits "
                            "for it")
        if problems:
            raise errors.ConfigError([f"settings: {p}" for p in problems])


# (field, type, parser) for every PD_AUTOSCALER_* variable; docs/controller.md lists them.
def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    msg = "expected true/false"
    raise ValueError(msg)


_ENV: dict[str, Callable[[str], Any]] = {
    "namespace": str,
    "identity": str,
    "kubeconfig": Path,
    "policy_file": Path,
    "policy_selector": str,
    "prometheus_url": str,
    "prometheus_token_file": str,
    "prometheus_ca_file": str,
    "dry_run": _bool,
    "tick_s": float,
    "leader_election": _bool,
    "lease_name": str,
    "lease_duration_s": int,
    "renew_deadline_s": float,
    "retry_period_s": float,
    "state_configmap": str,
    "http_host": str,
    "http_port": int,
    "api_timeout_s": float,
    "policy_poll_s": float,
    "external_metrics_port": int,
    "external_metrics_cert_dir": Path,
    "keda_grpc_port": int,
    "keda_grpc_cert_dir": Path,
    "keda_grpc_client_ca_file": Path,
    "keda_metrics_api": _bool,
    "serve_max_age_s": float,
    "leader_label": _bool,
    "forecast_backfill_s": float,
    "forecast_backfill_timeout_s": float,
}
# The downward API's conventional names, unprefixed (as client-go tools read them).
_POD_ENV = {"pod_name": "POD_NAME", "pod_namespace": "POD_NAMESPACE"}
# `run` flag (argparse dest) -> field; flags win over the environment.
_FLAGS = {"kubeconfig": "kubeconfig", "namespace": "namespace", "policy": "policy_file",
          "prometheus_url": "prometheus_url", "dry_run": "dry_run",
          "external_metrics_port": "external_metrics_port",
          "external_metrics_cert_dir": "external_metrics_cert_dir",
          "keda_grpc_port": "keda_grpc_port", "keda_metrics_api": "keda_metrics_api",
          "leader_label": "leader_label"}


def settings_from(args: argparse.Namespace | None, env: Mapping[str, str]) -> Settings:
    """Settings from PD_AUTOSCALER_* variables, then the `run` flags on top."""
    values: dict[str, Any] = {}
    problems: list[str] = []
    for name, parse in _ENV.items():
        var = ENV_PREFIX + name.upper()
        if var in env:
            try:
                values[name] = parse(env[var])
            except ValueError as exc:
                problems.append(f"env {var}: {exc} (got {env[var]!r})")
    for name, var in _POD_ENV.items():
        if env.get(var):
            values[name] = env[var]
    if args is not None:
        for flag, name in _FLAGS.items():
            value = getattr(args, flag, None)
            if value is not None:
                values[name] = value
    if problems:
        raise errors.ConfigError(problems)
    if "namespace" not in values:
        # In a Pod, the ServiceAccount's namespace is the natural home of the controller.
        try:
            values["namespace"] = SA_NAMESPACE_FILE.read_text().strip()
        except OSError:
            values["namespace"] = "default"
    if "identity" not in values:
        pod = env.get("POD_NAME") or socket.gethostname()
        values["identity"] = f"{pod}-{secrets.token_hex(3)}"
    settings = Settings(**values)
    settings.validate()
    return settings

