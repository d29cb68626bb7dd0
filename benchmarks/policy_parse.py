"""Policy parsing cost, and what it does to an event loop (issue 17).

Builds a policy of N pools (one aggregated role, two signals each: ~210 bytes per pool, so the
1 MiB limit holds ~5,000), then measures:

- `parse_policy` wall time (bounded YAML load + pydantic validation);
- the longest gap a 10 ms heartbeat task sees on the event loop while the same text is parsed
  inline (`parse_policy`) and in a worker thread (`parse_policy_async`): the inline parse blocks
  the loop for its whole duration, which on the controller's loop means no lease renewal and no
  probe answer; the threaded one only for GIL switches.

    .venv/bin/python benchmarks/policy_parse.py [--pools 1000 2500 4900]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

from autoscaler.policy.load import parse_policy, parse_policy_async


def big_policy(pools: int) -> str:
    out = ["pools:"]
    for i in range(pools):
        out.append(
            f"  - name: pool-{i}\n"
            "    roles:\n"
            "      aggregated:\n"
            f"        deployment: {{namespace: ns, name: dep-{i}}}\n"
            "        max_replicas: 8\n"
            "        signals: [{signal: queue_depth, target: 5}, {signal: kv_cache, target: 0.8}]"
        )
    return "\n".join(out) + "\n"


async def max_gap(work: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    """(seconds the work took, longest interval between heartbeats meanwhile)."""
    gaps: list[float] = []
    done = False

    async def heartbeat() -> None:
        last = time.perf_counter()
        while not done:
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    hb = asyncio.create_task(heartbeat())
    await asyncio.sleep(0.05)
    start = time.perf_counter()
    await work()
    took = time.perf_counter() - start
    done = True
    await hb
    return took, max(gaps)


async def main(sizes: list[int]) -> None:
    print(f"{'pools':>6} {'bytes':>9} {'parse s':>8} {'inline: loop stall s':>21} "
          f"{'thread: loop stall s':>21}")
    for n in sizes:
        text = big_policy(n)

        async def inline(text: str = text) -> object:
            return parse_policy(text, source="bench")

        async def threaded(text: str = text) -> object:
            return await parse_policy_async(text, source="bench")

        took, stall_inline = await max_gap(inline)
        _, stall_thread = await max_gap(threaded)
        print(f"{n:>6} {len(text.encode()):>9} {took:>8.2f} {stall_inline:>21.2f} "
              f"{stall_thread:>21.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pools", type=int, nargs="+", default=[1000, 2500, 4900])
    asyncio.run(main(parser.parse_args().pools))
