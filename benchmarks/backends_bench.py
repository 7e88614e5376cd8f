"""Backend figures: CPU-bound work on processes, trivial jobs with chunking, Dask.

Every contender is created once and warmed (its processes or cluster up)
before timing, as a service keeps them; contenders alternate within each
repetition and the median is kept.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import rxpool
from rxpool import Job, WorkerPool
from rxpool.backends import DaskBackend, ProcessBackend

from .harness import alternate, whole_cycles


def cpu(n: int) -> int:
    """Pure-Python CPU work (module level: the worker processes import it)."""
    total = 0
    for i in range(n):
        total += i * i
    return total


def build(n: int) -> int:
    """Pure-Python CPU work that allocates, as parsing or building records does.

    Every dict and list it makes is tracked by the cyclic garbage collector,
    whose full collections also walk every object the process already holds.
    """
    rows: list[dict[str, Any]] = []
    for i in range(n):
        rows.append({"i": i, "pair": [i, i * i]})
        if len(rows) == 1000:
            rows = []
    return len(rows)


def double(x: int) -> int:
    return x * 2


def calibrate(seconds: float, fn: Callable[[int], Any] = cpu) -> int:
    """The ``n`` for which ``fn(n)`` takes about ``seconds`` here.

    Timed at the full size, best of five: one short sample caught in a slow
    spell of the machine gave jobs half the size asked for.
    """
    n = 10_000
    while True:
        started = time.perf_counter()
        fn(n)
        took = time.perf_counter() - started
        if took > 0.005:
            break
        n *= 2
    n = max(1, round(n * seconds / took))
    best = math.inf
    for _ in range(5):
        started = time.perf_counter()
        fn(n)
        best = min(best, time.perf_counter() - started)
    return max(1, round(n * seconds / best))


def _pool_run(pool: WorkerPool, fn: Callable[[int], Any], inputs: list[int]) -> int:
    results = rxpool.iterate(pool.run(Job(fn, args=(x,)) for x in inputs))
    count = 0
    for result in results:
        if not result.ok:
            raise result.error  # type: ignore[misc]
        count += 1
    return count


class _Draw:
    """The process contenders of `cpu_bound`: rxpool's, a `ProcessPoolExecutor`, loky's.

    How fast a process runs the same pure-Python loop differs from process
    to process by a few % and holds for the process's life (it depends on
    where CPython's allocator puts the loop's small objects). One set of
    processes kept for a whole section is one draw per contender, and ratios
    near 1 then say more about the draws than about the pools. `draw` gives
    every contender new processes, warmed, so that a median over repetitions
    is a median over draws too.
    """

    def __init__(self, workers: int, fn: Callable[[int], Any], n: int) -> None:
        self.workers = workers
        self.fn = fn
        self.warm_inputs = [max(1, n // 10)] * (8 * workers)
        self.backend: ProcessBackend | None = None
        self.pool: WorkerPool | None = None
        self.executor: ProcessPoolExecutor | None = None
        self.parallel: Any = None  # joblib's Parallel (untyped)
        self.draw()

    def draw(self) -> None:
        """Close the processes of the last draw, start new ones, run a few jobs on each."""
        from joblib import Parallel, delayed

        self.close()
        self.backend = ProcessBackend(self.workers)
        self.backend.warm()
        self.pool = WorkerPool(self.workers, backend=self.backend)
        self.executor = ProcessPoolExecutor(self.workers)
        self.parallel = Parallel(n_jobs=self.workers, backend="loky")
        # Jobs of about 2 ms, 8 a process: every process has imported fn's module.
        list(self.pool.map(self.fn, self.warm_inputs))
        list(self.executor.map(self.fn, self.warm_inputs))
        self.parallel(delayed(self.fn)(x) for x in self.warm_inputs)

    def close(self) -> None:
        from joblib.externals.loky import get_reusable_executor

        if self.pool is not None:
            self.pool.close()
        if self.backend is not None:
            self.backend.close()
        if self.executor is not None:
            self.executor.shutdown()
        if self.parallel is not None:
            # joblib keeps loky's executor for the next Parallel call: end its processes.
            get_reusable_executor().shutdown(wait=True, kill_workers=True)
        self.pool = self.backend = self.executor = self.parallel = None


def cpu_bound(
    jobs: int,
    seconds: float,
    repeats: int,
    fn: Callable[[int], Any] = cpu,
    *,
    balanced: bool = False,
    redraw: bool = False,
) -> tuple[dict[str, float], int, int]:
    """Makespans (s) of CPU-bound jobs: serial, rxpool processes, ProcessPoolExecutor, loky.

    ``fn`` is a module-level function of one ``n``, calibrated to ``seconds``
    here. ``balanced``: ``repeats`` rounded up to whole cycles of orders (see
    `whole_cycles`), for ratios that sit close to 1. ``redraw``: new
    processes for every contender at each repetition (see `_Draw`). Returns
    the medians, ``n`` and the repetitions run.
    """
    from joblib import delayed

    workers = os.cpu_count() or 1
    n = calibrate(seconds, fn)
    inputs = [n] * jobs
    drawn = _Draw(workers, fn, n)

    def pool() -> WorkerPool:
        assert drawn.pool is not None
        return drawn.pool

    def executor() -> ProcessPoolExecutor:
        assert drawn.executor is not None
        return drawn.executor

    runs: dict[str, Callable[[], int]] = {
        "serial": lambda: len([fn(x) for x in inputs]),
        # The same call as ProcessPoolExecutor.map: the list's length is known.
        "rxpool WorkerPool.map": lambda: len(list(pool().map(fn, inputs))),
        # A generator of Jobs: the run's length is not known.
        "rxpool WorkerPool.run, a generator of Jobs": lambda: _pool_run(pool(), fn, inputs),
    }
    for chunksize in (1, 4, 16):
        runs[f"ProcessPoolExecutor.map chunksize={chunksize}"] = (
            lambda c=chunksize: len(list(executor().map(fn, inputs, chunksize=c)))  # type: ignore[misc]
        )
    runs["joblib loky"] = lambda: len(drawn.parallel(delayed(fn)(x) for x in inputs))
    if balanced:
        repeats = whole_cycles(repeats, len(runs))
    try:
        medians = alternate(
            runs, repeats, dict.fromkeys(runs, jobs), before=drawn.draw if redraw else None
        )
    finally:
        drawn.close()
    return medians, n, repeats


def trivial_chunked(jobs: int, repeats: int) -> dict[str, float]:
    """Makespans (s) of trivial jobs: rxpool processes with automatic chunks vs PPE.map."""
    workers = os.cpu_count() or 1
    inputs = list(range(jobs))
    backend = ProcessBackend(workers)
    backend.warm()
    pool = WorkerPool(workers, backend=backend)
    executor = ProcessPoolExecutor(workers)
    runs: dict[str, Callable[[], int]] = {
        "rxpool WorkerPool(backend=ProcessBackend), automatic chunks": lambda: _pool_run(
            pool, double, inputs
        ),
        "ProcessPoolExecutor.map chunksize=1": lambda: len(list(executor.map(double, inputs))),
    }
    try:
        return alternate(runs, repeats, dict.fromkeys(runs, jobs))
    finally:
        pool.close()
        backend.close()
        executor.shutdown()


def raw_submit(client: Any, inputs: list[int], bound: int) -> int:
    """``client.submit`` with done-callbacks, at most ``bound`` tasks in flight."""
    done = threading.Event()
    lock = threading.Lock()
    feed = iter(inputs)
    finished = 0

    def submit_next() -> None:
        with lock:
            x = next(feed, None)
        if x is not None:
            client.submit(double, x, pure=False).add_done_callback(on_done)

    def on_done(future: Any) -> None:
        nonlocal finished
        future.result()
        with lock:
            finished += 1
            last = finished == len(inputs)
        if last:
            done.set()
        else:
            submit_next()

    for _ in range(bound):
        submit_next()
    done.wait()
    return finished


def dask_trivial(jobs: int, repeats: int) -> dict[str, float]:
    """Tasks/s: raw submit with callbacks vs rxpool's DaskBackend, one job per task and chunked."""
    from distributed import Client, LocalCluster

    workers = 4
    inputs = list(range(jobs))
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=2,
            processes=False,
            protocol="tcp://",
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
        ) as cluster,
        Client(cluster) as client,
    ):
        single = WorkerPool(workers, backend=DaskBackend(client, chunk_size=1))
        chunked = WorkerPool(workers, backend=DaskBackend(client))
        runs: dict[str, Callable[[], int]] = {
            "raw client.submit + callbacks": lambda: raw_submit(client, inputs, workers),
            "rxpool DaskBackend, chunk_size=1": lambda: _pool_run(single, double, inputs),
            "rxpool DaskBackend, automatic chunks": lambda: _pool_run(chunked, double, inputs),
        }
        try:
            medians = alternate(runs, repeats, dict.fromkeys(runs, jobs))
        finally:
            single.close()
            chunked.close()
    return {name: jobs / t for name, t in medians.items()}
