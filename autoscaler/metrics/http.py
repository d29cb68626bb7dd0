"""The query transport: one bounded HTTP POST to Prometheus' `/api/v1/query` (every tick) or
`/api/v1/query_range` (the forecast backfill at start-up), the PromQL form-encoded in the body.

The body, not the URL: Prometheus caps the request line and headers at 1 MiB and proxies often
at 8 KB, while a form body has no such limit (issue 16). Why not prometheus-api-client: it puts
the PromQL in URL parameters even for POST, and it uses `requests`, whose timeout bounds each
socket read, not the request. A server that trickles one
byte every half second never trips a 1 s read timeout and held one query for 137 s, and nothing
bounds how much a body may grow (a several-hundred-MB answer grew the process by 3 GB). Here:

- `deadline_s` bounds the whole query (connect, send, headers and every read of the body): it is
  aiohttp's `total` timeout, enforced by the event loop, so a trickle cannot stretch it;
- `max_bytes` caps the body: a Content-Length above it is refused before reading, and a body
  that grows past it while streaming is cut off there, so memory per query is bounded too;
- the body is decoded as JSON here (a decoding failure, a nesting too deep for the decoder) and
  judged by metrics/validate.py.

Everything that misses these bounds raises `QueryFailed` with a short `reason` that the source
counts and turns into missing data for the query's roles.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import orjson

from autoscaler.metrics import validate

_CHUNK = 64 * 1024

T = TypeVar("T")


class QueryFailed(Exception):
    """A query that produced no usable vector.

    reason: timeout | too_large | unreachable | error | malformed
    answered: False when no HTTP answer came at all (refused, reset before a status line, DNS),
        which is how the source tells "Prometheus down" from "Prometheus said something bad".
    retry: whether another attempt can help (a 4xx, a malformed body or an oversized one will
        be the same next time).
    """

    def __init__(self, reason: str, error: str, *, answered: bool = True, retry: bool = True):
        super().__init__(f"{reason}: {error}")
        self.reason = reason
        self.error = error
        self.answered = answered
        self.retry = retry


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to send instant queries."""

    url: str
    """Base URL; `/api/v1/query` is appended (a path prefix is kept)."""
    ssl: ssl.SSLContext | bool = True
    """aiohttp's ssl argument: a context (custom CA), True (system CAs) or False (no checks)."""


def ssl_context(*, ca_file: str | None, insecure: bool) -> ssl.SSLContext | bool:
    if insecure:
        return False
    if ca_file:
        return ssl.create_default_context(cafile=ca_file)
    return True


async def instant_query(
    session: aiohttp.ClientSession,
    endpoint: Endpoint,
    promql: str,
    *,
    deadline_s: float,
    max_bytes: int,
    headers: dict[str, str] | None = None,
    only: tuple[str, frozenset[str]] | None = None,
) -> validate.Vector:
    """One instant query, bounded in time and memory; raises QueryFailed. `only`: see
    `validate.parse_vector`."""
    form = {"query": promql, "timeout": _timeout(deadline_s)}
    body, status = await _send(
        session, endpoint, "/api/v1/query", form, deadline_s=deadline_s, max_bytes=max_bytes,
        headers=headers,
    )
    with paused_gc():
        return _decode(body, status, functools.partial(validate.parse_vector, only=only))


async def range_query(
    session: aiohttp.ClientSession,
    endpoint: Endpoint,
    promql: str,
    *,
    start: float,
    end: float,
    step: float,
    deadline_s: float,
    max_bytes: int,
    headers: dict[str, str] | None = None,
) -> list[Any]:
    """One range query (points at start, start + step, ... <= end), bounded in time and memory;
    returns the matrix rows, each still to be judged (`samples.range_points`); raises
    QueryFailed."""
    form = {
        "query": promql,
        "start": f"{start:.3f}",
        "end": f"{end:.3f}",
        "step": f"{step:g}",
        "timeout": _timeout(deadline_s),
    }
    body, status = await _send(
        session, endpoint, "/api/v1/query_range", form, deadline_s=deadline_s,
        max_bytes=max_bytes, headers=headers,
    )
    with paused_gc():
        return _decode(body, status, validate.parse_matrix)


def _timeout(deadline_s: float) -> str:
    # Prometheus stops evaluating at this point too, so a slow query frees its server side.
    return f"{max(1, round(deadline_s * 1000))}ms"


async def _send(
    session: aiohttp.ClientSession,
    endpoint: Endpoint,
    path: str,
    form: dict[str, str],
    *,
    deadline_s: float,
    max_bytes: int,
    headers: dict[str, str] | None,
) -> tuple[bytes, int]:
    url = endpoint.url.rstrip("/") + path
    try:
        async with asyncio.timeout(deadline_s):
            return await _post(
                session, url, form, headers=headers, ssl_arg=endpoint.ssl, max_bytes=max_bytes,
                deadline_s=deadline_s,
            )
    except TimeoutError as exc:
        # aiohttp raises its own TimeoutError subclasses for connect timeouts: no answer at all.
        connect = isinstance(exc, aiohttp.ConnectionTimeoutError)
        raise QueryFailed(
            "unreachable" if connect else "timeout",
            f"no complete answer within {deadline_s:g}s",
            answered=not connect,
        ) from exc
    except aiohttp.ClientConnectorError as exc:
        raise QueryFailed("unreachable", str(exc), answered=False) from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise QueryFailed("error", repr(exc)) from exc


async def _post(
    session: aiohttp.ClientSession,
    url: str,
    form: dict[str, str],
    *,
    headers: dict[str, str] | None,
    ssl_arg: ssl.SSLContext | bool,
    max_bytes: int,
    deadline_s: float,
) -> tuple[bytes, int]:
    # The connect gets most of the deadline on its own clock, so a blackholed address fails as
    # aiohttp's ConnectionTimeoutError (no answer: "unreachable") before the whole-query
    # deadline (an answer too slow: "timeout") fires.
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=deadline_s * 0.9)
    async with session.post(
        url, data=form, headers=headers, ssl=ssl_arg, timeout=timeout
    ) as resp:
        length = resp.content_length
        if length is not None and length > max_bytes:
            msg = f"Content-Length {length} bytes over the {max_bytes}-byte cap"
            raise QueryFailed("too_large", msg, retry=False)
        buf = bytearray()
        async for chunk in resp.content.iter_chunked(_CHUNK):
            buf += chunk
            if len(buf) > max_bytes:
                msg = f"body passed the {max_bytes}-byte cap; cut off"
                raise QueryFailed("too_large", msg, retry=False)
        return bytes(buf), resp.status


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic garbage collection inside the block (for synchronous code only).

    Decoding and judging an answer allocates one container per row and label set (tens of
    thousands per tick at 1,000 pools, issue 16), and every 700 allocations CPython runs a
    collection, some of which traverse the whole process heap (the policy, the state, every
    role's history). JSON trees hold no reference cycles, so those collections find nothing:
    at 1,000 pools they were about half of the fetch's CPU. Reference counting still frees
    everything as usual."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _decode(body: bytes, status: int, parse: Callable[[Any], T]) -> T:
    try:
        doc: Any = orjson.loads(body)
    except (ValueError, RecursionError) as exc:
        # orjson.JSONDecodeError is a ValueError, for invalid UTF-8 and for nesting deeper than
        # 1,024 levels (a hostile body of a few KB) too; it refuses the bare NaN/Infinity tokens
        # the standard library would read (Prometheus sends sample values as strings).
        what = f"HTTP {status}, body is not JSON ({type(exc).__name__}): {body[:120]!r}"
        raise QueryFailed("malformed" if status == 200 else "error", what,
                          retry=status >= 500) from exc
    try:
        result = parse(doc)
    except validate.MalformedResponse as exc:
        if status == 200:
            raise QueryFailed("malformed", str(exc), retry=False) from exc
        # Prometheus' own error answers (400 bad query, 422 execution error, 503 overloaded)
        # carry status "error" and land here with the HTTP code.
        raise QueryFailed("error", f"HTTP {status}: {exc}", retry=status >= 500) from exc
    if status != 200:
        raise QueryFailed("error", f"HTTP {status} with a result body", retry=status >= 500)
    return result
