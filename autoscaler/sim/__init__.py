"""Trace-driven simulator of vLLM prefill/decode serving on Kubernetes.

Modules: `profile` (performance constants), `engine` (the discrete-event simulation),
`vllm_metrics` (per-replica /metrics state), `backends` (SimMetricsSource, SimActuator),
`traces` (trace loaders), `workload` (built-in generator), `evaluate` (SLOs, GPU-hours, oracle).
"""
