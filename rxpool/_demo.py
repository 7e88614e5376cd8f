"""``python -m rxpool demo``: the Go article's worker pool, end to end."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TextIO

from ._exceptions import Cancelled, DeadlineExceeded
from ._job import Job, Result
from ._pool import WorkerPool
from ._token import CancelToken


def fetch(n: int, latency: float, token: CancelToken) -> int:
    """A job that waits like an I/O call (cooperatively) and fails now and then."""
    if token.wait(latency):
        token.raise_if_cancelled()
    if n % 97 == 13:
        raise ConnectionError(f"record {n}: upstream reset")
    return n * 2


def generate(count: int, latency: float, seed: int = 7) -> Iterator[Job[int]]:
    """Yield jobs lazily, as Go's ``GenerateFrom`` feeds the jobs channel."""
    rng = random.Random(seed)
    for n in range(count):
        jitter = latency * rng.uniform(0.5, 1.5)
        yield Job(fetch, args=(n, jitter), id=n, kind="fetch", metadata={"batch": n // 100})


@dataclass
class Summary:
    done: int
    failed: int
    cancelled: int
    values: int
    wall: float

    @property
    def total(self) -> int:
        return self.done + self.failed + self.cancelled

    def line(self) -> str:
        rate = self.total / self.wall if self.wall else 0.0
        return (
            f"done {self.done:>5}  failed {self.failed:>3}  cancelled {self.cancelled:>5}  "
            f"wall {self.wall:6.3f}s  {rate:9,.0f} jobs/s  sum of values {self.values:,}"
        )


def run_once(pool: WorkerPool, jobs: Iterator[Job[int]], token: CancelToken | None) -> Summary:
    """Subscribe to one run, aggregate its results as they stream in, wait for the end."""
    counts: Counter[str] = Counter()
    total = 0
    finished = threading.Event()
    failure: list[Exception] = []

    def on_next(result: Result[int]) -> None:
        nonlocal total
        if result.ok:
            counts["done"] += 1
            total += result.unwrap()
        elif isinstance(result.error, Cancelled):
            counts["cancelled"] += 1
        else:
            counts["failed"] += 1

    def on_error(error: Exception) -> None:
        failure.append(error)
        finished.set()

    started = time.perf_counter()
    pool.run(jobs, token=token).subscribe(on_next, on_error, finished.set)
    if not finished.wait(60):
        raise RuntimeError("the demo run did not finish")
    if failure:
        raise failure[0]
    wall = time.perf_counter() - started
    return Summary(counts["done"], counts["failed"], counts["cancelled"], total, wall)


def main(out: TextIO, *, jobs: int = 2000, workers: int = 50, latency: float = 0.002) -> int:
    print(f"rxpool demo: {jobs} jobs of ~{latency * 1000:.0f} ms, {workers} workers", file=out)
    with WorkerPool(workers) as pool:
        full = run_once(pool, generate(jobs, latency), None)
        print(f"  full run       {full.line()}", file=out)
        ideal = jobs * latency / workers
        print(f"                 ideal makespan {ideal:.3f}s (jobs x latency / workers)", file=out)

        budget = full.wall / 4
        token = CancelToken.with_timeout(budget)
        cut = run_once(pool, generate(jobs * 100, latency), token)
        print(f"  deadline {budget:.3f}s {cut.line()}", file=out)
        assert isinstance(token.error, DeadlineExceeded)
        print(
            f"                 every job taken has a result: {cut.total} results, "
            f"the rest of the {jobs * 100} jobs were never pulled",
            file=out,
        )
    return 0
