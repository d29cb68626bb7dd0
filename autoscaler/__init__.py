"""pd-autoscaler: metrics-driven autoscaling of prefill/decode vLLM Deployments."""

__version__ = "0.1.0"
__all__ = ["__version__"]
