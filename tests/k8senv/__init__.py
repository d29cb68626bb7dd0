"""A real Kubernetes control plane for the e2e tests, built from upstream sources.

`build.sh` compiles the binaries once per machine; `cluster` runs them as local processes.
`tests/` is the import root (pytest's rootdir-relative "prepend" mode puts it on sys.path, and
ruff's `src` lists it), so test code imports this package as `k8senv`.
"""
