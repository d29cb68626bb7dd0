"""An HTTP proxy in front of a real Prometheus that breaks its answers on purpose.

Every request is forwarded to Prometheus unchanged; the answer is then rewritten according to
`mode` (see MODES) before it reaches the client. Body modes replace the whole answer (JSON
`null`, a list, `data: null`, ...); row modes change only the rows of one pod (`victim`), as a
single broken exporter would; transport modes slow the answer down (`trickle`) or make it
enormous (`huge`). `bytes_sent` counts what the proxy wrote, so a test can show that a client
stopped reading at its cap.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests

Doc = Any


def _rows(victim: str, fn: Callable[[dict[str, Any]], None]) -> Callable[[Doc], Doc]:
    def apply(doc: Doc) -> Doc:
        result = (doc.get("data") or {}).get("result")
        if isinstance(result, list):
            for row in result:
                if row.get("metric", {}).get("pod") == victim and row["metric"].get(
                    "pd_part", "value"
                ) == "value":
                    fn(row)
        return doc

    return apply


def _set_value(v: Any) -> Callable[[dict[str, Any]], None]:
    def fn(row: dict[str, Any]) -> None:
        row["value"] = [row["value"][0], v]

    return fn


def _drop_value(row: dict[str, Any]) -> None:
    row.pop("value", None)


BODY_MODES: dict[str, Callable[[Doc], Any]] = {
    "json_null": lambda doc: None,
    "json_list": lambda doc: [doc],
    "data_null": lambda doc: {**doc, "data": None},
    "result_string": lambda doc: {**doc, "data": {"resultType": "vector", "result": "oops"}},
    "result_scalar": lambda doc: {
        **doc, "data": {"resultType": "scalar", "result": [time.time(), "1"]}
    },
    "result_number": lambda doc: {**doc, "data": {"resultType": "vector", "result": 42}},
    "empty_result": lambda doc: {**doc, "data": {"resultType": "vector", "result": []}},
    "duplicate_rows": lambda doc: {
        **doc, "data": {**doc["data"], "result": doc["data"]["result"] * 2}
    },
}

# Modes that rewrite the rows of one pod (set per proxy: `victim`).
ROW_MODES = ("negative", "huge_value", "inf_value", "not_a_number", "no_value")

TRANSPORT_MODES = ("trickle", "huge", "not_json", "http_500", "reset")

MODES = ("pass", *BODY_MODES, *ROW_MODES, *TRANSPORT_MODES)


class FaultProxy:
    def __init__(self, upstream: str, *, victim: str, trickle_every_s: float = 0.2) -> None:
        self.upstream = upstream.rstrip("/")
        self.victim = victim
        self.mode = "pass"
        self.trickle_every_s = trickle_every_s
        self.requests = 0
        self.bytes_sent = 0
        self.cut_off = 0
        """Answers the client stopped reading before the end (trickle, huge)."""
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                proxy._handle(self, "POST")

            def do_GET(self) -> None:
                proxy._handle(self, "GET")

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _count(self, n: int) -> None:
        with self._lock:
            self.bytes_sent += n

    def _rewrite(self, doc: Doc) -> Any:
        mode = self.mode
        if mode in BODY_MODES:
            return BODY_MODES[mode](doc)
        fn = {
            "negative": _set_value("-100"),
            "huge_value": _set_value("1e308"),
            "inf_value": _set_value("+Inf"),
            "not_a_number": _set_value("twelve"),
            "no_value": _drop_value,
        }.get(mode)
        return _rows(self.victim, fn)(doc) if fn is not None else doc

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        with self._lock:
            self.requests += 1
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else None
        headers = {"Content-Type": h.headers.get("Content-Type", "")} if body else {}
        up = requests.request(
            method, self.upstream + h.path, data=body, headers=headers, timeout=30
        )
        mode = self.mode
        try:
            if mode == "huge":
                self._huge(h)
            elif mode == "trickle":
                self._trickle(h, up.content)
            elif mode == "http_500":
                self._send(h, 500, b"<html>Internal Server Error</html>", "text/html")
            elif mode == "reset":
                # Headers promised, then the connection dropped mid-body.
                h.send_response(200)
                h.send_header("Content-Type", "application/json")
                h.send_header("Content-Length", str(len(up.content)))
                h.end_headers()
                h.wfile.write(up.content[: len(up.content) // 2])
                h.wfile.flush()
                h.close_connection = True
                h.connection.shutdown(2)
            elif mode == "not_json":
                self._send(h, 200, b"<html><body>502 Bad Gateway (an ingress page)</body></html>",
                           "text/html")
            elif mode == "pass" or up.status_code != 200:
                self._send(h, up.status_code, up.content, "application/json")
            else:
                out = json.dumps(self._rewrite(up.json())).encode()
                self._send(h, 200, out, "application/json")
        except (BrokenPipeError, ConnectionResetError):
            with self._lock:
                self.cut_off += 1
            h.close_connection = True

    def _send(self, h: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str) -> None:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)
        self._count(len(body))

    def _trickle(self, h: BaseHTTPRequestHandler, body: bytes) -> None:
        """The real answer, one byte every `trickle_every_s` (a read timeout never fires)."""
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.flush()
        for i in range(len(body)):
            h.wfile.write(body[i : i + 1])
            h.wfile.flush()
            self._count(1)
            time.sleep(self.trickle_every_s)

    def _huge(self, h: BaseHTTPRequestHandler) -> None:
        """A well-formed vector without a Content-Length that never ends (rows of padding), as
        fast as the client reads it; stops when the client hangs up or after 1 GiB."""
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Connection", "close")
        h.end_headers()
        h.close_connection = True
        row = json.dumps({"metric": {"pod": "x" * 200}, "value": [1, "1"]}).encode() + b","
        chunk = row * (1024 * 1024 // len(row))
        h.wfile.write(b'{"status":"success","data":{"resultType":"vector","result":[')
        for _ in range(1024):
            h.wfile.write(chunk)
            self._count(len(chunk))
