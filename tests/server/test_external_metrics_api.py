"""The external-metrics API over real TLS: authentication as the aggregation layer requires,
the values an HPA reads, discovery, and clean 4xx answers to malformed or oversized input."""

from __future__ import annotations

import socket
import ssl
import urllib.parse
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoscaler.server import external_metrics as em
from autoscaler.server import points
from autoscaler.server.store import DecisionStore

from .certs import Pki
from .conftest import ThreadedServer, client_ctx, get, sample_decision, start_server

pytestmark = pytest.mark.external_metrics

BASE = "/apis/external.metrics.k8s.io/v1beta1"


def values_path(metric: str, selector: str | None = None, ns: str = "t") -> str:
    q = "" if selector is None else "?labelSelector=" + urllib.parse.quote(selector, safe="")
    return f"{BASE}/namespaces/{ns}/{metric}{q}"


# --- authentication ---------------------------------------------------------------------------


def test_front_proxy_cert_with_allowed_cn_is_served(api_server: ThreadedServer, pki: Pki) -> None:
    """The aggregator's client cert (front-proxy CA, allowed CN) plus X-Remote-User gets data."""
    status, body = get(
        api_server.port, values_path(points.DESIRED, "pool=p,role=prefill"), ctx=client_ctx(pki)
    )
    assert status == 200, body
    assert [i["value"] for i in body["items"]] == ["8"]


def test_no_client_cert_is_401_even_with_remote_user(api_server: ThreadedServer, pki: Pki) -> None:
    """Without a verified cert the X-Remote-* headers are not trusted: 401."""
    status, body = get(
        api_server.port,
        values_path(points.DESIRED),
        ctx=client_ctx(pki, None),
        headers={"X-Remote-User": "system:admin", "X-Remote-Group": "system:masters"},
    )
    assert status == 401
    assert body["kind"] == "Status"
    assert body["reason"] == "Unauthorized"


def test_cert_from_another_ca_is_rejected_in_the_handshake(
    api_server: ThreadedServer, pki: Pki
) -> None:
    """A client cert with the right CN but another issuer never reaches HTTP."""
    with pytest.raises((ssl.SSLError, ConnectionError)):
        get(api_server.port, values_path(points.DESIRED), ctx=client_ctx(pki, "rogue"))


def test_disallowed_cn_is_403(api_server: ThreadedServer, pki: Pki) -> None:
    """A cert from the front-proxy CA whose CN is not in requestheader-allowed-names: 403."""
    status, body = get(
        api_server.port, values_path(points.DESIRED), ctx=client_ctx(pki, "proxy-other-cn")
    )
    assert status == 403
    assert "not an allowed requestheader name" in body["message"]


def test_empty_allowed_names_accepts_any_cn_from_the_ca(
    pki: Pki, store: DecisionStore
) -> None:
    """requestheader-allowed-names empty = any certificate the requestheader CA signed."""
    with start_server(pki, store, allowed=()) as srv:
        status, _ = get(srv.port, values_path(points.DESIRED), ctx=client_ctx(pki, "proxy-other-cn"))
    assert status == 200


def test_missing_user_header_is_401(api_server: ThreadedServer, pki: Pki) -> None:
    """A proxy that forwards no user is not an authenticated request."""
    status, _ = get(
        api_server.port, values_path(points.DESIRED), ctx=client_ctx(pki), headers={"X-Remote-User": ""}
    )
    assert status == 401


def test_health_needs_no_cert(api_server: ThreadedServer, pki: Pki) -> None:
    """Liveness probes work without a client certificate."""
    assert get(api_server.port, "/healthz", ctx=client_ctx(pki, None))[0] == 200


class RecordingAuthorizer:
    """Denies one user; records what it was asked (the SubjectAccessReview attributes)."""

    def __init__(self) -> None:
        self.asked: list[tuple[em.UserInfo, str | None, str]] = []

    async def authorize(
        self, user: em.UserInfo, *, namespace: str | None, resource: str
    ) -> tuple[bool, str]:
        self.asked.append((user, namespace, resource))
        return user.name != "mallory", "no RBAC rule"


def test_authorizer_sees_forwarded_identity_and_can_deny(
    pki: Pki, store: DecisionStore
) -> None:
    """The forwarded user, groups and extras reach the authorizer; a denial is a 403 Status."""
    authz = RecordingAuthorizer()
    with start_server(pki, store, authorizer=authz) as srv:
        ok, _ = get(
            srv.port,
            values_path(points.DESIRED),
            ctx=client_ctx(pki),
            headers={"X-Remote-User": "alice", "X-Remote-Extra-Scopes%2Fa": "x"},
        )
        denied, body = get(
            srv.port,
            values_path(points.DESIRED),
            ctx=client_ctx(pki),
            headers={"X-Remote-User": "mallory"},
        )
    assert ok == 200
    assert denied == 403
    assert "mallory" in body["message"]
    user, ns, resource = authz.asked[0]
    assert (user.name, user.groups, ns, resource) == (
        "alice",
        ("system:serviceaccounts",),
        "t",
        points.DESIRED,
    )
    assert user.extra == {"scopes/a": ("x",)}


# --- values and discovery ---------------------------------------------------------------------


def test_values_list_shape(api_server: ThreadedServer, pki: Pki) -> None:
    """ExternalMetricValueList as client-go decodes it: labels, RFC 3339 timestamp, quantity."""
    status, body = get(
        api_server.port, values_path("pd_kv_cache", "role=decode"), ctx=client_ctx(pki)
    )
    assert status == 200
    assert body["kind"] == "ExternalMetricValueList"
    assert body["apiVersion"] == "external.metrics.k8s.io/v1beta1"
    (item,) = body["items"]
    assert item["metricName"] == "pd_kv_cache"
    assert item["metricLabels"] == {
        "pool": "p",
        "role": "decode",
        "namespace": "t",
        "deployment": "p-decode",
    }
    assert item["value"] == "500m"
    assert item["timestamp"].endswith("Z")


@pytest.mark.parametrize(
    ("metric", "selector", "want"),
    [
        pytest.param(points.DESIRED, "pool=p,role=prefill", ["8"], id="desired-prefill"),
        pytest.param(points.DESIRED, "pool=p,role=decode", ["3"], id="desired-decode"),
        pytest.param(points.DESIRED, "role in (prefill,decode)", ["8", "3"], id="both-roles"),
        pytest.param(points.DESIRED, "pool=other", [], id="no-match"),
        pytest.param(points.CURRENT, "role=prefill", ["2"], id="current"),
        pytest.param("pd_queue_depth", "role=prefill", ["20"], id="signal"),
        pytest.param("pd_queue_depth", "role=decode", [], id="signal-not-configured"),
        pytest.param("pd_nothing", None, [], id="unknown-metric-empty"),
    ],
)
def test_values_by_selector(
    api_server: ThreadedServer, pki: Pki, metric: str, selector: str | None, want: list[str]
) -> None:
    """The selector picks pool/role; unknown metrics give an empty list, not an error."""
    status, body = get(api_server.port, values_path(metric, selector), ctx=client_ctx(pki))
    assert status == 200
    assert [i["value"] for i in body["items"]] == want


def test_namespace_scoping(api_server: ThreadedServer, pki: Pki) -> None:
    """A pool is only visible from its Deployment's namespace."""
    status, body = get(
        api_server.port, values_path(points.DESIRED, ns="elsewhere"), ctx=client_ctx(pki)
    )
    assert status == 200
    assert body["items"] == []


def test_stale_decision_serves_nothing(pki: Pki) -> None:
    """Once the last decision is older than max_age_s the HPA gets no value and holds."""
    now = [1000.0]
    store = DecisionStore(mono_clock=lambda: now[0])
    decision, policy = sample_decision()
    store.update(decision, policy)
    opts = em.ExternalMetricsOptions(max_age_s=60)
    with start_server(pki, store, options=opts) as srv:
        # The server reads time.monotonic(); make the update look old instead.
        now[0] = -1e9
        store.update(decision, policy)
        status, body = get(srv.port, values_path(points.DESIRED), ctx=client_ctx(pki))
    assert status == 200
    assert body["items"] == []


def test_no_decision_yet_serves_nothing(pki: Pki) -> None:
    """Before the first tick the list is empty (the HPA reports no metrics and holds)."""
    with start_server(pki, DecisionStore()) as srv:
        status, body = get(srv.port, values_path(points.DESIRED), ctx=client_ctx(pki))
    assert (status, body["items"]) == (200, [])


def test_discovery(api_server: ThreadedServer, pki: Pki) -> None:
    """APIResourceList for the group/version (the aggregator's availability probe), and the
    legacy group list at /apis."""
    status, body = get(api_server.port, BASE, ctx=client_ctx(pki))
    assert status == 200
    assert body["kind"] == "APIResourceList"
    assert body["groupVersion"] == "external.metrics.k8s.io/v1beta1"
    assert body["resources"][0]["kind"] == "ExternalMetricValueList"
    status, body = get(api_server.port, "/apis", ctx=client_ctx(pki))
    assert status == 200
    assert body["groups"][0]["name"] == "external.metrics.k8s.io"


@pytest.mark.parametrize(
    ("path", "code"),
    [
        pytest.param(values_path(points.DESIRED, "pool in (p"), 400, id="bad-selector"),
        pytest.param(values_path(points.DESIRED, ns="Bad_NS"), 400, id="bad-namespace"),
        pytest.param(f"{BASE}/namespaces/t/bad%20metric", 400, id="bad-metric"),
        pytest.param(
            values_path(points.DESIRED) + "?labelSelector=a&labelSelector=b", 400, id="selector-twice"
        ),
        pytest.param(f"{BASE}/namespaces/t", 404, id="no-metric"),
        pytest.param(f"{BASE}/namespaces/t/m/extra", 404, id="too-deep"),
        pytest.param("/apis/other.group/v1", 404, id="other-group"),
    ],
)
def test_malformed_requests_get_status_errors(
    api_server: ThreadedServer, pki: Pki, path: str, code: int
) -> None:
    """Bad input gets a 4xx with a metav1.Status body (kubectl prints its message)."""
    status, body = get(api_server.port, path, ctx=client_ctx(pki))
    assert status == code
    assert body["kind"] == "Status"
    assert body["code"] == code


def test_wrong_method_is_405(api_server: ThreadedServer, pki: Pki) -> None:
    """The API is read-only."""
    status, body = get(
        api_server.port, values_path(points.DESIRED), ctx=client_ctx(pki), method="DELETE"
    )
    assert status == 405
    assert body["kind"] == "Status"


# --- oversized input --------------------------------------------------------------------------


def raw_request(port: int, pki: Pki, data: bytes) -> int:
    """Send raw bytes over TLS with the proxy cert; return the HTTP status (0 if none)."""
    ctx = client_ctx(pki)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
        ctx.wrap_socket(sock, server_hostname="localhost") as tls,
    ):
        tls.sendall(data)
        buf = b""
        try:
            while b"\r\n" not in buf:
                chunk = tls.recv(4096)
                if not chunk:
                    break
                buf += chunk
        except (ConnectionError, ssl.SSLError):
            pass
    if not buf.startswith(b"HTTP/1."):
        return 0
    return int(buf.split(b" ", 2)[1])


def _req(target: str, extra: str = "") -> bytes:
    return (
        f"GET {target} HTTP/1.1\r\nHost: localhost\r\nX-Remote-User: hpa\r\n{extra}"
        "Connection: close\r\n\r\n"
    ).encode()


@pytest.mark.parametrize(
    ("data", "codes"),
    [
        pytest.param(
            _req(values_path(points.DESIRED) + "?labelSelector=" + "a" * 20000),
            {400, 414},
            id="long-url",
        ),
        pytest.param(
            _req(values_path(points.DESIRED), "X-Big: " + "x" * 20000 + "\r\n"),
            {400, 431},
            id="big-header",
        ),
        pytest.param(
            _req(values_path(points.DESIRED), "".join(f"X-H{i}: v\r\n" for i in range(500))),
            {400, 431},
            id="many-headers",
        ),
        pytest.param(
            _req(values_path(points.DESIRED, ",".join(f"k{i}=v" for i in range(200)))),
            {400},
            id="many-selector-terms",
        ),
        pytest.param(b"NOT HTTP AT ALL\r\n\r\n", {400}, id="garbage"),
    ],
)
def test_oversized_input_gets_clean_4xx(
    api_server: ThreadedServer, pki: Pki, data: bytes, codes: set[int]
) -> None:
    """Long URLs, huge or many headers and huge selectors are refused with a 4xx, and the
    server keeps serving."""
    assert raw_request(api_server.port, pki, data) in codes
    assert get(api_server.port, values_path(points.DESIRED), ctx=client_ctx(pki))[0] == 200


# --- fuzzing against the running app --------------------------------------------------------

_segment = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=0, max_size=80
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ns=_segment, metric=_segment, selector=st.text(max_size=300))
def test_fuzz_paths_and_selectors(
    shared_server: tuple[ThreadedServer, Any], pki: Pki, ns: str, metric: str, selector: str
) -> None:
    """Arbitrary namespace, metric and selector text: always a 200 or a 4xx Status, never a 5xx
    or a dropped connection."""
    srv, _ = shared_server
    path = (
        f"{BASE}/namespaces/{urllib.parse.quote(ns, safe='')}/"
        f"{urllib.parse.quote(metric, safe='')}?labelSelector="
        f"{urllib.parse.quote(selector, safe='')}"
    )
    status, body = get(srv.port, path, ctx=client_ctx(pki))
    assert status == 200 or 400 <= status < 500, (status, body)
    if status != 200:
        assert isinstance(body, dict), body
        assert body.get("kind") == "Status", body


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(path=st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=300))
def test_fuzz_raw_paths(shared_server: tuple[ThreadedServer, Any], pki: Pki, path: str) -> None:
    """Any printable request target: a status line with a code below 500 (the HTTP parser may
    reject it before our handlers run)."""
    srv, _ = shared_server
    code = raw_request(srv.port, pki, _req("/" + path))
    assert 200 <= code < 500, code
