"""Tests against a real Prometheus (marker: prometheus)."""
