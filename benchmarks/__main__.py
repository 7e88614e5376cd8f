"""Run the benchmark suite and write docs/performance.md with its plots.

    python -m benchmarks            # the full suite (a few minutes)
    python -m benchmarks --tiny     # a smoke run at tiny sizes (CI)

Every comparison runs in the same process and the same run, contenders
alternating within each repetition; the figure kept is the median.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .contenders import CONTENDERS, Contender, double
from .harness import alternate, alternate_times, paired_ratio, rotations

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Sizes:
    trivial_jobs: int
    idiom_jobs: int
    workers: int
    scaling_jobs: int
    scaling_workers: list[int]
    io_jobs: int
    io_workers: int
    io_latency: float
    rss_points: list[int]
    hot_items: int
    queue_points: list[int]
    cancel_trials: int
    asyncio_jobs: int
    hangup_trials: int
    cpu_jobs: int
    cpu_seconds: float
    chunk_jobs: int
    dask_jobs: int
    repeats: int
    backend_repeats: int  # the backends section: its ratios sit close to 1


FULL = Sizes(
    trivial_jobs=100_000,
    idiom_jobs=20_000,
    workers=8,
    scaling_jobs=50_000,
    scaling_workers=[1, 2, 4, 8, 16, 32],
    io_jobs=2_000,
    io_workers=100,
    io_latency=0.005,
    rss_points=[10_000, 100_000, 1_000_000],
    hot_items=20_000,
    queue_points=[10_000, 50_000],
    cancel_trials=200,
    asyncio_jobs=50_000,
    hangup_trials=50,
    cpu_jobs=200,
    cpu_seconds=0.02,
    chunk_jobs=20_000,
    dask_jobs=600,
    repeats=5,
    backend_repeats=9,
)

TINY = Sizes(
    trivial_jobs=2_000,
    idiom_jobs=300,
    workers=8,
    scaling_jobs=1_000,
    scaling_workers=[1, 8],
    io_jobs=100,
    io_workers=20,
    io_latency=0.005,
    rss_points=[1_000, 10_000],
    hot_items=1_000,
    queue_points=[1_000],
    cancel_trials=10,
    asyncio_jobs=500,
    hangup_trials=3,
    cpu_jobs=10,
    cpu_seconds=0.005,
    chunk_jobs=500,
    dask_jobs=40,
    repeats=1,
    backend_repeats=1,
)


@dataclass
class Report:
    sizes: Sizes
    sections: list[str] = field(default_factory=list)
    targets: list[tuple[str, str, float, bool]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def section(self, text: str) -> None:
        print(text, flush=True)
        self.sections.append(text)

    def target(self, name: str, goal: str, value: float, ok: bool) -> None:
        self.targets.append((name, goal, value, ok))


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def trivial(report: Report) -> None:
    s = report.sizes
    runs: dict[str, Callable[[], int]] = {}
    expected: dict[str, int] = {}
    opened = {name: cls(s.workers) for name, cls in CONTENDERS.items()}
    for name, contender in opened.items():
        n = s.idiom_jobs if "idiom" in name else s.trivial_jobs
        runs[name] = _bind(contender, double, n)
        expected[name] = n
    try:
        medians = alternate(runs, s.repeats, expected)
    finally:
        for contender in opened.values():
            contender.close()
    rate = {name: expected[name] / seconds for name, seconds in medians.items()}
    tpe = rate["ThreadPoolExecutor.map"]
    rows = [
        [name, f"{expected[name]:,}", f"{rate[name]:,.0f}", f"{rate[name] / tpe:.2f}x"]
        for name in runs
    ]
    report.section(
        f"## 1. Trivial jobs (`x * 2`), {s.workers} workers — per-job overhead\n\n"
        + table(["contender", "jobs", "jobs/s", "vs ThreadPoolExecutor.map"], rows)
        + f"\n\nThe reactivex idiom runs {s.idiom_jobs:,} jobs (it slows as its queue grows;"
        " a larger run would only widen the gap)."
    )
    mc = rate["rxpool map_concurrent"]
    pool = rate["rxpool WorkerPool.run"]
    report.target("map_concurrent vs ThreadPoolExecutor.map", ">= 5x", mc / tpe, mc / tpe >= 5)
    report.target("WorkerPool.run vs ThreadPoolExecutor.map", ">= 3x", pool / tpe, pool / tpe >= 3)
    idiom = rate["reactivex flat_map+merge idiom"]
    report.target("map_concurrent vs reactivex idiom", ">= 20x", mc / idiom, mc / idiom >= 20)
    for name in ("map_concurrent", "WorkerPool.run"):
        ratio = rate[f"rxpool {name} ordered"] / rate[f"rxpool {name}"]
        report.target(f"{name} ordered vs unordered", ">= 0.75x", ratio, ratio >= 0.75)
    report.data["trivial"] = rate


def scaling(report: Report) -> None:
    s = report.sizes
    names = ["ThreadPoolExecutor.map", "rxpool map_concurrent", "rxpool WorkerPool.run"]
    series: dict[str, list[float]] = {name: [] for name in names}
    for workers in s.scaling_workers:
        opened = {name: CONTENDERS[name](workers) for name in names}
        runs = {name: _bind(c, double, s.scaling_jobs) for name, c in opened.items()}
        try:
            repeats = max(1, min(3, s.repeats))
            medians = alternate(runs, repeats, dict.fromkeys(names, s.scaling_jobs))
        finally:
            for contender in opened.values():
                contender.close()
        for name in names:
            series[name].append(s.scaling_jobs / medians[name])
    rows = [
        [str(w)] + [f"{series[name][i]:,.0f}" for name in names]
        for i, w in enumerate(s.scaling_workers)
    ]
    report.section(
        f"## Throughput against workers ({s.scaling_jobs:,} trivial jobs)\n\n"
        + table(["workers", *names], rows)
        + "\n\n![throughput against workers](img/throughput.png)"
    )
    report.data["scaling"] = {"workers": s.scaling_workers, "series": series}


def io_like(report: Report) -> None:
    s = report.sizes

    def io_job(x: int) -> int:
        time.sleep(s.io_latency)
        return x

    ideal = s.io_jobs * s.io_latency / s.io_workers
    floor = _sleep_floor(s.io_latency, s.io_jobs // s.io_workers)
    threads_floor = _threads_floor(s.io_latency, s.io_jobs // s.io_workers, s.io_workers)
    opened = {name: cls(s.io_workers) for name, cls in CONTENDERS.items()}
    runs = {name: _bind(c, io_job, s.io_jobs) for name, c in opened.items()}
    try:
        # Rotations, not the counterbalanced orders: they bound the time
        # between two runs on rxpool's thread cache to under its 1 s linger.
        medians = alternate(runs, s.repeats, dict.fromkeys(runs, s.io_jobs), rotations)
        cold = _cold_cache(runs["rxpool map_concurrent"], s.repeats)
    finally:
        for contender in opened.values():
            contender.close()
    rows = [[name, f"{t:.3f}", f"{t / ideal:.3f}x"] for name, t in medians.items()]
    rows.append(
        ["rxpool map_concurrent, thread cache emptied first", f"{cold:.3f}", f"{cold / ideal:.3f}x"]
    )
    report.section(
        f"## 2. IO-like jobs (`time.sleep({s.io_latency})`), {s.io_jobs:,} jobs, "
        f"{s.io_workers} workers\n\nIdeal makespan `jobs x latency / workers` = {ideal:.3f} s."
        f" On this machine {s.io_jobs // s.io_workers} sleeps in a row alone take"
        f" {floor:.3f} s ({floor / ideal:.3f}x): no pool can beat that; {s.io_workers} plain"
        f" threads doing so at once, with no pool, take {threads_floor:.3f} s"
        f" ({threads_floor / ideal:.3f}x), the median of 5. Executors, pools"
        " and schedulers are created once and warmed, as a service keeps them;"
        " `map_concurrent` takes threads from rxpool's cache (idle ones exit after 1 s),"
        " and the contenders run in an order that brings it back within the second. The"
        " last row is a `map_concurrent` run after the cache's idle threads have exited:"
        f" it starts its {s.io_workers} threads while its first jobs run.\n\n"
        + table(["contender", "makespan (s)", "vs ideal"], rows)
    )
    for name in ("rxpool map_concurrent", "rxpool WorkerPool.run"):
        ratio = medians[name] / ideal
        report.target(f"{name[7:]} IO makespan vs ideal", "<= 1.10x", ratio, ratio <= 1.10)


def child(*args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.child", *args],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    ).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def memory(report: Report) -> None:
    s = report.sizes
    names = [
        "ThreadPoolExecutor.map",
        "rxpool map_concurrent",
        "rxpool map_concurrent ordered",
        "rxpool WorkerPool.run",
        "rxpool WorkerPool.run ordered",
    ]
    peaks: dict[str, list[float]] = {name: [] for name in names}
    for n in s.rss_points:
        for name in names:
            peaks[name].append(child("rss", name, str(n))["peak_rss_mib"])
    rows = [[name] + [f"{mib:,.1f}" for mib in peaks[name]] for name in names]
    rows = [[*row, f"{peaks[row[0]][-1] / peaks[row[0]][0]:.2f}x"] for row in rows]
    header = ["contender"] + [f"{n:,} jobs (MiB)" for n in s.rss_points] + ["largest / smallest"]
    report.section(
        "## 3. Peak RSS, jobs from a generator, a fresh process per point\n\n"
        + table(header, rows)
        + "\n\n![peak RSS against jobs](img/rss.png)"
    )
    for name in names[1:]:
        ratio = peaks[name][-1] / peaks[name][0]
        label = f"{name[7:]} peak RSS {s.rss_points[-1]:,} / {s.rss_points[0]:,} jobs"
        report.target(label, "<= 1.25x", ratio, ratio <= 1.25)
    report.data["rss"] = {"points": s.rss_points, "peaks": peaks}


def hot_source(report: Report) -> None:
    s = report.sizes
    rows = []
    for policy in ("block", "drop_newest", "drop_oldest", "error"):
        r = child("hot", policy, str(s.hot_items), "4")
        rows.append(
            [
                policy,
                f"{r['pushed']:,}",
                f"{r['processed']:,}",
                f"{r['dropped']:,}",
                r["error"] or "-",
                f"{r['producer_seconds']:.3f}",
                f"{r['peak_rss_mib']:.1f}",
            ]
        )
        if policy in ("drop_newest", "drop_oldest"):
            assert r["processed"] + r["dropped"] == r["pushed"], r
    report.section(
        f"## 4. A hot source faster than the workers ({s.hot_items:,} items pushed from one"
        " thread, 4 workers, jobs of 0.2 ms, `buffer_size=256`)\n\n"
        + table(
            ["overflow", "pushed", "processed", "dropped", "error", "producer s", "peak RSS MiB"],
            rows,
        )
        + "\n\n`block` holds the producer back (its time is the run's); the drop policies"
        " never block it and account for every item (processed + dropped = pushed); `error`"
        " ends the stream at the first overflow."
    )


def queue_cost(report: Report) -> None:
    """flat_map with a bound: inner sequences queued behind a bound of 1, then drained."""
    import reactivex
    from reactivex import operators as ops
    from reactivex.scheduler import ImmediateScheduler
    from reactivex.subject import Subject

    from rxpool import operators as rops

    def drain(k: int, ours: bool) -> Callable[[], int]:
        def run() -> int:
            head: Subject[int] = Subject()
            immediate = ImmediateScheduler()
            out: list[int] = []

            def mapper(x: int) -> reactivex.Observable[int]:
                return head if x == 0 else reactivex.just(x, immediate)

            merge = (
                rops.flat_map(mapper, 1)
                if ours
                else lambda src: src.pipe(ops.map(mapper), ops.merge(max_concurrent=1))
            )
            reactivex.range(k).pipe(merge).subscribe(out.append)
            head.on_completed()
            return len(out) + 1

        return run

    rows = []
    for k in report.sizes.queue_points:
        runs = {"rxpool flat_map": drain(k, True), "reactivex merge": drain(k, False)}
        medians = alternate(runs, max(1, min(3, report.sizes.repeats)), dict.fromkeys(runs, k))
        rows.append(
            [
                f"{k:,}",
                f"{medians['rxpool flat_map']:.3f}",
                f"{medians['reactivex merge']:.3f}",
                f"{medians['reactivex merge'] / medians['rxpool flat_map']:.2f}x",
            ]
        )
    report.section(
        "## 5. Bounded flat_map: inner sequences queued behind `max_concurrent=1`\n\n"
        + table(["queued", "rxpool flat_map (s)", "reactivex merge (s)", "ratio"], rows)
    )


def cancellation(report: Report) -> None:
    """Latency from token cancel to the last emission, and from dispose to every job returned."""
    import rxpool

    trials = report.sizes.cancel_trials
    workers = 8
    latencies: dict[str, list[float]] = {"token cancel": [], "dispose": []}
    with rxpool.WorkerPool(workers) as pool:
        for _ in range(trials):
            for kind, values in latencies.items():
                values.append(_cancel_trial(pool, workers, kind == "dispose"))
    rows = []
    for kind, values in latencies.items():
        values.sort()
        p99 = values[min(len(values) - 1, round(0.99 * (len(values) - 1)))]
        rows.append(
            [
                kind,
                str(len(values)),
                f"{statistics.median(values) * 1000:.2f}",
                f"{p99 * 1000:.2f}",
                f"{values[-1] * 1000:.2f}",
            ]
        )
        report.target(f"{kind} latency p99 (ms)", "<= 50", p99 * 1000, p99 <= 0.050)
    report.section(
        f"## 6. Cancellation latency ({workers} cooperative jobs running, each waiting on its"
        " token)\n\nToken cancel: until the stream completes (every job taken has its"
        " `Cancelled` result). Dispose: until every running job has returned.\n\n"
        + table(["what", "trials", "p50 (ms)", "p99 (ms)", "max (ms)"], rows)
    )


def asyncio_section(report: Report) -> None:
    """Results per second into an event loop; client hang-up to run cancellation."""
    from . import asyncio_bench

    s = report.sizes
    rates = asyncio_bench.hand_off(s.asyncio_jobs, s.workers, s.repeats)
    base = rates["asyncio Semaphore+to_thread"]
    rows = [[name, f"{rate:,.0f}", f"{rate / base:.2f}x"] for name, rate in rates.items()]
    latencies = asyncio_bench.hang_up_latency(s.hangup_trials)
    p50 = statistics.median(latencies) * 1000
    p99 = asyncio_bench.percentile(latencies, 0.99) * 1000
    report.data["asyncio"] = {"rates": rates, "hang_up_ms": [p50, p99]}
    report.target("asyncio hand-off vs Semaphore+to_thread", ">= 1x", *_ratio(rates, base))
    report.target("client hang-up to cancellation p99 (ms)", "<= 50", p99, p99 <= 50)
    report.section(
        f"## 7. asyncio: results into the loop ({s.asyncio_jobs:,} trivial jobs,"
        f" {s.workers} at once, consumed by `async for` on the loop thread)\n\n"
        + table(["contender", "results/s", "vs Semaphore+to_thread"], rows)
        + f"\n\nClient hang-up to cancellation ({s.hangup_trials} trials: an aiohttp server"
        " streams a run, the client reads one line and closes the connection, until a"
        f" running job sees its token cancelled): p50 {p50:.2f} ms, p99 {p99:.2f} ms."
    )


def _best_alternative(medians: dict[str, float]) -> tuple[str, float]:
    """The fastest of the ProcessPoolExecutor and loky contenders: its name and makespan."""
    return min(
        ((name, t) for name, t in medians.items() if "ProcessPool" in name or "loky" in name),
        key=lambda item: item[1],
    )


def backends_section(report: Report) -> None:
    """CPU-bound work on processes, trivial jobs in chunks, and Dask."""
    from . import backends_bench as bb

    s = report.sizes
    cpu, n, cpu_repeats = bb.cpu_bound(
        s.cpu_jobs, s.cpu_seconds, s.backend_repeats, balanced=True, redraw=True
    )
    ours = cpu["rxpool WorkerPool.map"]  # the same call as ProcessPoolExecutor.map
    serial = cpu["serial"]
    best_name, best = _best_alternative(cpu)
    rows = [[name, f"{t:.3f}", f"{serial / t:.2f}x"] for name, t in cpu.items()]
    report.target(
        "process backend CPU-bound vs serial", ">= 1.9x", serial / ours, serial / ours >= 1.9
    )
    report.target(
        "process backend CPU-bound vs best of PPE/loky", ">= 1.0x", best / ours, best / ours >= 1.0
    )
    # Far apart, these need fewer repetitions than the close ratios above.
    builds, built_n, build_repeats = bb.cpu_bound(
        s.cpu_jobs, s.cpu_seconds, min(5, s.backend_repeats), bb.build
    )
    build_best_name, build_best = _best_alternative(builds)
    build_rows = [
        [name, f"{t:.3f}", f"{builds['serial'] / t:.2f}x", f"{build_best / t:.2f}x"]
        for name, t in builds.items()
    ]
    chunked = bb.trivial_chunked(s.chunk_jobs, s.backend_repeats)
    ppe = chunked["ProcessPoolExecutor.map chunksize=1"]
    mine = chunked["rxpool WorkerPool(backend=ProcessBackend), automatic chunks"]
    chunk_rows = [[name, f"{t:.3f}", f"{s.chunk_jobs / t:,.0f}"] for name, t in chunked.items()]
    report.target(
        "process backend chunked vs PPE.map chunksize=1", ">= 3x", ppe / mine, ppe / mine >= 3
    )
    dask = bb.dask_trivial(s.dask_jobs, s.backend_repeats)
    raw = dask["raw client.submit + callbacks"]
    dask_rows = [[name, f"{rate:,.0f}", f"{rate / raw:.2f}x"] for name, rate in dask.items()]
    single = dask["rxpool DaskBackend, chunk_size=1"] / raw
    many = dask["rxpool DaskBackend, automatic chunks"] / raw
    report.target("Dask backend vs raw client.submit", ">= 0.9x", single, single >= 0.9)
    report.target("Dask backend chunked vs raw client.submit", ">= 10x", many, many >= 10)
    report.data["backends"] = {"cpu": cpu, "build": builds, "chunked": chunked, "dask": dask}
    report.section(
        f"## 8. Backends\n\nCPU-bound pure-Python jobs: {s.cpu_jobs} calls of `cpu({n:,})`"
        f" (calibrated at {s.cpu_seconds * 1000:.0f} ms each; {serial / s.cpu_jobs * 1000:.1f} ms"
        f" each in the median serial run: this machine's speed varies), {os.cpu_count()}"
        " processes; best of"
        f" the alternatives: {best_name}. The targets compare `WorkerPool.map(cpu, inputs)`"
        " with `ProcessPoolExecutor.map(cpu, inputs)`, the same call over the same list; a"
        " generator of `Job`s, whose length rxpool cannot know (so it cannot shrink the last"
        " chunks), is shown for reference. The ratios of this section sit close to 1, so it"
        f" takes the median of {cpu_repeats} repetitions: whole cycles of orders in which"
        " each contender runs right after each other one equally often (a run right"
        " after the serial one is slower). Every repetition also starts with new worker"
        " processes for every contender (warmed before timing): how fast a process runs"
        " the same pure-Python loop depends on where CPython's allocator puts its small"
        " objects, which differs from process to process and holds for its life (in one"
        " process, keeping a few more small ints alive made `cpu` 8 to 15% faster), so"
        " processes kept for the whole section were one draw per contender (the ratio to"
        " the best of the alternatives moved between 0.97x and 1.01x over six runs of the"
        " suite); with new ones every repetition, each median is one over draws too. That"
        " has not made the ratio steady: in the first five runs so made it was 0.94x, 0.99x,"
        " 1.01x, 1.01x and 0.99x.\n\n"
        + table(["contender", "makespan (s)", "vs serial"], rows)
        + f"\n\nCPU-bound jobs that allocate: {s.cpu_jobs} calls of `build({built_n:,})`,"
        f" which makes dicts and lists (calibrated at {s.cpu_seconds * 1000:.0f} ms each;"
        f" median of {build_repeats} repetitions). The garbage collections those"
        " trigger walk, now and then, every object the process holds: a worker process of"
        " rxpool freezes what it starts with (`gc.freeze`), so they walk only what the jobs"
        " made; a `ProcessPoolExecutor` worker, forked from this process, walks all that"
        " this program has imported, as the serial run does. Best of the alternatives:"
        f" {build_best_name}.\n\n"
        + table(["contender", "makespan (s)", "vs serial", "vs best alternative"], build_rows)
        + f"\n\nTrivial jobs (`x * 2`), {s.chunk_jobs:,} of them, on processes:\n\n"
        + table(["contender", "makespan (s)", "jobs/s"], chunk_rows)
        + f"\n\nDask (`LocalCluster` on 127.0.0.1, 2 workers x 2 threads), {s.dask_jobs:,}"
        " trivial jobs, at most 4 tasks in flight:\n\n"
        + table(["contender", "jobs/s", "vs raw submit"], dask_rows)
    )


def progress_section(report: Report) -> None:
    """What a progress bar costs: map_concurrent and WorkerPool.run with and without one."""
    import io

    import reactivex

    import rxpool
    from rxpool import operators as rops
    from rxpool._stats import ProgressBar

    s = report.sizes
    n = s.trivial_jobs
    # Draw the bar for real (into a buffer), as on a terminal, not the silent no-op.
    ProgressBar.force_stream = io.StringIO()
    pool = rxpool.WorkerPool(s.workers)
    from .contenders import subscribe_and_wait

    def mapped(progress: bool) -> Callable[[], int]:
        return lambda: subscribe_and_wait(
            reactivex.from_iterable(range(n)).pipe(
                rops.map_concurrent(double, s.workers, progress=progress, total=n)
            )
        )

    def pooled(progress: bool) -> Callable[[], int]:
        return lambda: subscribe_and_wait(
            pool.run((rxpool.Job(double, args=(i,)) for i in range(n)), progress=progress)
        )

    runs = {
        "map_concurrent": mapped(False),
        "map_concurrent progress=True": mapped(True),
        "WorkerPool.run": pooled(False),
        "WorkerPool.run progress=True": pooled(True),
    }
    try:
        # Short runs: six times the usual repetitions, each compared with the
        # run without a bar of its own repetition, or noise hides a 5% effect.
        times = alternate_times(runs, 6 * s.repeats, dict.fromkeys(runs, n))
    finally:
        pool.close()
        ProgressBar.force_stream = None
    medians = {name: statistics.median(values) for name, values in times.items()}
    rows = []
    for name in ("map_concurrent", "WorkerPool.run"):
        ratio = paired_ratio(times, name, f"{name} progress=True")
        rows.append(
            [
                name,
                f"{n / medians[name]:,.0f}",
                f"{n / medians[name + ' progress=True']:,.0f}",
                f"{ratio:.3f}x",
            ]
        )
        report.target(f"{name} with a progress bar vs without", ">= 0.95x", ratio, ratio >= 0.95)
    report.section(
        f"## 9. Progress bars ({n:,} trivial jobs, {s.workers} workers, the bar drawn ten"
        " times a second)\n\nJobs/s from the median run; the ratio is the median, over"
        f" {6 * s.repeats} repetitions, of the time without a bar over the time with one"
        " in the same repetition.\n\n"
        + table(
            ["contender", "jobs/s without", "jobs/s with progress=True", "with / without"], rows
        )
    )


def executor(report: Report) -> None:
    """rxpool.Executor's map and submit against ThreadPoolExecutor and ProcessPoolExecutor."""
    from .executor_bench import executor_section

    executor_section(report, table)


def journal(report: Report) -> None:
    """11. The journal: the same trivial run with and without one (see journal_bench)."""
    from .journal_bench import journal_section

    journal_section(report, table)


def adaptive(report: Report) -> None:
    """12. Adaptive concurrency against a simulated service (see adaptive_bench)."""
    from .adaptive_bench import adaptive_section

    adaptive_section(report, table)


def _ratio(rates: dict[str, float], base: float) -> tuple[float, bool]:
    ratio = rates["rxpool aiter(WorkerPool.run), thread jobs"] / base
    return ratio, ratio >= 1.0


def _cancel_trial(pool: Any, workers: int, dispose: bool) -> float:
    """One trial: park ``workers`` cooperative jobs, stop the run, time the stop."""
    import threading

    import rxpool

    running = threading.Semaphore(0)
    returned = threading.Semaphore(0)
    ended = threading.Event()

    def cooperative(token: rxpool.CancelToken) -> None:
        running.release()
        token.wait(10)
        returned.release()

    token = rxpool.CancelToken()
    jobs = (rxpool.Job(cooperative) for _ in range(workers * 4))
    sub = pool.run(jobs, token=token).subscribe(
        on_completed=ended.set, on_error=lambda _: ended.set()
    )
    for _ in range(workers):
        running.acquire()
    started = time.perf_counter()
    if dispose:
        sub.dispose()
        for _ in range(workers):
            returned.acquire()
        return time.perf_counter() - started
    token.cancel()
    ended.wait()
    latency = time.perf_counter() - started
    for _ in range(workers):
        returned.acquire()
    return latency


def _bind(contender: Contender, fn: Callable[[int], Any], n: int) -> Callable[[], int]:
    return lambda: contender.run(fn, n)


def _cold_cache(run: Callable[[], int], repeats: int) -> float:
    """Median seconds of ``run`` each time after rxpool's thread cache has emptied."""
    from rxpool._dispatch import shared_threads

    times = []
    for _ in range(repeats):
        shared_threads().trim()
        deadline = time.monotonic() + 10
        while shared_threads().threads and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _sleep_floor(latency: float, count: int) -> float:
    """Median time of ``count`` sleeps of ``latency`` in a row: the best one worker can do."""

    def once() -> float:
        started = time.perf_counter()
        for _ in range(count):
            time.sleep(latency)
        return time.perf_counter() - started

    return statistics.median(once() for _ in range(3))


def _threads_floor(latency: float, count: int, threads: int) -> float:
    """Median time of ``threads`` plain threads, each sleeping ``count`` times in a row.

    No pool, no queue, no results: what waking that many threads that often
    costs on this machine (each wake-up takes the GIL).
    """

    def once() -> float:
        start = threading.Barrier(threads + 1)

        def sleeper() -> None:
            start.wait()
            for _ in range(count):
                time.sleep(latency)

        workers = [threading.Thread(target=sleeper) for _ in range(threads)]
        for worker in workers:
            worker.start()
        start.wait()
        started = time.perf_counter()
        for worker in workers:
            worker.join()
        return time.perf_counter() - started

    return statistics.median(once() for _ in range(5))


def plots(report: Report, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img = out / "img"
    img.mkdir(parents=True, exist_ok=True)
    scaling_data = report.data["scaling"]
    _line_plot(
        plt,
        img / "throughput.png",
        "Throughput against workers",
        ("workers", "jobs/s (trivial jobs)"),
        scaling_data["workers"],
        scaling_data["series"],
        log_y=False,
    )
    if "adaptive_log" in report.data:
        from .adaptive_bench import plot

        plot(img / "adaptive.png", report.data["adaptive_log"])
    rss = report.data["rss"]
    _line_plot(
        plt,
        img / "rss.png",
        "Peak RSS against jobs",
        ("jobs (from a generator)", "peak RSS (MiB)"),
        rss["points"],
        rss["peaks"],
        log_y=True,
    )


def _line_plot(
    plt: Any,
    path: Path,
    title: str,
    labels: tuple[str, str],
    xs: list[int],
    series: dict[str, list[float]],
    *,
    log_y: bool,
) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, values in series.items():
        ax.plot(xs, values, marker="o", label=name)
    ax.set_xscale("log", base=2 if not log_y else 10)
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(report: Report, out: Path, command: str) -> None:
    rows = [
        [name, goal, _shown(value), "yes" if ok else "**no**"]
        for name, goal, value, ok in report.targets
    ]
    text = "\n\n".join(
        [
            "# Performance",
            f"Generated by `{command}` on {time.strftime('%Y-%m-%d')}: "
            f"{os.cpu_count()} CPUs, Python {platform.python_version()} "
            f"({platform.python_implementation()}), {platform.machine()}. "
            f"Contenders alternate within each of {report.sizes.repeats} repetitions,"
            " in counterbalanced orders (benchmarks/harness.py); "
            "each figure is the median.",
            "## Targets\n\n" + table(["ratio", "target", "measured", "met"], rows),
            *report.sections,
        ]
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "performance.md").write_text(text + "\n")
    print(f"\nwrote {out / 'performance.md'}")


SECTIONS: dict[str, Callable[[Report], None]] = {
    "trivial": trivial,
    "scaling": scaling,
    "io": io_like,
    "memory": memory,
    "hot": hot_source,
    "queue": queue_cost,
    "cancel": cancellation,
    "asyncio": asyncio_section,
    "backends": backends_section,
    "progress": progress_section,
    "executor": executor,
    "journal": journal,
    "adaptive": adaptive,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: prove the suite runs")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="where performance.md and img/ go (default: docs/; with --tiny, a new"
        " temporary directory, so that tiny figures never replace the real ones)",
    )
    parser.add_argument(
        "--only",
        choices=sorted(SECTIONS),
        action="append",
        help="run only this section (repeatable); prints, writes no files",
    )
    args = parser.parse_args(argv)
    report = Report(TINY if args.tiny else FULL)
    for name, section in SECTIONS.items():
        if not args.only or name in args.only:
            section(report)
    if args.only:
        _print_targets(report)
        return 0
    output: Path = args.output
    if output is None:
        output = Path(tempfile.mkdtemp(prefix="rxpool-benchmarks-")) if args.tiny else ROOT / "docs"
    plots(report, output)
    command = "python -m benchmarks" + (" --tiny" if args.tiny else "")
    write(report, output, command)
    _print_targets(report)
    return 0


def _print_targets(report: Report) -> None:
    print("\n## Targets")
    for name, goal, value, ok in report.targets:
        print(f"  {name:55s} {goal:>9s}  {_shown(value):>8s}  {'met' if ok else 'NOT MET'}")


def _shown(value: float) -> str:
    """A target's measured ratio: three decimals below 10, so 0.9994 does not show as 1.00."""
    return f"{value:.3f}" if value < 10 else f"{value:.2f}"


if __name__ == "__main__":
    sys.exit(main())
