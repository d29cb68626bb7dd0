"""How big the state shards get, and what saving them costs (issue 16).

The state is made by the real decision core, not written by hand: the real `Loop` ticks N
prefill/decode pools (`controller_scale.policy_dict`, with a scale-down stabilization window of
`--window-s`: 300 s by default, up to 3,600 s, the most a policy may set) every 15 s for
`--ticks` ticks (by default the window's length plus 5, so every window is full), with each
role's load a random walk of its own, so each pool's recommendations, scale events and
last-scale records differ as they would in a fleet. Then the real `StateStore`
saves it into an in-memory CoreV1Api, as the controller does after a tick.

Printed: the uncompressed state per pool, the size of every shard object as the API server
would store it (binaryData as base64 plus metadata), the largest against the 1 MiB limit, the
CPU-s of one save that writes every shard, and the writes of a save where nothing changed.

    .venv/bin/python benchmarks/state_shards.py [--pools 5000] [--shards 60] [--window-s 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from controller_scale import policy_dict

LIMIT = 1024 * 1024


class MemoryCore:
    """The ConfigMap calls of CoreV1Api, in memory (merge-patch semantics for binaryData)."""

    def __init__(self) -> None:
        self.cms: dict[str, Any] = {}

    async def read_namespaced_config_map(self, name: str, ns: str, **_: Any) -> Any:
        from kubernetes_asyncio.client.rest import ApiException  # noqa: PLC0415

        if name not in self.cms:
            raise ApiException(status=404)
        return self.cms[name]

    async def patch_namespaced_config_map(self, name: str, ns: str, body: Any, **_: Any) -> Any:
        cm = self.cms[name]
        cm.binary_data.update(body["binaryData"])
        cm.annotations = body["metadata"]["annotations"]
        return cm

    async def create_namespaced_config_map(self, ns: str, body: Any, **_: Any) -> Any:
        self.cms[body.metadata.name] = SimpleNamespace(
            data=None, binary_data=dict(body.binary_data), annotations=body.metadata.annotations)
        return self.cms[body.metadata.name]


def object_bytes(name: str, cm: Any) -> int:
    """The object as JSON, about what etcd stores (binaryData values are base64 already)."""
    return len(json.dumps({"apiVersion": "v1", "kind": "ConfigMap",
                           "metadata": {"name": name, "namespace": "pd-autoscaler",
                                        "annotations": cm.annotations},
                           "binaryData": cm.binary_data}))


async def run(pools: int, shards: int, ticks: int, window_s: float, seed: int) -> None:
    import structlog  # noqa: PLC0415

    from autoscaler.controller.state_store import StateStore  # noqa: PLC0415
    from autoscaler.loop import Loop  # noqa: PLC0415
    from autoscaler.spec import PolicyFile  # noqa: PLC0415
    from autoscaler.testing import FakeActuator, FakeMetricsSource  # noqa: PLC0415
    from autoscaler.types import Role  # noqa: PLC0415

    sink = open(os.devnull, "w")  # noqa: SIM115, ASYNC230 - once, before the measured work
    structlog.configure(logger_factory=structlog.WriteLoggerFactory(sink))
    rng = random.Random(seed)  # noqa: S311 - a reproducible load, not a secret
    doc = policy_dict(pools)
    for pool in doc["pools"]:
        for role in pool["roles"].values():
            role["behavior"] = {"scale_down": {"stabilization_window_s": window_s,
                                               "rules": [{"type": "percent", "value": 100,
                                                          "period_s": 15}]}}
    policy = PolicyFile.model_validate(doc)
    src = FakeMetricsSource()
    load = {p.name: rng.uniform(2, 60) for p in policy.pools}
    loop = Loop(policy, src, FakeActuator())
    core = MemoryCore()
    store = StateStore(core, namespace="pd-autoscaler", name="pd-autoscaler-state",  # type: ignore[arg-type]
                       shards=shards, timeout_s=10)
    wall0 = 1.76e9
    await store.load(mono_now=0.0, wall_now=wall0)
    t0 = time.process_time()
    report = None
    for i in range(ticks):
        now = 15.0 * i + rng.uniform(0.0, 0.5)  # ticks are never exactly on the second
        for p in policy.pools:
            load[p.name] = max(0.0, load[p.name] * rng.uniform(0.8, 1.25) + rng.gauss(0, 2))
            q = load[p.name]
            src.set_totals(p.name, Role.PREFILL, queue_depth=q)
            src.set(p.name, Role.PREFILL, batched_tokens=min(1.0, q / 80), kv_cache=0.5,
                    ttft_p90=0.2 + q / 100)
            src.set_totals(p.name, Role.DECODE, running=q * 12)
            src.set(p.name, Role.DECODE, kv_cache=min(0.99, q / 70), itl_p50=0.03)
        report = await loop.tick(now)
        for (pool, role), replicas in report.applied.items():
            rd = report.decision.pools[pool].roles[role]
            store.last_scale.setdefault(pool, {})[role.value] = {
                "from": rd.current, "to": replicas, "driver": rd.driver,
                "clipped_by": list(rd.clipped_by), "time": "2026-11-26T19:00:00Z"}
    simulate_s = time.process_time() - t0
    assert report is not None
    mono = 15.0 * (ticks - 1) + 0.5
    raw = len(loop.state.to_json())
    t1 = time.process_time()
    await store.save(loop.state, report.decision, mono_now=mono, wall_now=wall0 + mono,
                     identity="bench")
    save_s = time.process_time() - t1
    first_writes = store.writes
    await store.save(loop.state, report.decision, mono_now=mono, wall_now=wall0 + mono,
                     identity="bench")
    sizes = sorted((object_bytes(n, cm), n) for n, cm in core.cms.items())
    largest, name = sizes[-1]
    print(f"pools {pools}, shards {shards}, window {window_s:g} s, {ticks} ticks of 15 s "
          f"simulated ({simulate_s:.1f} CPU-s)")
    print(f"state.json uncompressed: {raw / 1e6:.2f} MB in all, {raw / pools / 1e3:.2f} kB "
          "per pool")
    print(f"shard objects: {len(sizes)}, smallest {sizes[0][0] / 1024:.0f} KiB, median "
          f"{sizes[len(sizes) // 2][0] / 1024:.0f} KiB, largest {largest / 1024:.0f} KiB "
          f"({name}; {100 * largest / LIMIT:.0f} % of the 1 MiB limit), total "
          f"{sum(s for s, _ in sizes) / 1e6:.2f} MB")
    print(f"save writing every shard: {save_s:.2f} CPU-s, {first_writes} writes; "
          f"the same state again: {store.writes - first_writes} writes")
    if largest >= LIMIT:
        sys.exit(f"shard {name} is {largest} bytes: over the 1 MiB object limit")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--pools", type=int, default=5000)
    ap.add_argument("--shards", type=int, default=60)
    ap.add_argument("--ticks", type=int, default=0,
                    help="ticks simulated (default: the window's plus 5, so it is full)")
    ap.add_argument("--window-s", type=float, default=300.0,
                    help="scale-down stabilization window (300: the default; 3600: the most "
                         "a policy may set, the worst case)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    ticks = args.ticks or int(args.window_s / 15) + 5
    asyncio.run(run(args.pools, args.shards, ticks, args.window_s, args.seed))


if __name__ == "__main__":
    main()
