"""PrometheusSettings: how the Prometheus source reaches Prometheus and judges its answers.

A frozen record with the reason for every default; `controller/factory.py` builds it from the
controller's settings, tests and benchmarks build it directly.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class PrometheusSettings:
    """How to reach Prometheus and how to judge what it returns."""

    url: str
    """Base URL, e.g. http://prometheus-operated.monitoring:9090 (a path prefix is kept)."""
    bearer_token: str | None = None
    """Sent as `Authorization: Bearer ...`."""
    bearer_token_file: str | None = None
    """Read before every tick (projected ServiceAccount tokens rotate); wins over bearer_token."""
    ca_file: str | None = None
    """PEM bundle to verify an https URL against (e.g. the service-CA of OpenShift monitoring)."""
    insecure_skip_verify: bool = False
    """Skip TLS verification (tests only)."""
    timeout_s: float = 5.0
    """Deadline of one instant query, connect and every read of the body included (a server that
    trickles bytes cannot stretch it); also sent to Prometheus as the query timeout so it stops
    working too."""
    max_response_bytes: int = 32 * 1024 * 1024
    """Cap on one instant query's body; a bigger answer is cut off and counts as a failed query.
    A row is ~200-400 bytes, so 32 MiB is ~100,000 pods' series in one query."""
    retries: int = 2
    """Extra attempts after a timeout, connection error or 5xx; 4xx (a bad query) is final."""
    backoff_s: float = 0.25
    """First retry delay; doubles per attempt."""
    rate_window_s: float = 120.0
    """Range of rate()/histogram windows. At least 4x the scrape interval, or rate() has too few
    samples (Prometheus' own rule of thumb)."""
    max_sample_age_s: float = 60.0
    """A gauge sample older than this is stale and its pod left out. Prometheus already hides
    series whose target went away (staleness markers); this catches what it cannot mark: a
    restart of Prometheus with targets gone, or exporters with frozen explicit timestamps."""
    discovery_interval_s: float = 300.0
    """How often to re-check which metric spellings the cluster exposes."""
    pod_label: str = "pod"
    """Label carrying the pod name (kube-prometheus and the Prometheus Operator set `pod`)."""
    namespace_label: str = "namespace"
    """Label carrying the namespace."""
    max_concurrency: int = 4
    """Queries in flight at once."""
    range_timeout_s: float = 30.0
    """Per range request (forecast backfill at start-up); also sent as the query timeout."""
    range_points_per_query: int = 1440
    """Steps per range request: a longer range is split into several requests (a day of
    1-minute bins each; Prometheus refuses more than 11,000 points per series)."""
