"""Slowloris against the external-metrics API, with its connection limits and without (issue 17).

Starts the API in a process of its own (tests/faults/slowloris_server.py, the test PKI), opens
48 TLS connections that trickle a request head and N silent TCP connections, waits a few
seconds, and prints what the server holds and its RSS growth: once with the shipped
`ConnectionLimits` defaults, once with the cap and timeouts lifted (as before issue 17).

    .venv/bin/python benchmarks/slowloris.py [--connections 2000] [--hold-s 3]
"""

from __future__ import annotations

import argparse
import ssl
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.faults.test_slowloris import TRICKLERS, Attack, server_process
from tests.server.certs import Pki, make_pki

UNLIMITED: dict[str, Any] = {
    "max_connections": 65536,
    "head_timeout_s": 3600,
    "tls_handshake_timeout_s": 3600,
    "keepalive_timeout_s": 3600,
}


def run(pki: Pki, label: str, n: int, hold_s: float, limits: dict[str, Any]) -> None:
    with server_process(pki, **limits) as srv:
        rss0 = srv.stats()["rss_kb"]
        attack = Attack()
        try:
            ctx = ssl.create_default_context(cafile=str(pki.crt("serving-ca")))
            attack.trickle_start(srv.port, TRICKLERS, ctx)
            attack.silent(srv.port, n)
            attack.poll(hold_s)
            st = srv.stats()
        finally:
            attack.close()
    print(
        f"{label:>9}: {n} silent + {TRICKLERS} trickling TLS connections, after {hold_s:.0f} s: "
        f"server holds {st['open']} (peak {st['peak_open']}), refused {st['rejected']}; "
        f"RSS {rss0 / 1024:.1f} -> {st['rss_kb'] / 1024:.1f} MB "
        f"(+{(st['rss_kb'] - rss0) / 1024:.1f} MB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--connections", type=int, default=2000)
    ap.add_argument("--hold-s", type=float, default=3.0,
                    help="how long after opening to measure (below the 5 s TLS handshake "
                    "timeout, so the held connections are all still there)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        pki = make_pki(Path(d) / "pki")
        run(pki, "defaults", args.connections, args.hold_s, {})
        run(pki, "unlimited", args.connections, args.hold_s, UNLIMITED)


if __name__ == "__main__":
    main()
