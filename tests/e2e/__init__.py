"""End-to-end tests against a real Kubernetes control plane (marker `k8s`, see conftest.py)."""
