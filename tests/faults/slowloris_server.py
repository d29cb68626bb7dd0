"""The external-metrics API in a process of its own, so a test can measure its RSS alone.

`python -m tests.faults.slowloris_server PKI_DIR LIMITS_JSON` serves the sample decision of
tests/server/conftest.py on 127.0.0.1 (a free port) with the test PKI, prints
`{"port": N}`, then answers each line read from stdin with one JSON line: the site's
`ConnectionStats` and the process's current RSS (kB, from /proc). EOF on stdin stops it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sys
import threading
from pathlib import Path

import structlog

from autoscaler.server import external_metrics as em
from autoscaler.server import limits as limits_mod
from autoscaler.server.store import DecisionStore
from tests.server.certs import Pki
from tests.server.conftest import sample_decision


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


async def main(pki: Pki, limits: limits_mod.ConnectionLimits) -> None:
    store = DecisionStore()
    decision, policy = sample_decision()
    store.update(decision, policy)
    settings = em.ExternalMetricsSettings(
        cert_file=pki.crt("server"), key_file=pki.key("server"), host="127.0.0.1", port=0,
        requestheader_ca_file=pki.crt("front-proxy-ca"),
        requestheader_allowed_names=("front-proxy-client",), authorize_with_sar=False,
        limits=limits)
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str | None] = asyncio.Queue()

    def read_stdin() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line)
        loop.call_soon_threadsafe(lines.put_nowait, None)

    async with em.ExternalMetricsServer(store, settings) as server:
        print(json.dumps({"port": server.port}), flush=True)
        threading.Thread(target=read_stdin, daemon=True).start()
        while await lines.get() is not None:
            assert server.site is not None
            stats = dataclasses.asdict(server.site.stats)
            stats.pop("_rejected_at_saturation", None)
            print(json.dumps({**stats, "rss_kb": rss_kb()}), flush=True)


if __name__ == "__main__":
    # stdout carries the protocol; logs go to stderr, without the per-connection debug lines.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr),
                        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    asyncio.run(main(Pki(Path(sys.argv[1])),
                     limits_mod.ConnectionLimits(**json.loads(sys.argv[2]))))
