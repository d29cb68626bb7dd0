"""A real Kubernetes control plane for the e2e tests, built from upstream sources.

`build.sh` compiles the binaries once per machine; `cluster` runs them as local processes
(`python -m tests.k8senv.cluster up|run|down|status|build` from the repository root).
"""
