"""rxpool.Executor against the standard library's executors, side by side.

The same trivial function through ``Executor.map`` / ``submit`` and through
``ThreadPoolExecutor`` / ``ProcessPoolExecutor``, alternating in one run.
"""

from __future__ import annotations

import concurrent.futures as cf
import sys
from collections.abc import Callable
from typing import Any

from .contenders import double
from .harness import alternate


def _mapped(executor: Any, n: int, **options: Any) -> Callable[[], int]:
    return lambda: sum(1 for _ in executor.map(double, range(n), **options))


def _submitted(executor: Any, n: int) -> Callable[[], int]:
    def run() -> int:
        futures = [executor.submit(double, i) for i in range(n)]
        return sum(1 for f in futures if f.result() is not None)

    return run


def executor_section(report: Any, table: Callable[[list[str], list[list[str]]], str]) -> None:
    import rxpool

    s = report.sizes
    n, w = s.trivial_jobs, s.workers
    threads = {"rxpool": rxpool.Executor(w), "std": cf.ThreadPoolExecutor(w)}
    runs: dict[str, Callable[[], int]] = {
        "ThreadPoolExecutor.map": _mapped(threads["std"], n),
        "rxpool.Executor.map": _mapped(threads["rxpool"], n),
        "rxpool.Executor.map buffersize=1000": _mapped(threads["rxpool"], n, buffersize=1000),
        "ThreadPoolExecutor.submit": _submitted(threads["std"], s.idiom_jobs),
        "rxpool.Executor.submit": _submitted(threads["rxpool"], s.idiom_jobs),
    }
    if sys.version_info >= (3, 14):
        runs["ThreadPoolExecutor.map buffersize=1000"] = _mapped(threads["std"], n, buffersize=1000)
    procs = {
        "rxpool": rxpool.Executor(2, backend="process"),
        "std": cf.ProcessPoolExecutor(2),
    }
    m = s.chunk_jobs
    runs |= {
        "ProcessPoolExecutor.map": _mapped(procs["std"], m),
        "ProcessPoolExecutor.map chunksize=100": _mapped(procs["std"], m, chunksize=100),
        "rxpool.Executor(process).map": _mapped(procs["rxpool"], m),
        "rxpool.Executor(process).map chunksize=100": _mapped(procs["rxpool"], m, chunksize=100),
        "ProcessPoolExecutor.submit": _submitted(procs["std"], s.cpu_jobs * 5),
        "rxpool.Executor(process).submit": _submitted(procs["rxpool"], s.cpu_jobs * 5),
    }
    expected = {
        name: (
            s.idiom_jobs
            if name.endswith(".submit") and "rocess" not in name
            else s.cpu_jobs * 5
            if name.endswith(".submit")
            else m
            if "rocess" in name
            else n
        )
        for name in runs
    }
    try:
        medians = alternate(runs, s.repeats, expected)
    finally:
        for executor in (*threads.values(), *procs.values()):
            executor.shutdown()
    rate = {name: expected[name] / seconds for name, seconds in medians.items()}

    def versus(name: str) -> str:
        base = (
            "ThreadPoolExecutor"
            if "rocess" not in name and not name.startswith("ProcessPool")
            else "ProcessPoolExecutor"
        )
        kind = "submit" if name.endswith("submit") else "map"
        return f"{rate[name] / rate[f'{base}.{kind}']:.2f}x"

    rows = [[name, f"{expected[name]:,}", f"{rate[name]:,.0f}", versus(name)] for name in runs]
    report.section(
        f"## 10. rxpool.Executor vs concurrent.futures (trivial `x * 2`, {w} threads,"
        " 2 processes)\n\n"
        + table(["executor", "jobs", "jobs/s", "vs the standard executor's same method"], rows)
        + "\n\nEach result consumed by a plain `for` loop (map) or `future.result()`"
        " (submit). `rxpool.Executor.map` hands values to the loop in batches, with no"
        " future per item; the process rows use rxpool's automatic chunks unless"
        " `chunksize` is given."
    )
    ratio = rate["rxpool.Executor.map"] / rate["ThreadPoolExecutor.map"]
    report.target("Executor.map vs ThreadPoolExecutor.map", ">= 5x", ratio, ratio >= 5)
    pratio = rate["rxpool.Executor(process).map"] / rate["ProcessPoolExecutor.map"]
    report.target("Executor(process).map vs ProcessPoolExecutor.map", ">= 1x", pratio, pratio >= 1)
