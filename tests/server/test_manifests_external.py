"""The external-metrics overlay and the KEDA manifests, checked statically: they render with the
real kubectl, wire the APIService to the leader-only Service, grant exactly the extension
apiserver roles, run the controller in shadow mode, and the example HPA/ScaledObjects carry the
no-double-damping settings and trigger metadata our scaler accepts."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from autoscaler.server import external_metrics as em
from autoscaler.server import keda, points
from tests import kubectl as kubectl_mod

pytestmark = pytest.mark.external_metrics

ROOT = Path(__file__).resolve().parents[2]
OVERLAY = ROOT / "manifests" / "overlays" / "external-metrics"
KEDA = ROOT / "manifests" / "keda"


@pytest.fixture(scope="module")
def kubectl() -> Path:
    return kubectl_mod.find()


def render(kubectl: Path, target: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        [str(kubectl), "kustomize", str(target)], check=True, capture_output=True, text=True
    )
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def env(docs: list[dict[str, Any]]) -> dict[str, str]:
    dep = one(docs, "Deployment", "pd-autoscaler")
    return {
        e["name"]: e.get("value", "")
        for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]
    }


def test_overlay_wires_apiservice_to_leader_service(kubectl: Path) -> None:
    """APIService -> Service (selector-less, port 443) -> the leader EndpointSlice's port of the
    same name -> the container's ext-metrics port."""
    docs = render(kubectl, OVERLAY)
    api = one(docs, "APIService", "v1beta1.external.metrics.k8s.io")
    assert api["spec"]["group"] == em.GROUP
    assert not api["spec"].get("insecureSkipTLSVerify")
    ref = api["spec"]["service"]
    svc = one(docs, "Service", ref["name"])
    assert svc["metadata"]["namespace"] == ref["namespace"]
    assert "selector" not in svc["spec"]
    (port,) = [p for p in svc["spec"]["ports"] if p["port"] == ref["port"]]
    (slc,) = [d for d in docs if d["kind"] == "EndpointSlice"
              and d["metadata"]["labels"]["kubernetes.io/service-name"] == ref["name"]]
    assert slc["metadata"]["name"] == env(docs)["PD_AUTOSCALER_LEADER_ENDPOINTSLICE"]
    (slice_port,) = [p for p in slc["ports"] if p["name"] == port["name"]]
    dep = one(docs, "Deployment", "pd-autoscaler")
    ports = {p["name"]: p["containerPort"]
             for p in dep["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert slice_port["port"] == ports["ext-metrics"] == port["targetPort"]
    assert env(docs)["PD_AUTOSCALER_DRY_RUN"] == "true"  # the HPA actuates


def test_overlay_rbac_is_the_extension_apiserver_set(kubectl: Path) -> None:
    """auth-delegator (SAR) cluster-wide, the authentication-reader Role in kube-system."""
    docs = render(kubectl, OVERLAY)
    crb = one(docs, "ClusterRoleBinding", "pd-autoscaler:system:auth-delegator")
    assert crb["roleRef"]["name"] == "system:auth-delegator"
    rb = one(docs, "RoleBinding", "pd-autoscaler-extension-apiserver-authentication-reader")
    assert rb["metadata"]["namespace"] == em.CONFIGMAP_NAMESPACE
    assert rb["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "extension-apiserver-authentication-reader",
    }
    for b in (crb, rb):
        assert b["subjects"] == [
            {"kind": "ServiceAccount", "name": "pd-autoscaler", "namespace": "pd-autoscaler"}
        ]


def _behavior_passes_through(behavior: dict[str, Any]) -> None:
    for direction in ("scaleUp", "scaleDown"):
        b = behavior[direction]
        assert b["stabilizationWindowSeconds"] == 0
        assert b["selectPolicy"] == "Max"
        assert any(
            p["type"] == "Percent" and p["value"] >= 100 and p["periodSeconds"] <= 15
            for p in b["policies"]
        )


def test_hpa_example_passes_the_decision_through() -> None:
    """AverageValue 1 on pd_desired_replicas, one series (pool and role), no damping."""
    hpa = yaml.safe_load((OVERLAY / "hpa-example.yaml").read_text())
    (metric,) = hpa["spec"]["metrics"]
    ext = metric["external"]
    assert ext["metric"]["name"] == points.DESIRED
    assert set(ext["metric"]["selector"]["matchLabels"]) == {"pool", "role"}
    assert ext["target"] == {"type": "AverageValue", "averageValue": "1"}
    _behavior_passes_through(hpa["spec"]["behavior"])


def test_keda_kustomization_renders(kubectl: Path) -> None:
    """Shadow mode, the gRPC port, and a leader-only Service exposing it."""
    docs = render(kubectl, KEDA)
    assert env(docs)["PD_AUTOSCALER_DRY_RUN"] == "true"
    assert env(docs)["PD_AUTOSCALER_KEDA_GRPC_PORT"] == "9090"
    svc = one(docs, "Service", "pd-autoscaler-leader")
    assert "selector" not in svc["spec"]  # the leader EndpointSlice routes it
    assert {p["port"] for p in svc["spec"]["ports"]} == {9090, 8080}
    slc = one(docs, "EndpointSlice", "pd-autoscaler-leader")
    assert slc["metadata"]["labels"]["kubernetes.io/service-name"] == "pd-autoscaler-leader"
    assert env(docs)["PD_AUTOSCALER_LEADER_ENDPOINTSLICE"] == "pd-autoscaler-leader"
    # mTLS by default: cert, key and client CA from the mounted Secret.
    e = env(docs)
    assert e["PD_AUTOSCALER_KEDA_GRPC_CERT_DIR"] == "/etc/pd-autoscaler/keda-tls"
    assert e["PD_AUTOSCALER_KEDA_GRPC_CLIENT_CA_FILE"] == "/etc/pd-autoscaler/keda-tls/ca.crt"
    pod = one(docs, "Deployment", "pd-autoscaler")["spec"]["template"]["spec"]
    (vol,) = [v for v in pod["volumes"] if v["name"] == "keda-tls"]
    assert vol["secret"]["secretName"] == "pd-autoscaler-keda-tls"
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "keda-tls"]
    assert mount["mountPath"] == "/etc/pd-autoscaler/keda-tls"


@pytest.mark.parametrize(
    ("target", "ports"),
    [
        (ROOT / "manifests" / "base", {"http": {"monitoring"}}),
        (ROOT / "manifests" / "overlays" / "shadow", {"http": {"monitoring"}}),
        (OVERLAY, {"http": {"monitoring"}, "ext-metrics": {"*"}}),
        (KEDA, {"http": {"monitoring", "keda"}, "keda-grpc": {"keda"}}),
    ],
)
def test_network_policies_admit_only_who_needs_each_port(
    kubectl: Path, target: Path, ports: dict[str, set[str]]
) -> None:
    """Issue 17: every container port of the controller is covered by a NetworkPolicy that
    names who may reach it (a namespace, or '*' for the aggregator's port, which the server
    authenticates itself); no policy admits a port the Pod does not serve."""
    docs = render(kubectl, target)
    pod = one(docs, "Deployment", "pd-autoscaler")["spec"]["template"]
    served = {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
    admitted: dict[str, set[str]] = {}
    for np in [d for d in docs if d["kind"] == "NetworkPolicy"]:
        assert np["metadata"]["namespace"] == "pd-autoscaler"
        sel = np["spec"]["podSelector"]["matchLabels"]
        assert sel.items() <= pod["metadata"]["labels"].items()
        assert np["spec"]["policyTypes"] == ["Ingress"]
        for rule in np["spec"]["ingress"]:
            sources = {
                f["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                for f in rule.get("from", [])
            } or {"*"}
            for port in rule["ports"]:
                admitted.setdefault(port["port"], set()).update(sources)
    assert admitted == ports
    assert set(admitted) == served


def test_keda_examples_use_mtls() -> None:
    """The push and poll ScaledObjects authenticate with the TriggerAuthentication example,
    which supplies exactly KEDA's three TLS parameters from one Secret."""
    auth = yaml.safe_load((KEDA / "triggerauthentication-example.yaml").read_text())
    params = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    assert params == {
        "caCert": ("pd-autoscaler-keda-client", "ca.crt"),
        "tlsClientCert": ("pd-autoscaler-keda-client", "tls.crt"),
        "tlsClientKey": ("pd-autoscaler-keda-client", "tls.key"),
    }
    for name in ("scaledobject-external.yaml", "scaledobject-external-push.yaml"):
        (trigger,) = yaml.safe_load((KEDA / name).read_text())["spec"]["triggers"]
        assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
    certs = list(yaml.safe_load_all((KEDA / "certificate-example.yaml").read_text()))
    secrets = {c["spec"].get("secretName") for c in certs if c["kind"] == "Certificate"}
    assert {"pd-autoscaler-keda-tls", "pd-autoscaler-keda-client"} <= secrets


@pytest.mark.parametrize("name", sorted(p.name for p in KEDA.glob("scaledobject-*.yaml")))
def test_scaledobject_examples(name: str) -> None:
    """Each example ScaledObject points at the leader Service, disables HPA damping, and its
    trigger metadata is accepted by our scaler (external) or our route (metrics-api)."""
    so = yaml.safe_load((KEDA / name).read_text())
    assert so["kind"] == "ScaledObject"
    _behavior_passes_through(so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"])
    (trigger,) = so["spec"]["triggers"]
    meta = trigger["metadata"]
    if trigger["type"] in ("external", "external-push"):
        assert meta["scalerAddress"].startswith("pd-autoscaler-leader.pd-autoscaler.svc:")
        ref = keda.TriggerRef.from_metadata(meta, default_namespace=so["metadata"]["namespace"])
        assert (ref.metric, ref.target) == (points.DESIRED, 1.0)
    else:
        assert trigger["type"] == "metrics-api"
        assert "/keda/v1/" in meta["url"]
        assert meta["valueLocation"] == "desiredReplicas"
        assert meta["targetValue"] == "1"
