"""What a journal costs: the same trivial run with and without ``--journal``, side by side.

The command line as a user runs it (a subprocess over a file of integers,
its start-up time measured on an empty input and taken off), and
`WorkerPool.run` in this process. A journal run records every result durably
(group commits) before writing it; a resumed run replays them all.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .contenders import double
from .harness import alternate

ROOT = Path(__file__).resolve().parent.parent
_MAP = [sys.executable, "-m", "rxpool", "map", "benchmarks.contenders:double"]


def _cli(input_path: Path, *extra: str) -> Callable[[], int]:
    def run() -> int:
        proc = subprocess.run(
            [*_MAP, str(input_path), *extra],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        return proc.stdout.count("\n")

    return run


def _startup(work: Path, repeats: int) -> float:
    empty = work / "empty.txt"
    empty.write_text("")
    run = _cli(empty)
    times = []
    for _ in range(max(3, repeats)):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def journal_section(report: Any, table: Callable[[list[str], list[list[str]]], str]) -> None:
    import rxpool

    s = report.sizes
    n = s.idiom_jobs * 2
    work = Path(tempfile.mkdtemp(prefix="rxpool-journal-bench-"))
    data = work / "in.txt"
    data.write_text("".join(f"{i}\n" for i in range(n)))
    fresh = itertools.count()

    def new_journal() -> str:
        return str(work / f"run-{next(fresh)}.journal")

    def cli_journal() -> int:
        return _cli(data, "--journal", new_journal())()

    resumed = work / "resumed.journal"
    _cli(data, "--journal", str(resumed))()  # recorded once: every later run replays all
    pool = rxpool.WorkerPool(s.workers)

    def jobs() -> list[rxpool.Job[int]]:
        return [rxpool.Job(double, args=(i,), id=i) for i in range(n)]

    def api(journal: Callable[[], str] | None) -> Callable[[], int]:
        def run() -> int:
            options = {} if journal is None else {"journal": journal()}
            return sum(1 for _ in rxpool.iterate(pool.run(jobs(), **options)))

        return run

    runs = {
        "rxpool map": _cli(data),
        "rxpool map --journal (new)": cli_journal,
        "rxpool map --journal (resume: all replayed)": _cli(data, "--journal", str(resumed)),
        "WorkerPool.run": api(None),
        "WorkerPool.run(journal=) (new)": api(new_journal),
    }
    try:
        startup = _startup(work, s.repeats)
        medians = alternate(runs, s.repeats, dict.fromkeys(runs, n))
    finally:
        pool.close()
    seconds = {
        name: max(value - startup, 1e-9) if name.startswith("rxpool map") else value
        for name, value in medians.items()
    }
    rate = {name: n / value for name, value in seconds.items()}
    base = {
        name: "rxpool map" if name.startswith("rxpool map") else "WorkerPool.run" for name in runs
    }
    rows = [
        [name, f"{n:,}", f"{rate[name]:,.0f}", f"{rate[name] / rate[base[name]]:.2f}x"]
        for name in runs
    ]
    report.section(
        f"## 11. Resumable runs: what a journal costs (trivial `x * 2`, {s.workers} threads)\n\n"
        + table(["run", "jobs", "jobs/s", "vs the same run without a journal"], rows)
        + f"\n\nThe command-line rows are whole subprocesses over a file of {n:,} lines,"
        f" less the {startup * 1000:.0f} ms a run over an empty file takes (Python and"
        " rxpool starting). With a journal every result is recorded in SQLite (WAL,"
        " `synchronous=FULL`, one commit per ~10 ms batch) before its line is written;"
        " the resume row replays a journal holding every line."
    )
    ratio = rate["rxpool map --journal (new)"] / rate["rxpool map"]
    report.target("rxpool map --journal vs without (trivial)", ">= 0.5x", ratio, ratio >= 0.5)
