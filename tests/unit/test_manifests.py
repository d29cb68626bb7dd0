"""manifests/ and the Dockerfile, checked statically: every kustomization renders with the real
kubectl (tests/kubectl.py: the venv's, no Go build), the RBAC is least privilege and covers exactly the
Deployments the shipped policy scales, the controller Pod is locked down, and the Dockerfile
follows the image rules (pinned base, multi-stage, non-root, no pip cache). The rendered RBAC
is enforced by the real API server in tests/e2e/test_controller_e2e.py (test 5)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from autoscaler.controller.settings import Settings
from autoscaler.policy.load import parse_policy
from tests import kubectl as kubectl_mod

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
KUSTOMIZATIONS = ("base", "overlays/shadow", "overlays/kind", "overlays/sharded", "examples",
                  "monitoring")


@pytest.fixture(scope="module")
def kubectl() -> Path:
    # A no-op once the binaries are built (the e2e session fixture builds them the same way).
    return kubectl_mod.find()


def render(kubectl: Path, target: str) -> list[dict[str, Any]]:
    out = subprocess.run([str(kubectl), "kustomize", str(MANIFESTS / target)], check=True,
                         capture_output=True, text=True)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


@pytest.mark.parametrize("target", KUSTOMIZATIONS)
def test_kustomizations_render(kubectl: Path, target: str) -> None:
    """Each kustomization renders; every namespaced object has an explicit namespace."""
    docs = render(kubectl, target)
    assert docs
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
    for d in docs:
        if d["kind"] not in cluster_scoped:
            assert d["metadata"].get("namespace"), f"{d['kind']}/{d['metadata']['name']}"


def _rules(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for role in by_kind(docs, "Role") for r in role["rules"]]


def _grants(docs: list[dict[str, Any]], resource: str, verb: str) -> list[dict[str, Any]]:
    return [r for r in _rules(docs) if resource in r["resources"] and verb in r["verbs"]]


def test_rbac_is_least_privilege(kubectl: Path) -> None:
    """Namespaced Roles only, no wildcards, no write on Deployments themselves, and scale
    writes limited by name to the Deployments the shipped policy scales."""
    docs = render(kubectl, "base")
    assert not by_kind(docs, "ClusterRole")
    assert not by_kind(docs, "ClusterRoleBinding")
    for rule in _rules(docs):
        assert "*" not in rule["verbs"]
        assert "*" not in rule["resources"]
        assert "secrets" not in rule["resources"]
    for verb in ("patch", "update", "create", "delete"):
        assert not _grants(docs, "deployments", verb), verb
    assert not _grants(docs, "pods", "list")  # pending is counted from Deployment status

    (policy_cm,) = [cm for cm in by_kind(docs, "ConfigMap")
                    if cm["metadata"]["labels"].get("pd-autoscaler.io/policy") == "true"]
    targets: set[tuple[str, str]] = set()
    for key, text in policy_cm["data"].items():
        policy = parse_policy(text, source=key)
        targets |= {(r.deployment.namespace, r.deployment.name)
                    for p in policy.pools for r in p.roles.values()}
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]): r
             for r in by_kind(docs, "Role")}
    for ns, name in targets:
        role = roles[(ns, "pd-autoscaler-targets")]
        scale = [r for r in role["rules"] if r["resources"] == ["deployments/scale"]]
        assert scale
        assert scale[0]["verbs"] == ["get", "patch"]
        assert name in scale[0]["resourceNames"]
    granted = {(role["metadata"]["namespace"], n)
               for role in by_kind(docs, "Role")
               for r in role["rules"] if "deployments/scale" in r["resources"]
               for n in r.get("resourceNames", [])}
    assert granted == targets  # no Deployment beyond the policy's

    named = {tuple(r["resources"]): r.get("resourceNames") for r in _grants(docs, "configmaps",
                                                                            "update")}
    # Exactly the controller's state shards, by name (their number is the setting's default).
    shards = Settings.model_fields["state_shards"].default
    shard_names = [f"pd-autoscaler-state-{i}" for i in range(shards)]
    assert named == {("configmaps",): shard_names}
    # No unnamed `create configmaps`: with it the controller could create a policy-labelled
    # ConfigMap and load it. The state shards ship with the manifests instead.
    assert not _grants(docs, "configmaps", "create")
    state_cms = [cm for cm in by_kind(docs, "ConfigMap")
                 if cm["metadata"]["name"].startswith("pd-autoscaler-state")]
    assert sorted(cm["metadata"]["name"] for cm in state_cms) == sorted(shard_names)
    assert not any("pd-autoscaler.io/policy" in cm["metadata"].get("labels", {})
                   for cm in state_cms)


def test_shadow_overlay_cannot_scale(kubectl: Path) -> None:
    """Shadow mode is enforced by RBAC as well as by the flag."""
    docs = render(kubectl, "overlays/shadow")
    assert not _grants(docs, "deployments/scale", "patch")
    (dep,) = [d for d in by_kind(docs, "Deployment") if d["metadata"]["name"] == "pd-autoscaler"]
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]
           ["env"]}
    assert env["PD_AUTOSCALER_DRY_RUN"] == "true"


def test_sharded_overlay_names_every_bucket_lease(kubectl: Path) -> None:
    """The sharded overlay's settings are valid (buckets divide the state shards) and its Role
    names exactly the Leases those buckets use, no more."""
    docs = render(kubectl, "overlays/sharded")
    (dep,) = [d for d in by_kind(docs, "Deployment") if d["metadata"]["name"] == "pd-autoscaler"]
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    buckets = int(env["PD_AUTOSCALER_BUCKETS"])
    assert dep["spec"]["replicas"] > 1
    Settings(namespace="x", identity="a", buckets=buckets)  # valid: raises otherwise
    leases = [r for r in _grants(docs, "leases", "update") if r.get("resourceNames")]
    assert [r["resourceNames"] for r in leases] == [
        ["pd-autoscaler", *(f"pd-autoscaler-{b}" for b in range(buckets))]]


def test_controller_pod_is_locked_down(kubectl: Path) -> None:
    """Two replicas, non-root, read-only root FS, no capabilities, probes and resources."""
    (dep,) = by_kind(render(kubectl, "base"), "Deployment")
    spec = dep["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert dep["spec"]["replicas"] == 2
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["resources"]["requests"]
    assert c["resources"]["limits"]["memory"]
    env = {e["name"] for e in c["env"]}
    assert {"PD_AUTOSCALER_IDENTITY", "PD_AUTOSCALER_NAMESPACE"} <= env


def test_examples_request_gpus(kubectl: Path) -> None:
    """The example vLLM Deployments are the policy's targets and request one GPU each."""
    deps = by_kind(render(kubectl, "examples"), "Deployment")
    assert {d["metadata"]["name"] for d in deps} == {"llama-8b-prefill", "llama-8b-decode"}
    for d in deps:
        limits = d["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == "1"


# --- Dockerfile -----------------------------------------------------------------------------


def _dockerfile() -> list[str]:
    text = (ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)  # join continuation lines
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def test_dockerfile_rules() -> None:
    """Pinned slim base, multi-stage, no pip cache, non-root numeric USER, `run` entrypoint."""
    lines = _dockerfile()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", "\n".join(lines), re.MULTILINE))
    froms = [ln.split()[1] for ln in lines if ln.startswith("FROM ")]
    assert len(froms) >= 2, "multi-stage"
    for image in froms:
        resolved = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", resolved), resolved
    final = lines[max(i for i, ln in enumerate(lines) if ln.startswith("FROM ")):]
    users = [ln.split()[1] for ln in final if ln.startswith("USER ")]
    assert users, "final stage sets USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit()
    assert int(uid) != 0
    for ln in lines:
        if re.search(r"\bpip install\b", ln):
            assert "--no-cache-dir" in ln or "PIP_NO_CACHE_DIR" in "\n".join(lines), ln
    joined_final = "\n".join(final)
    assert not re.search(r"apt-get install|build-essential|gcc|pip install", joined_final)
    assert any(ln.startswith("COPY --from=build") for ln in final)
    assert 'ENTRYPOINT ["pd-autoscaler"]' in final
    assert 'CMD ["run"]' in final
