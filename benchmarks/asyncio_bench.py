"""asyncio figures: the hand-off rate into a loop, and client hang-up to run cancellation.

Hand-off: trivial jobs whose results are consumed by ``async for`` on the
loop thread, against the asyncio idioms users would otherwise write
(``asyncio.to_thread`` under a ``Semaphore``, ``run_in_executor`` +
``as_completed``) and, for coroutine jobs, ``gather`` under a ``Semaphore``.

Hang-up: an aiohttp server streams a run's results; a client reads one line
and closes the connection; the time until a running job sees its token
cancelled is measured.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import rxpool
from rxpool import CancelToken, Job, WorkerPool


def _double(x: int) -> int:
    return x * 2


async def _adouble(x: int) -> int:
    return x * 2


async def _rxpool_threads(pool: WorkerPool, n: int) -> int:
    count = 0
    async for _ in rxpool.aiter(pool.run(Job(_double, args=(i,)) for i in range(n))):
        count += 1
    return count


async def _rxpool_loop(pool: WorkerPool, n: int) -> int:
    count = 0
    async for _ in rxpool.aiter(pool.run(Job(_adouble, args=(i,)) for i in range(n))):
        count += 1
    return count


async def _to_thread(workers: int, n: int) -> int:
    limit = asyncio.Semaphore(workers)

    async def one(x: int) -> int:
        async with limit:
            return await asyncio.to_thread(_double, x)

    return len(await asyncio.gather(*(one(x) for x in range(n))))


async def _executor_as_completed(executor: ThreadPoolExecutor, n: int) -> int:
    loop = asyncio.get_running_loop()
    futures = [loop.run_in_executor(executor, _double, x) for x in range(n)]
    count = 0
    for future in asyncio.as_completed(futures):
        await future
        count += 1
    return count


async def _gather_coroutines(workers: int, n: int) -> int:
    limit = asyncio.Semaphore(workers)

    async def one(x: int) -> int:
        async with limit:
            return await _adouble(x)

    return len(await asyncio.gather(*(one(x) for x in range(n))))


def hand_off(jobs: int, workers: int, repeats: int) -> dict[str, float]:
    """Results per second into the loop, median of ``repeats``, contenders alternating."""

    async def main() -> dict[str, float]:
        executor = ThreadPoolExecutor(workers)
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(workers))
        threads = WorkerPool(workers)
        on_loop = WorkerPool(workers, backend="asyncio")
        runs: dict[str, Callable[[], Awaitable[int]]] = {
            "rxpool aiter(WorkerPool.run), thread jobs": lambda: _rxpool_threads(threads, jobs),
            "asyncio Semaphore+to_thread": lambda: _to_thread(workers, jobs),
            "asyncio run_in_executor+as_completed": lambda: _executor_as_completed(executor, jobs),
            "rxpool aiter(WorkerPool.run), async jobs, backend=asyncio": lambda: _rxpool_loop(
                on_loop, jobs
            ),
            "asyncio Semaphore+gather, async jobs": lambda: _gather_coroutines(workers, jobs),
        }
        times: dict[str, list[float]] = {name: [] for name in runs}
        try:
            for fn in runs.values():  # warm up
                await fn()
            names = list(runs)
            for r in range(repeats):
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    started = time.perf_counter()
                    count = await runs[name]()
                    times[name].append(time.perf_counter() - started)
                    if count != jobs:
                        raise AssertionError(f"{name} saw {count} results, expected {jobs}")
        finally:
            await threads.aclose()
            await on_loop.aclose()
            executor.shutdown()
        return {name: jobs / statistics.median(t) for name, t in times.items()}

    return asyncio.run(main())


def hang_up_latency(trials: int, workers: int = 8) -> list[float]:
    """Seconds from a client closing a streamed response to a running job's token cancel."""
    import aiohttp
    from aiohttp import web

    async def main() -> list[float]:
        cancelled_at: dict[int, float] = {}  # trial -> when its first job saw the cancel
        seen = asyncio.Event()
        loop = asyncio.get_running_loop()

        running: dict[int, threading.Event] = {}

        def job(trial: int, i: int, token: CancelToken) -> int:
            if i == 0:
                return i  # the first line arrives at once
            running[trial].set()
            if token.wait(5):
                now = time.monotonic()
                with lock:
                    cancelled_at.setdefault(trial, now)
                loop.call_soon_threadsafe(seen.set)
            return i

        pool = WorkerPool(workers)
        lock = threading.Lock()

        async def stream(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse()
            await response.prepare(request)
            trial = int(request.query["trial"])
            jobs = (Job(job, args=(trial, i)) for i in range(10_000))
            async for result in rxpool.aiter(pool.run(jobs, ordered=True)):
                await response.write(f"{result.value}\n".encode())
            return response

        app = web.Application()
        app.router.add_get("/", stream)
        runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/"
        latencies = []
        try:
            async with aiohttp.ClientSession() as client:
                for trial in range(trials):
                    seen.clear()
                    running[trial] = threading.Event()
                    async with client.get(url, params={"trial": str(trial)}) as response:
                        await response.content.readline()
                        # Hang up while jobs run (not before any started).
                        await asyncio.to_thread(running[trial].wait, 5)
                        hung_up = time.monotonic()
                        response.close()
                    while trial not in cancelled_at:
                        await asyncio.wait_for(seen.wait(), 5)
                        seen.clear()
                    latencies.append(cancelled_at[trial] - hung_up)
        finally:
            await runner.cleanup()
            await pool.aclose()
        return latencies

    return asyncio.run(main())


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]
