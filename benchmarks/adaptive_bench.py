"""Adaptive concurrency against a simulated service, beside fixed limits, in one run.

The service (`rxpool.testing.SimulatedService`) serves 8 calls of 10 ms at
once. Shape "slows": past 8 in flight each call takes proportionally longer.
Shape "refuses": past 12 in flight a call is refused. Each contender runs
the same calls through `WorkerPool.run`. The rows are `Adaptive(min=1,
max=64)`, fixed limits, and the fixed limit of 64 that a guess would give.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CAPACITY = 8
BASE = 0.010


def _run(limit: Any, service: Any, n: int, asyncio_jobs: bool = False) -> tuple[float, int]:
    """Seconds for ``n`` calls, and how many failed."""
    import rxpool

    if asyncio_jobs:

        async def main() -> list[rxpool.Result[Any]]:
            async with rxpool.WorkerPool(limit, backend="asyncio") as pool:
                jobs = (rxpool.Job(service.acall, args=(i,), id=i) for i in range(n))
                return [r async for r in rxpool.aiter(pool.run(jobs))]

        started = time.perf_counter()
        results = asyncio.run(main())
    else:
        with rxpool.WorkerPool(limit) as pool:
            started = time.perf_counter()
            jobs = (rxpool.Job(service.call, args=(i,), id=i) for i in range(n))
            results = list(rxpool.iterate(pool.run(jobs)))
    return time.perf_counter() - started, sum(not r.ok for r in results)


def adaptive_section(report: Any, table: Callable[[list[str], list[list[str]]], str]) -> None:
    import rxpool
    from rxpool.testing import SimulatedService

    tiny = report.sizes.repeats == 1
    n = 300 if tiny else 1500
    fixed = [4, 8, 12, 16, 64]
    capacity = CAPACITY / BASE
    rows: list[list[str]] = []
    best: dict[str, tuple[str, float]] = {}
    series: dict[str, Any] = {}
    for shape, refuse in (("slows", None), ("refuses", 12)):
        contenders: list[tuple[str, Any, bool]] = [
            ("Adaptive(1-64)", lambda: rxpool.Adaptive(1, 64), False),
            *((f"fixed {k}", (lambda k=k: k), False) for k in fixed),
        ]
        if shape == "slows":
            contenders.append(
                ("Adaptive(1-64), asyncio jobs", lambda: rxpool.Adaptive(1, 64), True)
            )
        for name, make, on_loop in contenders:
            service = SimulatedService(CAPACITY, BASE, refuse_above=refuse)
            limit = make()
            seconds, failed = _run(limit, service, n, on_loop)
            goodput = (n - failed) / seconds
            mean = service.mean_latency()
            rows.append(
                [
                    shape,
                    name,
                    f"{goodput:,.0f}",
                    f"{goodput / capacity:.0%}",
                    f"{mean * 1000:.1f}",
                    f"{mean / BASE:.2f}x",
                    f"{failed / n:.1%}",
                    f"{service.peak}",
                ]
            )
            if name == "Adaptive(1-64)":
                report.data[f"adaptive_{shape}"] = (goodput / capacity, mean / BASE, failed / n)
                series[shape] = (service.log, limit)
            elif name.startswith("fixed") and name != "fixed 64":
                ok = mean <= 2 * BASE and failed <= 0.03 * n
                if ok and goodput > best.get(shape, ("", 0.0))[1]:
                    best[shape] = (name, goodput)
    report.section(
        "## 12. Adaptive concurrency against a simulated service\n\n"
        f"{n:,} calls through `WorkerPool.run` (threads, and one asyncio row) to a service"
        f" that serves {CAPACITY} calls of {BASE * 1000:.0f} ms at once"
        f" ({capacity:.0f} calls/s). *slows*: past {CAPACITY} in flight each call takes"
        " proportionally longer; *refuses*: past 12 in flight a call is refused.\n\n"
        + table(
            [
                "service",
                "limit",
                "calls/s served",
                "of capacity",
                "mean latency ms",
                "vs base",
                "refused or failed",
                "peak in flight",
            ],
            rows,
        )
        + "\n\nBest fixed limit that keeps latency within 2x and refusals within 3%: "
        + ", ".join(f"{shape}: {name}" for shape, (name, _) in best.items())
        + ". A fixed limit is right for one service on one day; the adaptive limit found"
        " it by itself, and a fixed 64 queues inside the service (slows) or is refused"
        " (refuses)." + "\n\n![calls in flight and latency over time](img/adaptive.png)"
    )
    share, slowdown, _ = report.data["adaptive_slows"]
    report.target("Adaptive: mean latency vs base (slows)", "<= 2x", slowdown, slowdown <= 2)
    report.target("Adaptive: share of capacity (slows)", ">= 0.7", share, share >= 0.7)
    share, _, refused = report.data["adaptive_refuses"]
    report.target("Adaptive: share refused (refuses)", "<= 0.03", refused, refused <= 0.03)
    report.target("Adaptive: share of capacity (refuses)", ">= 0.6", share, share >= 0.6)
    report.data["adaptive_log"] = series["slows"][0]


def plot(path: Path, log: list[tuple[float, float, int]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = log[0][0]
    xs = [(end - start) * 1000 for end, _, _ in log]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(xs, [n for _, _, n in log], label="calls in flight", color="tab:blue")
    ax.set_xlabel("ms since the first call ended")
    ax.set_ylabel("calls in flight")
    twin = ax.twinx()
    twin.plot(xs, [s * 1000 for _, s, _ in log], label="latency ms", color="tab:orange", alpha=0.6)
    twin.set_ylabel("latency (ms)")
    ax.set_title(f"Adaptive(1-64) finding a service of capacity {CAPACITY}")
    ax.grid(True, alpha=0.3)
    fig.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
