"""The same work done by rxpool and by the alternatives users would otherwise reach for.

A contender is opened once with a worker count (creating its executor, pool or
scheduler, as a long-lived service would), runs ``fn`` over ``range(n)`` with
at most that many at once as often as asked, consuming every result and
returning how many it saw, and is closed at the end.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import reactivex
from reactivex import operators as ops
from reactivex.scheduler import ThreadPoolScheduler

import rxpool
from rxpool import operators as rops

Fn = Callable[[int], Any]


class Contender:
    name = ""

    def __init__(self, workers: int) -> None:
        self.workers = workers

    def run(self, fn: Fn, n: int) -> int:
        raise NotImplementedError

    def close(self) -> None:
        """Release what `__init__` created."""


class ThreadPoolExecutorMap(Contender):
    name = "ThreadPoolExecutor.map"

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        self.executor = ThreadPoolExecutor(workers)

    def run(self, fn: Fn, n: int) -> int:
        return sum(1 for _ in self.executor.map(fn, range(n)))

    def close(self) -> None:
        self.executor.shutdown(wait=True)


class AsyncioToThread(Contender):
    name = "asyncio Semaphore+to_thread"

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        self.loop = asyncio.new_event_loop()
        self.loop.set_default_executor(ThreadPoolExecutor(workers))

    def run(self, fn: Fn, n: int) -> int:
        async def main() -> int:
            limit = asyncio.Semaphore(self.workers)

            async def one(x: int) -> Any:
                async with limit:
                    return await asyncio.to_thread(fn, x)

            return len(await asyncio.gather(*(one(x) for x in range(n))))

        return self.loop.run_until_complete(main())

    def close(self) -> None:
        self.loop.run_until_complete(self.loop.shutdown_default_executor())
        self.loop.close()


class ReactivexIdiom(Contender):
    """RxPY's documented idiom: one inner observable per item, subscribe_on a pool, merge(k)."""

    name = "reactivex flat_map+merge idiom"

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        self.scheduler = ThreadPoolScheduler(workers)

    def run(self, fn: Fn, n: int) -> int:
        scheduler = self.scheduler
        source = reactivex.from_iterable(range(n)).pipe(
            ops.map(lambda x: reactivex.of(x).pipe(ops.map(fn), ops.subscribe_on(scheduler))),
            ops.merge(max_concurrent=self.workers),
        )
        return subscribe_and_wait(source)

    def close(self) -> None:
        self.scheduler.executor.shutdown(wait=True)


class MapConcurrent(Contender):
    """Each run takes threads from rxpool's process-wide cache (idle ones exit after 1 s)."""

    name = "rxpool map_concurrent"
    ordered = False

    def run(self, fn: Fn, n: int) -> int:
        source = reactivex.from_iterable(range(n))
        return subscribe_and_wait(
            source.pipe(rops.map_concurrent(fn, self.workers, ordered=self.ordered))
        )


class MapConcurrentOrdered(MapConcurrent):
    name = "rxpool map_concurrent ordered"
    ordered = True


class WorkerPoolRun(Contender):
    name = "rxpool WorkerPool.run"
    ordered = False

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        self.pool = rxpool.WorkerPool(workers)

    def run(self, fn: Fn, n: int) -> int:
        jobs = (rxpool.Job(fn, args=(i,), id=i) for i in range(n))
        return subscribe_and_wait(self.pool.run(jobs, ordered=self.ordered))

    def close(self) -> None:
        self.pool.close()


class WorkerPoolRunOrdered(WorkerPoolRun):
    name = "rxpool WorkerPool.run ordered"
    ordered = True


def subscribe_and_wait(source: reactivex.Observable[Any]) -> int:
    done = threading.Event()
    count = 0
    failure: list[Exception] = []

    def on_next(_: Any) -> None:
        nonlocal count
        count += 1

    def on_error(error: Exception) -> None:
        failure.append(error)
        done.set()

    source.subscribe(on_next, on_error, done.set)
    done.wait()
    if failure:
        raise failure[0]
    return count


# The two operator contenders are not next to each other: the others run
# between them, so each comes back to rxpool's thread cache within about half
# a second, as an application calling the operator steadily would (the cache
# lets an idle thread go after 1 s). The IO section also times a run on an
# emptied cache.
CONTENDERS: dict[str, type[Contender]] = {
    c.name: c
    for c in (
        ThreadPoolExecutorMap,
        AsyncioToThread,
        MapConcurrent,
        ReactivexIdiom,
        MapConcurrentOrdered,
        WorkerPoolRun,
        WorkerPoolRunOrdered,
    )
}


def double(x: int) -> int:
    return x * 2
