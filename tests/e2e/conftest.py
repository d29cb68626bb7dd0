"""Fixtures for tests that need a real Kubernetes API (`@pytest.mark.k8s`).

- `k8s_cluster` (session): a `k8senv.cluster.ClusterInfo`. By default the control plane is
  built from upstream sources if missing (tests/k8senv/build.sh, minutes on a fresh machine) and
  started as local processes for the session, then torn down.
  With `KUBECONFIG` set to an existing file, that cluster is used instead and nothing is started
  (set `PD_E2E_LOCAL=1` to ignore a KUBECONFIG you keep set for other work). A kubeconfig
  written by `python -m tests.k8senv.cluster up` is recognised and its full description reused.
- `k8s_api` (function): a kubernetes_asyncio `ApiClient` with the cluster's admin credentials.
- `k8s_namespace` (function): a fresh namespace whose `default` ServiceAccount exists; deleted
  afterwards, waiting until its Pods are gone so the next test finds all GPUs free.

What KUBECONFIG mode assumes of a user's cluster (kind, say):
- Nodes advertising `nvidia.com/gpu` (kwok nodes, or an extended resource patched onto a node:
  `kubectl patch node N --subresource=status --type=json -p '[{"op":"add","path":
  "/status/capacity/nvidia.com~1gpu","value":"8"}]'`); their count and the smallest per-node
  amount become `gpu_nodes`/`gpus_per_node`.
- The apiserver can reach this machine for aggregated-API tests: set `PD_E2E_EXT_HOST` to an
  address it can dial (for kind, the docker network gateway, e.g. 172.18.0.1) and
  `PD_E2E_EXT_BIND` to an address to listen on (e.g. 0.0.0.0). A fresh extension CA and cert
  are generated; the front-proxy CA is read from kube-system/extension-apiserver-authentication.
- `kubectl` is the one on PATH (`ClusterInfo.kubectl` is None without one).
- The HPA controller runs with upstream defaults (15 s sync, 5 min downscale stabilization);
  `hpa_sync_period_s` reflects that so tests can scale their timeouts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import secrets
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.api_client import ApiClient
from kubernetes_asyncio.client.rest import ApiException

from ..k8senv import cluster as k8senv
from .support import delete_namespace, manifest, wait_for


def _external_kubeconfig() -> Path | None:
    if os.environ.get("PD_E2E_LOCAL"):
        return None
    raw = os.environ.get("KUBECONFIG", "")
    first = raw.split(os.pathsep)[0] if raw else ""
    return Path(first) if first and Path(first).is_file() else None


def _report(request: pytest.FixtureRequest, line: str) -> None:
    # Output capture hides print(); the terminal reporter reaches the user during a long build.
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"[k8s] {line}")


@pytest.fixture(scope="session")
def k8s_cluster(request: pytest.FixtureRequest,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[k8senv.ClusterInfo]:
    """The cluster for this session: a local one we start, or the one KUBECONFIG names."""
    external = _external_kubeconfig()
    if external is not None:
        _report(request, f"using existing cluster from KUBECONFIG={external}")
        yield _describe_external(external, tmp_path_factory.mktemp("k8s-ext"))
        return
    base = tmp_path_factory.mktemp("k8s")
    build_log = base / "build.log"
    _report(request, f"ensuring binaries (a cold build takes ~6 min on 2 cores; log {build_log})")
    bin_dir = k8senv.ensure_binaries(build_log)
    local = k8senv.LocalCluster(base / "run", _config_from_env(), bin_dir=bin_dir)
    info = local.start()
    started = (base / "run" / "startup_seconds").read_text().strip()
    _report(request, f"cluster up in {started}s at {info.api_url}; logs in {info.run_dir}/logs")
    try:
        yield info
    finally:
        local.stop()


def _config_from_env() -> k8senv.ClusterConfig:
    defaults = k8senv.ClusterConfig()
    return dataclasses.replace(
        defaults,
        gpu_nodes=int(os.environ.get("PD_E2E_GPU_NODES", defaults.gpu_nodes)),
        gpus_per_node=int(os.environ.get("PD_E2E_GPUS_PER_NODE", defaults.gpus_per_node)),
        pod_ready_delay_s=float(os.environ.get("PD_E2E_POD_READY_DELAY",
                                               defaults.pod_ready_delay_s)),
    )


def _describe_external(kubeconfig: Path, work: Path) -> k8senv.ClusterInfo:
    state = kubeconfig.parent / k8senv.STATE_FILE
    if state.is_file():
        # Started by `python -m tests.k8senv.cluster up`: everything is known; never stop it.
        return dataclasses.replace(k8senv.ClusterInfo.from_json(state.read_text()),
                                   managed=False)
    return asyncio.run(_discover(kubeconfig, work))


async def _discover(kubeconfig: Path, work: Path) -> k8senv.ClusterInfo:
    cfg = client.Configuration()
    await config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    ca_cert = work / "ca.crt"
    if cfg.ssl_ca_cert:
        shutil.copyfile(cfg.ssl_ca_cert, ca_cert)
    async with ApiClient(configuration=cfg) as api:
        core = client.CoreV1Api(api)
        auth = await core.read_namespaced_config_map("extension-apiserver-authentication",
                                                     "kube-system")
        front_proxy_ca = work / "front-proxy-ca.crt"
        front_proxy_ca.write_text(auth.data.get("requestheader-client-ca-file", ""))
        nodes = (await core.list_node()).items
    gpus = {n.metadata.name: int((n.status.allocatable or {}).get(k8senv.GPU_RESOURCE, "0"))
            for n in nodes}
    gpu_nodes = tuple(sorted(name for name, count in gpus.items() if count > 0))
    host = os.environ.get("PD_E2E_EXT_HOST", "localhost")
    defaults = k8senv.ClusterConfig()
    pki = k8senv.Pki(work / "pki")
    k8senv.make_ext_pki(pki, service=defaults.ext_service, namespace=defaults.ext_namespace,
                        host=host)
    return k8senv.ClusterInfo(
        run_dir=work, kubeconfig=kubeconfig, api_url=str(cfg.host), bin_dir=None,
        ca_cert=ca_cert, ca_key=None, admin_cert=None, admin_key=None,
        front_proxy_ca=front_proxy_ca, front_proxy_client_cert=None,
        front_proxy_client_key=None, ext_cert=pki.crt("ext-server"),
        ext_key=pki.key("ext-server"), ext_ca_cert=pki.crt("ext-ca"),
        ext_service=defaults.ext_service, ext_namespace=defaults.ext_namespace,
        ext_host=host, ext_bind_host=os.environ.get("PD_E2E_EXT_BIND", "127.0.0.1"),
        gpu_nodes=gpu_nodes, gpus_per_node=min((gpus[n] for n in gpu_nodes), default=0),
        pod_ready_delay_s=0.0, hpa_sync_period_s=15.0, hpa_downscale_stabilization_s=300.0,
        managed=False, kubectl=Path(found) if (found := shutil.which("kubectl")) else None,
    )


@pytest.fixture
async def k8s_api(k8s_cluster: k8senv.ClusterInfo) -> AsyncIterator[ApiClient]:
    """An admin ApiClient on the test's own event loop (closed after the test)."""
    cfg = client.Configuration()
    await config.load_kube_config(config_file=str(k8s_cluster.kubeconfig),
                                  client_configuration=cfg)
    async with ApiClient(configuration=cfg) as api:
        yield api


def _namespace_name(node_name: str) -> str:
    # DNS-1123 label: lowercase alphanumerics and '-', at most 63 characters.
    stem = re.sub(r"[^a-z0-9]+", "-", node_name.lower()).strip("-")[:40].strip("-")
    return f"e2e-{stem}-{secrets.token_hex(3)}"


@pytest.fixture
async def k8s_namespace(request: pytest.FixtureRequest, k8s_api: ApiClient) -> AsyncIterator[str]:
    """A fresh namespace, ready for Pods (its `default` ServiceAccount exists)."""
    core = client.CoreV1Api(k8s_api)
    name = _namespace_name(request.node.name)
    await core.create_namespace(manifest({"metadata": {"name": name,
                                                       "labels": {"pd-autoscaler/e2e": "true"}}}))

    async def default_sa() -> bool:
        try:
            await core.read_namespaced_service_account("default", name)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    await wait_for(default_sa, timeout_s=30, what=f"ServiceAccount {name}/default")
    try:
        yield name
    finally:
        await delete_namespace(core, name)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Everything under tests/e2e needs the cluster; mark it so `-m "not k8s"` skips it all.
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.k8s)
