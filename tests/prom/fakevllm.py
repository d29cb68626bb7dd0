"""A controllable fake of vLLM's `/metrics`: known ground truth, both naming generations.

Every pod is a path on one HTTP server (`/pods/<namespace>/<pod>/metrics`), and Prometheus
targets it with `__metrics_path__`, so a fleet of pods costs one port. Counters grow linearly
with wall time (value = rate x elapsed), so `rate()` over them returns the configured rate, and
every histogram observation of a pod sits at one known value, so the bucket it lands in (and
`histogram_quantile`'s interpolation inside it) is known exactly.

The output is always the classic text format (0.0.4), whatever the scraper's Accept header
asks for: see docs/prometheus.md on what OpenMetrics negotiation does to `vllm:` names.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Literal

from tests.prom.promserver import TEXT_FORMAT, Answer, serve_expositions

Naming = Literal["new", "old", "both"]

# vLLM V1 default buckets (VLLM-METRICS.md §3c).
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
)  # fmt: skip
E2E_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
    240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
ITER_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
# vLLM's 1-2-5 token-count buckets up to max_model_len (VLLM-METRICS.md §3c).
TOKEN_BUCKETS = tuple(m * 10**e for e in range(6) for m in (1, 2, 5) if m * 10**e <= 131_072)


def interpolated_quantile(buckets: tuple[float, ...], value: float, q: float) -> float:
    """What histogram_quantile returns when every observation equals `value`: linear
    interpolation inside the bucket (lower, upper] that holds it."""
    lower = 0.0
    for upper in buckets:
        if value <= upper:
            return lower + (upper - lower) * q
        lower = upper
    return lower  # +Inf bucket: Prometheus returns the highest finite bound


def rs_pod(deployment: str, i: int) -> str:
    """The name the ReplicaSet of Deployment `deployment` gives its i-th pod
    (`<deployment>-<pod-template-hash>-<5 characters>`), which is how the source finds a
    Deployment's pods when its `metrics:` section sets no `pod_regex` or `labels`."""
    return f"{deployment}-5d8f7c9b4-x{i:04d}"


@dataclass
class FakePod:
    """One vLLM pod's metric state. Rates are per second; per-engine values are split evenly."""

    name: str
    namespace: str
    model: str = "fake/model"
    naming: Naming = "new"
    escaped: bool = False
    """Write `vllm_` instead of `vllm:` (what an escaping scrape path stores)."""
    engines: int = 1
    waiting: float = 0.0
    """Per pod (summed over engines)."""
    running: float = 0.0
    kv: float = 0.0
    """0-1 fraction, the same on every engine."""
    old_kv: float | None = None
    """With naming="both": a different value for the old name (to prove which one is read)."""
    tokens_per_step: float = 0.0
    steps_per_s: float = 0.0
    request_rate: float = 0.0
    prompt_tokens_per_request: float = 0.0
    generation_tokens_per_request: float = 0.0
    prompt_lengths: tuple[float, ...] = ()
    """Prompt lengths of the requests, in equal shares, for `vllm:request_prompt_tokens`
    (rendered only when set)."""
    ttft_s: float = 0.2
    itl_s: float = 0.02
    prefill_s: float = 0.2
    """Every request's `request_prefill_time_seconds` (scheduled to first token)."""
    nan: bool = False
    """Report the gauges as NaN."""
    frozen_ms: int | None = None
    """Attach this explicit timestamp to every sample (a stale exporter)."""
    status: int = 200
    """HTTP status of /metrics (503 takes the target down)."""
    t0: float = field(default_factory=time.time)

    # --- rendering --------------------------------------------------------------------------

    def _n(self, name: str) -> str:
        return name.replace("vllm:", "vllm_", 1) if self.escaped else name

    def render(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        dt = max(0.0, now - self.t0)
        w = _Writer(self)
        gauge = math.nan if self.nan else 1.0  # NaN poisons every gauge of the pod
        w.per_engine("vllm:num_requests_waiting", "gauge", self.waiting * gauge, split=True)
        w.per_engine("vllm:num_requests_running", "gauge", self.running * gauge, split=True)
        if self.naming in ("new", "both"):
            w.per_engine("vllm:kv_cache_usage_perc", "gauge", self.kv * gauge, split=False)
        if self.naming in ("old", "both"):
            old = self.kv if self.old_kv is None else self.old_kv
            w.per_engine("vllm:gpu_cache_usage_perc", "gauge", old * gauge, split=False)

        requests = self.request_rate * dt
        w.per_engine(
            "vllm:request_success_total",
            "counter",
            requests,
            split=True,
            extra=',finished_reason="stop"',
        )
        prompt = requests * self.prompt_tokens_per_request
        w.per_engine("vllm:prompt_tokens_total", "counter", prompt, split=True)
        generated = requests * self.generation_tokens_per_request
        w.per_engine("vllm:generation_tokens_total", "counter", generated, split=True)
        steps = self.steps_per_s * dt
        w.histogram("vllm:iteration_tokens_total", ITER_BUCKETS, self.tokens_per_step, steps)
        w.histogram("vllm:time_to_first_token_seconds", TTFT_BUCKETS, self.ttft_s, requests)
        tokens = requests * max(self.generation_tokens_per_request - 1, 0)
        if self.naming in ("new", "both"):
            w.histogram("vllm:inter_token_latency_seconds", ITL_BUCKETS, self.itl_s, tokens)
        if self.naming in ("old", "both"):
            w.histogram("vllm:time_per_output_token_seconds", ITL_BUCKETS, self.itl_s, tokens)
        w.histogram("vllm:e2e_request_latency_seconds", E2E_BUCKETS, 1.0, requests)
        w.histogram("vllm:request_prefill_time_seconds", E2E_BUCKETS, self.prefill_s, requests)
        if self.prompt_lengths:
            share = requests / len(self.prompt_lengths)
            mix = [(length, share) for length in self.prompt_lengths]
            w.histogram_mix("vllm:request_prompt_tokens", TOKEN_BUCKETS, mix)
        return "\n".join(w.lines) + "\n"

    def labels(self, engine: int) -> str:
        return f'engine="{engine}",model_name="{self.model}"'


class _Writer:
    """Classic text exposition lines for one pod."""

    def __init__(self, pod: FakePod) -> None:
        self.pod = pod
        self.lines: list[str] = []
        self.ts = f" {pod.frozen_ms}" if pod.frozen_ms is not None else ""

    def family(self, name: str, kind: str, samples: list[tuple[str, str, float]]) -> None:
        n = name.replace("vllm:", "vllm_", 1) if self.pod.escaped else name
        self.lines.append(f"# HELP {n} fake vLLM {name}")
        self.lines.append(f"# TYPE {n} {kind}")
        for suffix, labels, v in samples:
            text = "NaN" if math.isnan(v) else repr(float(v))
            self.lines.append(f"{n}{suffix}{{{labels}}} {text}{self.ts}")

    def per_engine(
        self, name: str, kind: str, value: float, *, split: bool, extra: str = ""
    ) -> None:
        n = self.pod.engines
        v = value / n if split else value
        self.family(name, kind, [("", self.pod.labels(e) + extra, v) for e in range(n)])

    def histogram(self, name: str, buckets: tuple[float, ...], value: float, count: float) -> None:
        self.histogram_mix(name, buckets, [(value, count)])

    def histogram_mix(
        self, name: str, buckets: tuple[float, ...], mix: list[tuple[float, float]]
    ) -> None:
        """A histogram of observations at the given values, (value, count) each."""
        samples: list[tuple[str, str, float]] = []
        n = self.pod.engines
        for e in range(n):
            lab = self.pod.labels(e)
            for b in buckets:
                below = sum(c for v, c in mix if v <= b) / n
                samples.append(("_bucket", f'{lab},le="{float(b)!r}"', below))
            samples.append(("_bucket", f'{lab},le="+Inf"', sum(c for _, c in mix) / n))
            samples.append(("_sum", lab, sum(v * c for v, c in mix) / n))
            samples.append(("_count", lab, sum(c for _, c in mix) / n))
        self.family(name, "histogram", samples)


class FakeVllmServer:
    """One HTTP server for many fake pods, in a daemon thread."""

    def __init__(self) -> None:
        self.pods: dict[tuple[str, str], FakePod] = {}
        self.scrapes: dict[tuple[str, str], int] = {}
        self.accept_headers: list[str] = []
        lock = threading.Lock()
        server = self

        def answer(path: str, accept: str) -> Answer:
            parts = path.strip("/").split("/")
            if len(parts) != 4 or parts[0] != "pods" or parts[3] != "metrics":
                return 404
            key = (parts[1], parts[2])
            with lock:
                pod = server.pods.get(key)
                server.scrapes[key] = server.scrapes.get(key, 0) + 1
                server.accept_headers.append(accept)
                del server.accept_headers[:-50]
            if pod is None:
                return 404
            if pod.status != 200:
                return pod.status
            # Classic text format regardless of Accept (see the module docstring).
            return pod.render().encode(), TEXT_FORMAT

        self.httpd = serve_expositions(answer)
        self.port = self.httpd.server_address[1]

    def add(self, pod: FakePod) -> FakePod:
        self.pods[(pod.namespace, pod.name)] = pod
        return pod

    def target(self, pod: FakePod) -> dict[str, object]:
        """A file_sd entry for the pod (labels as the Prometheus Operator would set them)."""
        return {
            "targets": [f"127.0.0.1:{self.port}"],
            "labels": {
                "__metrics_path__": f"/pods/{pod.namespace}/{pod.name}/metrics",
                "namespace": pod.namespace,
                "pod": pod.name,
            },
        }

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
