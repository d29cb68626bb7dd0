"""Contract tests for the KEDA External Scaler (gRPC, with stubs generated from our proto) and
the metrics-api JSON endpoint."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from aiohttp.test_utils import TestClient, TestServer

from autoscaler import testing
from autoscaler.server import keda
from autoscaler.server._keda_pb import externalscaler_pb2 as pb
from autoscaler.server._keda_pb import externalscaler_pb2_grpc as pb_grpc
from autoscaler.server.store import DecisionStore
from autoscaler.types import Role

from . import gen_keda_pb
from .conftest import sample_decision

pytestmark = pytest.mark.external_metrics


def ref(**meta: str) -> pb.ScaledObjectRef:
    return pb.ScaledObjectRef(name="so", namespace="t", scalerMetadata=meta)


@pytest.fixture
async def scaler(store: DecisionStore) -> AsyncIterator[pb_grpc.ExternalScalerStub]:
    server = keda.KedaScalerServer(store, keda.KedaScalerSettings(host="127.0.0.1", port=0))
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield pb_grpc.ExternalScalerStub(channel)
    await server.stop(0)


def test_committed_stubs_match_the_proto() -> None:
    """The committed _keda_pb stubs are what grpcio-tools generates from our .proto today."""
    assert gen_keda_pb.main(["--check"]) == 0


def test_proto_is_wire_compatible_with_keda() -> None:
    """Method paths and field numbers are KEDA's (externalscaler.ExternalScaler, fields 1-3)."""
    svc = pb.DESCRIPTOR.services_by_name["ExternalScaler"]
    assert svc.full_name == "externalscaler.ExternalScaler"
    assert [m.name for m in svc.methods] == [
        "IsActive",
        "StreamIsActive",
        "GetMetricSpec",
        "GetMetrics",
    ]
    fields = {
        name: {f.name: (f.number, f.type) for f in pb.DESCRIPTOR.message_types_by_name[name].fields}
        for name in ("ScaledObjectRef", "MetricSpec", "GetMetricsRequest", "MetricValue")
    }
    F = pb.DESCRIPTOR.message_types_by_name["MetricSpec"].fields[0]  # noqa: N806 - type consts
    assert fields["ScaledObjectRef"]["name"][0] == 1
    assert fields["ScaledObjectRef"]["namespace"][0] == 2
    assert fields["ScaledObjectRef"]["scalerMetadata"][0] == 3
    assert fields["MetricSpec"] == {
        "metricName": (1, F.TYPE_STRING),
        "targetSize": (2, F.TYPE_INT64),
        "targetSizeFloat": (3, F.TYPE_DOUBLE),
    }
    assert fields["GetMetricsRequest"]["scaledObjectRef"][0] == 1
    assert fields["GetMetricsRequest"]["metricName"][0] == 2
    assert fields["MetricValue"] == {
        "metricName": (1, F.TYPE_STRING),
        "metricValue": (2, F.TYPE_INT64),
        "metricValueFloat": (3, F.TYPE_DOUBLE),
    }


async def test_all_four_rpcs(scaler: pb_grpc.ExternalScalerStub) -> None:
    """IsActive, GetMetricSpec (target 1 for desired replicas), GetMetrics (our number) and the
    first message of StreamIsActive, for the prefill role of pool p (desired 8)."""
    r = ref(pool="p", role="prefill")
    assert (await scaler.IsActive(r)).result is True
    spec = await scaler.GetMetricSpec(r)
    (ms,) = spec.metricSpecs
    assert (ms.targetSize, ms.targetSizeFloat) == (1, 1.0)
    assert ms.metricName == "pd-desired-replicas-p-prefill"
    values = await scaler.GetMetrics(
        pb.GetMetricsRequest(scaledObjectRef=r, metricName=ms.metricName)
    )
    (mv,) = values.metricValues
    assert (mv.metricName, mv.metricValue, mv.metricValueFloat) == (ms.metricName, 8, 8.0)
    stream = scaler.StreamIsActive(r)
    first = await asyncio.wait_for(stream.read(), 5)
    assert first.result is True
    stream.cancel()


async def test_signal_metric_needs_target(scaler: pb_grpc.ExternalScalerStub) -> None:
    """Signals need a targetValue; with one, the value is the signal's."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await scaler.GetMetricSpec(ref(pool="p", role="prefill", metric="queue_depth"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    r = ref(pool="p", role="prefill", metric="queue_depth", targetValue="2.5")
    spec = await scaler.GetMetricSpec(r)
    assert spec.metricSpecs[0].targetSizeFloat == 2.5
    values = await scaler.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=r, metricName="x"))
    assert values.metricValues[0].metricValueFloat == 20.0


@pytest.mark.parametrize(
    ("meta", "code"),
    [
        pytest.param({}, grpc.StatusCode.INVALID_ARGUMENT, id="no-pool"),
        pytest.param(
            {"pool": "nope", "role": "decode"}, grpc.StatusCode.NOT_FOUND, id="unknown-pool"
        ),
        pytest.param({"pool": "p", "role": "x"}, grpc.StatusCode.NOT_FOUND, id="unknown-role"),
        pytest.param({"pool": "p"}, grpc.StatusCode.INVALID_ARGUMENT, id="ambiguous-role"),
        pytest.param(
            {"pool": "p", "role": "decode", "namespace": "other"},
            grpc.StatusCode.NOT_FOUND,
            id="other-namespace",
        ),
        pytest.param(
            {"pool": "p", "role": "decode", "metric": "pd_ttft_p90", "targetValue": "1"},
            grpc.StatusCode.UNAVAILABLE,
            id="no-such-value",
        ),
        pytest.param(
            {"pool": "p", "role": "decode", "targetValue": "abc"},
            grpc.StatusCode.INVALID_ARGUMENT,
            id="bad-number",
        ),
    ],
)
async def test_errors(
    scaler: pb_grpc.ExternalScalerStub, meta: dict[str, str], code: grpc.StatusCode
) -> None:
    """Bad metadata and unknown targets are gRPC errors with a message, never a zero."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await scaler.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref(**meta), metricName="m"))
    assert err.value.code() == code


async def test_no_decision_is_unavailable_not_inactive() -> None:
    """Before the first decision IsActive errors (KEDA keeps replicas) instead of saying false."""
    server = keda.KedaScalerServer(
        DecisionStore(), keda.KedaScalerSettings(host="127.0.0.1", port=0)
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.ExternalScalerStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.IsActive(ref(pool="p", role="prefill"))
    finally:
        await server.stop(0)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_stream_pushes_on_change(
    store: DecisionStore, scaler: pb_grpc.ExternalScalerStub
) -> None:
    """StreamIsActive sends the current state, then a message only when it flips."""
    policy = testing.pool_policy(
        aggregated={
            "signals": [{"signal": "queue_depth", "target": 5}],
            "behavior": {"scale_down": {"stabilization_window_s": 0}},
        },
    )
    ticker = testing.Ticker(policy)
    ticker.tick(0, aggregated=testing.obs(2, queue_depth=5))
    store.update(ticker.decisions[-1], policy)
    # min_replicas 0 is rejected (no signal at zero replicas): activation above 1 instead.
    stream = scaler.StreamIsActive(ref(pool="p", activationValue="1"))
    assert (await asyncio.wait_for(stream.read(), 5)).result is True
    # Same answer again: no message. Then idle -> desired 1 -> inactive.
    ticker.tick(1, aggregated=testing.obs(2, queue_depth=5))
    store.update(ticker.decisions[-1], policy)
    ticker.tick(100, aggregated=testing.obs(2, queue_depth=0))
    assert ticker.decisions[-1].pools["p"].roles[Role.AGGREGATED].desired == 1
    store.update(ticker.decisions[-1], policy)
    assert (await asyncio.wait_for(stream.read(), 5)).result is False
    stream.cancel()


async def test_tls_with_client_cert(store: DecisionStore, pki: object) -> None:
    """With cert, key and client CA the scaler requires mTLS (KEDA's tlsClientCert)."""
    from .certs import Pki  # noqa: PLC0415

    assert isinstance(pki, Pki)
    settings = keda.KedaScalerSettings(
        host="127.0.0.1",
        port=0,
        cert_file=pki.crt("server"),
        key_file=pki.key("server"),
        client_ca_file=pki.crt("front-proxy-ca"),
    )
    server = keda.KedaScalerServer(store, settings)
    await server.start()
    try:
        good = grpc.ssl_channel_credentials(
            root_certificates=pki.crt("serving-ca").read_bytes(),
            private_key=pki.key("proxy").read_bytes(),
            certificate_chain=pki.crt("proxy").read_bytes(),
        )
        async with grpc.aio.secure_channel(f"localhost:{server.port}", good) as ch:
            assert (
                await pb_grpc.ExternalScalerStub(ch).IsActive(ref(pool="p", role="prefill"))
            ).result
        anon = grpc.ssl_channel_credentials(root_certificates=pki.crt("serving-ca").read_bytes())
        async with grpc.aio.secure_channel(f"localhost:{server.port}", anon) as ch:
            with pytest.raises(grpc.aio.AioRpcError):
                await pb_grpc.ExternalScalerStub(ch).IsActive(
                    ref(pool="p", role="prefill"), timeout=5
                )
    finally:
        await server.stop(0)


# --- metrics-api ------------------------------------------------------------------------------


@pytest.fixture
async def http(store: DecisionStore) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(keda.make_metrics_api_app(store))) as c:
        yield c


async def test_metrics_api_body(http: TestClient) -> None:
    """The JSON KEDA's metrics-api trigger reads with valueLocation `desiredReplicas`."""
    resp = await http.get("/keda/v1/p/prefill")
    assert resp.status == 200
    body = await resp.json()
    assert body["desiredReplicas"] == 8
    assert body["currentReplicas"] == 2
    assert body["signals"] == {"pd_queue_depth": 20.0}
    assert (body["namespace"], body["deployment"]) == ("t", "p-prefill")


@pytest.mark.parametrize(
    ("path", "code"),
    [
        pytest.param("/keda/v1/nope/prefill", 404, id="unknown-pool"),
        pytest.param("/keda/v1/p/nope", 404, id="unknown-role"),
        pytest.param("/keda/v1/p/prefill?namespace=other", 404, id="other-namespace"),
    ],
)
async def test_metrics_api_errors(http: TestClient, path: str, code: int) -> None:
    """Unknown targets are 404 with a reason."""
    resp = await http.get(path)
    assert resp.status == code
    assert "error" in await resp.json()


async def test_metrics_api_without_decision_is_503() -> None:
    """No decision yet: 503, so KEDA counts a failure (and applies its fallback) instead of 0."""
    async with TestClient(TestServer(keda.make_metrics_api_app(DecisionStore()))) as c:
        resp = await c.get("/keda/v1/p/prefill")
        assert resp.status == 503


def test_sample_decision_numbers() -> None:
    """The fixture's decision is what the tests above assume (prefill 8, decode 3)."""
    decision, _ = sample_decision()
    roles = decision.pools["p"].roles
    assert {r.value: d.desired for r, d in roles.items()} == {"prefill": 8, "decode": 3}


async def test_stream_and_message_limits(store: DecisionStore) -> None:
    """Issue 17: streams beyond max_concurrent_rpcs fail at once (RESOURCE_EXHAUSTED) instead
    of piling up; one closes, a new one is served; an oversized request is refused."""
    settings = keda.KedaScalerSettings(host="127.0.0.1", port=0, max_concurrent_rpcs=3,
                                       max_message_bytes=4096)
    server = keda.KedaScalerServer(store, settings)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.ExternalScalerStub(channel)
            streams = [stub.StreamIsActive(ref(pool="p", role="prefill")) for _ in range(3)]
            for s in streams:
                assert (await asyncio.wait_for(s.read(), 5)).result is True
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.IsActive(ref(pool="p", role="prefill"), timeout=5)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            streams[0].cancel()
            await asyncio.sleep(0.2)
            assert (await stub.IsActive(ref(pool="p", role="prefill"), timeout=5)).result
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.IsActive(ref(pool="p", role="prefill", pad="x" * 8192), timeout=5)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            for s in streams[1:]:
                s.cancel()
    finally:
        await server.stop(0)
