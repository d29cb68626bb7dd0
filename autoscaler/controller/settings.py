"""`pd-autoscaler run`'s settings: one field list gives the PD_AUTOSCALER_* variables, the
`run` flags and the validation.

Each field of `Settings` is read from `PD_AUTOSCALER_<FIELD>` (or the unprefixed name in its
`env` metadata: the downward API's `POD_NAME`/`POD_NAMESPACE`/`POD_IP`); a field with `flag`
metadata is also a `run` flag (`add_flags` builds them for the CLI parser), and a flag wins over the
variable. docs/controller.md lists them. Bad values are one ConfigError line each, naming the
variable, flag or field.

Why a frozen pydantic model and not pydantic-settings' BaseSettings: the settings are built from
an explicit environment mapping (so `run` and the tests take one path), flags and variables must
keep their historical names and parsing (`true/yes/on/1`, empty = false), and the errors must
name the variable; all of it is these few lines over `model_fields`.
"""

from __future__ import annotations

import argparse
import ipaddress
import secrets
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic.config import JsonDict

from autoscaler import errors

ENV_PREFIX = "PD_AUTOSCALER_"
POLICY_LABEL = "pd-autoscaler.io/policy"
SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
REMOVED_VARIABLES = {
    f"{ENV_PREFIX}LEADER_LABEL": (
        "removed: the leader-only route is an EndpointSlice now, which needs no `patch pods` "
        f"(set {ENV_PREFIX}LEADER_ENDPOINTSLICE and POD_IP; docs/controller.md)"),
}
"""Variables an older manifest may still set: an error naming the replacement, not silence."""


def _bool(value: object) -> object:
    """The spellings the variables have always accepted; a flag gives a bool already."""
    if not isinstance(value, str):
        return value
    low = value.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    msg = "expected true/false"
    raise ValueError(msg)


Bool = Annotated[bool, BeforeValidator(_bool)]


def _meta(**kw: str) -> JsonDict:
    """A field's `flag` (and its `metavar`, `help`) or its unprefixed `env` name."""
    return dict(kw)


class Settings(BaseModel):
    """Everything `pd-autoscaler run` needs; flags win over PD_AUTOSCALER_* variables."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    namespace: str = Field(..., json_schema_extra=_meta(
        flag="--namespace", help="the controller's namespace: policy ConfigMaps, Lease, state"))
    """Where the Lease, the state ConfigMap and the policy ConfigMaps live."""
    identity: str
    """Leader-election identity; the Pod name in a cluster (unique per replica)."""
    kubeconfig: Path | None = Field(None, json_schema_extra=_meta(
        flag="--kubeconfig",
        help="kubeconfig file (default: in-cluster config, else $KUBECONFIG or ~/.kube/config)"))
    policy_file: Path | None = Field(
        None, json_schema_extra=_meta(
            flag="--policy",
            metavar="POLICY",
            help=("policy file (else ConfigMaps labelled pd-autoscaler.io/policy=true in "
                  "--namespace)"),
        ))
    """A policy file instead of ConfigMaps (polled for changes every `policy_poll_s`)."""
    policy_selector: str = f"{POLICY_LABEL}=true"
    prometheus_url: str | None = Field(None, json_schema_extra=_meta(
        flag="--prometheus-url",
        help="Prometheus base URL (required, here or PD_AUTOSCALER_PROMETHEUS_URL)"))
    prometheus_token_file: str | None = None
    prometheus_ca_file: str | None = None
    dry_run: Bool = Field(False, json_schema_extra=_meta(
        flag="--dry-run", help="shadow mode: decide and log, never write replicas"))
    """Shadow mode: full decisions, logged and exported, no writes to Deployments."""
    tick_s: float = 15.0
    """Seconds between ticks; matches a typical Prometheus scrape interval."""
    leader_election: Bool = True
    lease_name: str = "pd-autoscaler"
    lease_duration_s: int = 15
    """How long a standby waits after the leader's last renewal before taking over (whole
    seconds: Lease.spec.leaseDurationSeconds is an integer)."""
    renew_deadline_s: float = 10.0
    """The leader stops (and stops writing) when it could not renew for this long."""
    retry_period_s: float = 2.0
    state_configmap: str = "pd-autoscaler-state"
    """The state shards are `<state_configmap>-<i>`; this name itself is the single ConfigMap
    of earlier versions, read once to migrate (state_store.py)."""
    state_shards: int = 60
    """How many state ConfigMaps (shipped by the manifests, each named in the Role). 60 keep
    each far below 1 MiB at 5,000 pools even with the longest windows a policy allows
    (benchmarks/state_shards.py), and divide by every useful bucket count (1-6, 10, 12, ...)."""
    buckets: int = 1
    """Replica sharding (shards.py): pools hashed onto this many buckets, one Lease
    `<lease_name>-<b>` each, every replica ticking the buckets it holds. 1: one leader."""
    http_host: str = "0.0.0.0"  # noqa: S104 - probes and scrapes come from outside the Pod
    http_port: int = 8080
    api_timeout_s: float = 10.0
    """Per-request timeout for API calls."""
    policy_poll_s: float = 5.0
    cluster_cache: Bool = True
    """Read the target Deployments from a watch cache (controller/cluster_cache.py) instead of
    one GET per role and tick; needs `list`/`watch` on them. Off: the GETs, as before."""
    cluster_cache_label_selector: str | None = None
    """Narrows the watch of a namespace holding more than 4 targets (a namespace with at most 4
    is watched per Deployment by name, which RBAC can restrict by resourceNames)."""
    cluster_cache_watch_timeout_s: int = 300
    """The API server ends each watch after this long; the cache resumes from the last
    resourceVersion (no re-list)."""
    # Adoption servers (docs/adoption.md); each is off unless configured. They bind `http_host`.
    external_metrics_port: int | None = Field(
        None, json_schema_extra=_meta(
            flag="--external-metrics-port",
            metavar="PORT",
            help="serve external.metrics.k8s.io over TLS on PORT",
        ))
    """Serve external.metrics.k8s.io/v1beta1 over TLS on this port (0: a free port)."""
    external_metrics_cert_dir: Path | None = Field(
        None, json_schema_extra=_meta(
            flag="--external-metrics-cert-dir",
            metavar="DIR",
            help="tls.crt and tls.key for --external-metrics-port",
        ))
    """Directory with the serving cert `tls.crt` and key `tls.key` (a mounted TLS Secret)."""
    keda_grpc_port: int | None = Field(
        None, json_schema_extra=_meta(
            flag="--keda-grpc-port",
            metavar="PORT",
            help="serve the KEDA External Scaler (gRPC) on PORT",
        ))
    """Serve the KEDA External Scaler (gRPC) on this port (0: a free port)."""
    keda_grpc_cert_dir: Path | None = None
    """`tls.crt`/`tls.key` for the gRPC scaler; unset: plaintext inside the cluster."""
    keda_grpc_client_ca_file: Path | None = None
    """Require client certificates signed by this CA (mTLS); needs `keda_grpc_cert_dir`."""
    keda_metrics_api: Bool = Field(
        False, json_schema_extra=_meta(
            flag="--keda-metrics-api",
            help="serve KEDA's metrics-api JSON at /keda/v1/<pool>/<role> on the HTTP port",
        ))
    """Mount KEDA's metrics-api JSON endpoint (`/keda/v1/<pool>/<role>`) on the HTTP port."""
    serve_max_age_s: float = 120.0
    """The adoption servers answer "no data" once the latest decision is older than this."""
    serve_probe_s: float = 5.0
    """Each adoption server is probed this often (its serving loop, a dial of its port) and
    restarted when dead (controller/servers.py)."""
    leader_endpointslice: str | None = Field(
        None, json_schema_extra=_meta(
            flag="--leader-endpointslice",
            metavar="NAME",
            help="while leading, point the EndpointSlice NAME (in --namespace) at POD_IP",
        ))
    """The leader-only route (controller/endpoint.py): while this replica leads, the shipped
    EndpointSlice of this name in `namespace` holds its `pod_ip` alone (the adoption overlays'
    selector-less Services use it); needs `pod_ip` and get/patch on that one slice."""
    pod_ip: str | None = Field(None, json_schema_extra=_meta(env="POD_IP"))
    """This replica's Pod IP (`POD_IP` from the downward API: fieldRef status.podIP)."""
    leader_endpoint_reassert_s: float = 30.0
    """While leading, re-read the EndpointSlice this often and repair it (a re-applied
    manifest resets it to no endpoints)."""
    pod_name: str | None = Field(None, json_schema_extra=_meta(env="POD_NAME"))
    """This replica's Pod (`POD_NAME` from the downward API)."""
    pod_namespace: str | None = Field(None, json_schema_extra=_meta(env="POD_NAMESPACE"))
    """The Pod's namespace (`POD_NAMESPACE`); defaults to `namespace`."""
    # Forecast history backfill (docs/prometheus.md): range queries before the first tick.
    forecast_backfill_s: float = 8 * 86400.0
    """History refilled per forecast or slo policy on gaining leadership or adding such roles
    (also capped by each policy's history_s, or an slo policy's memory); 0 turns the backfill
    off."""
    forecast_backfill_timeout_s: float = 30.0
    refit_workers: int = 1
    """Worker processes for forecast refits (controller/refits.py): their concurrency bound.
    0 runs them on one thread of the controller's own process, as before."""
    refit_timeout_s: float = 600.0
    """A refit still running after this long fails (the previous model stays) and its worker
    is replaced."""
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

    def _sharding_problems(self) -> list[str]:
        out = []
        if not 1 <= self.buckets <= 256:
            out.append(f"buckets: must be 1-256 (got {self.buckets})")
        elif not 1 <= self.state_shards <= 1024 or self.state_shards % self.buckets:
            # Shard i belongs to bucket i % buckets only when buckets divides shards.
            out.append(f"state_shards: must be 1-1024 and a multiple of buckets (got "
                       f"{self.state_shards}, buckets {self.buckets})")
        if self.buckets > 1:
            if not self.leader_election:
                out.append("buckets: > 1 needs leader_election (one Lease per bucket)")
            # Each replica knows only its own pools, and the adoption Services route to one
            # leader's address: sharded adoption would answer "no data" for most pools.
            out.extend(f"{name}: not supported with buckets > 1 (each replica decides only "
                       "its own pools; use buckets=1 for the HPA/KEDA adoption paths)"
                       for name in ("external_metrics_port", "keda_grpc_port",
                                    "keda_metrics_api", "leader_endpointslice")
                       # `is`, not `in (None, False)`: port 0 (a free port) == False.
                       if getattr(self, name) is not None and getattr(self, name) is not False)
        return out

    @model_validator(mode="after")
    def _validate(self) -> Settings:
        problems = []
        if self.tick_s <= 0:
            problems.append(f"tick_s: must be > 0 (got {self.tick_s})")
        if not self.lease_duration_s > self.renew_deadline_s > 1.2 * self.retry_period_s:
            problems.append(
                "lease_duration_s > renew_deadline_s > 1.2 x retry_period_s must hold (got "
                f"{self.lease_duration_s}, {self.renew_deadline_s}, {self.retry_period_s})"
            )
        problems.extend(self._sharding_problems())
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
        if self.refit_workers < 0 or self.refit_timeout_s <= 0:
            problems.append(f"refit_workers >= 0 and refit_timeout_s > 0 must hold (got "
                            f"{self.refit_workers}, {self.refit_timeout_s})")
        if self.cluster_cache_watch_timeout_s < 1:
            problems.append("cluster_cache_watch_timeout_s: must be >= 1 "
                            f"(got {self.cluster_cache_watch_timeout_s})")
        if self.serve_max_age_s <= self.tick_s:
            problems.append(f"serve_max_age_s: must be > tick_s (got {self.serve_max_age_s}, "
                            f"tick {self.tick_s}): every answer would be stale between ticks")
        if self.leader_endpointslice is not None:
            if not self.pod_ip:
                problems.append("leader_endpointslice: needs the Pod IP (set POD_IP from the "
                                "downward API: fieldRef status.podIP)")
            else:
                try:
                    ipaddress.ip_address(self.pod_ip)
                except ValueError:
                    problems.append(f"pod_ip: POD_IP is not an IP address (got "
                                    f"{self.pod_ip!r})")
        if self.serve_probe_s <= 0:
            problems.append(f"serve_probe_s: must be > 0 (got {self.serve_probe_s})")
        if self.leader_endpoint_reassert_s <= 0:
            problems.append("leader_endpoint_reassert_s: must be > 0 (got "
                            f"{self.leader_endpoint_reassert_s})")
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
        return self


def _fields() -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for name, f in Settings.model_fields.items():
        extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
        out[name] = {k: str(v) for k, v in extra.items()}
    return out


def env_names() -> dict[str, str]:
    """field -> the variable it is read from."""
    return {name: meta.get("env", ENV_PREFIX + name.upper()) for name, meta in _fields().items()}


def add_flags(parser: argparse.ArgumentParser) -> None:
    """The `run` flags, from the fields that declare one (dest = the field name)."""
    for name, meta in _fields().items():
        flag = meta.get("flag")
        if flag is None:
            continue
        annotation = Settings.model_fields[name].annotation
        kw: dict[str, Any] = {"dest": name}
        if annotation is bool:
            # None, not False: an absent flag leaves the variable alone.
            kw.update(action="store_true", default=None)
        elif annotation in (Path, Path | None):
            kw["type"] = Path
        elif annotation in (int, int | None):
            kw["type"] = int
        for key in ("metavar", "help"):
            if key in meta:
                kw[key] = meta[key]
        parser.add_argument(flag, **kw)


def settings_from(args: argparse.Namespace | None, env: Mapping[str, str]) -> Settings:
    """Settings from the environment, then the `run` flags on top; ConfigError naming the
    variable, flag or field of every bad value."""
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    gone = [f"env {var}: {why}" for var, why in REMOVED_VARIABLES.items() if env.get(var)]
    if gone:
        raise errors.ConfigError(gone)
    for name, var in env_names().items():
        if env.get(var) or (var.startswith(ENV_PREFIX) and var in env):
            values[name], origin[name] = env[var], f"env {var}"
    if args is not None:
        for name, meta in _fields().items():
            value = getattr(args, name, None) if "flag" in meta else None
            if value is not None:
                values[name], origin[name] = value, f"flag {meta['flag']}"
    if "namespace" not in values:
        # In a Pod, the ServiceAccount's namespace is the natural home of the controller.
        try:
            values["namespace"] = SA_NAMESPACE_FILE.read_text().strip()
        except OSError:
            values["namespace"] = "default"
    if "identity" not in values:
        pod = env.get("POD_NAME") or socket.gethostname()
        values["identity"] = f"{pod}-{secrets.token_hex(3)}"
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = str(err["loc"][0]) if err["loc"] else ""
            where = origin.get(name, f"settings: {name}")
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{where}: {msg} (got {err.get('input')!r})")
        raise errors.ConfigError(problems) from exc
