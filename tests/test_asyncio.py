"""asyncio integration on real loops and real threads: coroutine jobs, aiter, submit, map."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import pytest
import reactivex
from hypothesis import given, settings
from hypothesis import strategies as st
from reactivex import operators as ops
from reactivex.scheduler import ThreadPoolScheduler

import rxpool
from rxpool import CancelToken, Job, JobTimeout, Retry, WorkerPool
from rxpool import operators as rops

from ._helpers import wait_until

_T = TypeVar("_T")


def run(main: Callable[[], Coroutine[Any, Any, _T]], timeout: float = 20.0) -> _T:
    """Run a test coroutine on a fresh loop, with a deadline so a hang fails the test."""

    async def bounded() -> _T:
        return await asyncio.wait_for(main(), timeout)

    return asyncio.run(bounded())


class Concurrency:
    """Counts coroutines inside a block and remembers the most at once."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0
        self.started = 0
        self.cancelled = 0
        self.threads: set[int] = set()

    async def job(self, x: int, delay: float = 0.002) -> int:
        self.now += 1
        self.started += 1
        self.most = max(self.most, self.now)
        self.threads.add(threading.get_ident())
        try:
            await asyncio.sleep(delay)
            return x * 2
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.now -= 1


# -- coroutine jobs ----------------------------------------------------------------------------


def test_coroutine_jobs_run_on_the_loop_at_most_n_at_once() -> None:
    c = Concurrency()

    async def main() -> list[rxpool.Result[int]]:
        async with WorkerPool(5, backend="asyncio") as pool:
            results = await rxpool.gather(pool.run(Job(c.job, args=(i,)) for i in range(60)))
        assert c.threads == {threading.get_ident()}  # on the loop thread, no other
        return results

    results = run(main)
    assert sorted(r.value for r in results) == [2 * i for i in range(60)]
    assert c.most == 5


def test_map_concurrent_with_an_async_function_needs_no_thread() -> None:
    c = Concurrency()
    before = threading.active_count()

    async def main() -> list[int]:
        return await rxpool.gather(reactivex.range(50).pipe(rops.map_concurrent(c.job, 7)))

    assert sorted(run(main)) == [2 * i for i in range(50)]
    assert c.most == 7
    assert len(c.threads) == 1
    assert threading.active_count() <= before  # the loop was the caller's


def test_async_function_without_a_running_loop_gets_a_private_one() -> None:
    c = Concurrency()
    # Jobs of 50 ms: with 2 ms ones, a busy machine once let the first job
    # end before the fourth started (most == 2, in a full run of the suite).
    job = functools.partial(c.job, delay=0.05)
    out = reactivex.range(20).pipe(rops.map_concurrent(job, 4), ops.to_list()).run()
    assert sorted(out) == [2 * i for i in range(20)]
    assert c.most == 4
    assert threading.get_ident() not in c.threads  # it ran on the run's own loop thread
    assert wait_until(lambda: not [t for t in threading.enumerate() if "rxpool-loop" in t.name])


def test_dispose_cancels_running_coroutine_jobs() -> None:
    c = Concurrency()

    async def main() -> None:
        got = asyncio.Event()
        source = reactivex.range(100).pipe(
            rops.map_concurrent(functools.partial(c.job, delay=10.0), 4)
        )
        sub = source.subscribe(lambda _: got.set())
        while c.now < 4:
            await asyncio.sleep(0.001)
        sub.dispose()
        while c.now:
            await asyncio.sleep(0.001)

    run(main)
    assert c.cancelled == 4
    assert c.started == 4


def test_sync_jobs_from_an_asyncio_app_deliver_on_the_loop_thread() -> None:
    worker_threads: set[int] = set()
    seen_on: set[int] = set()

    def work(x: int) -> int:
        worker_threads.add(threading.get_ident())
        return x + 1

    async def main() -> list[int]:
        loop_thread = threading.get_ident()
        out = []
        with WorkerPool(4) as pool:
            async for result in rxpool.aiter(pool.run(Job(work, args=(i,)) for i in range(500))):
                seen_on.add(threading.get_ident())
                out.append(result.value)
        assert loop_thread not in worker_threads
        assert seen_on == {loop_thread}
        return out

    assert sorted(run(main)) == list(range(1, 501))


def test_blocking_jobs_on_the_asyncio_backend_leave_the_loop_free() -> None:
    async def main() -> tuple[int, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        tick_task = asyncio.create_task(ticker())
        async with WorkerPool(4, backend="asyncio") as pool:
            results = await rxpool.gather(pool.run(Job(time.sleep, args=(0.02,)) for _ in range(8)))
        tick_task.cancel()
        return len(results), ticks

    count, ticks = run(main)
    assert count == 8
    assert ticks >= 5  # the loop kept running while the jobs slept on threads


def test_coroutine_job_on_the_thread_backend_runs_on_the_subscribing_loop() -> None:
    ran_on: list[int] = []

    async def job() -> str:
        ran_on.append(threading.get_ident())
        await asyncio.sleep(0.001)
        return "ok"

    async def main() -> list[rxpool.Result[Any]]:
        with WorkerPool(2) as pool:
            return await rxpool.gather(pool.run([Job(job), Job(job)]))

    results = run(main)
    assert [r.value for r in results] == ["ok", "ok"]
    assert len(set(ran_on)) == 1  # the loop's thread, where its sessions live


def test_coroutine_job_timeout_cancels_its_task_and_retries() -> None:
    attempts = 0
    cancelled = 0

    async def flaky() -> str:
        nonlocal attempts, cancelled
        attempts += 1
        if attempts < 3:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                cancelled += 1
                raise
        return "third time"

    async def main() -> list[rxpool.Result[Any]]:
        async with WorkerPool(2, backend="asyncio") as pool:
            jobs = [
                Job(flaky, timeout=0.05, retry=Retry(attempts=3, backoff=0.0)),
                Job(asyncio.sleep, args=(10,), timeout=0.05),
            ]
            return await rxpool.gather(pool.run(jobs, ordered=True))

    first, second = run(main)
    assert first.value == "third time" and first.attempt == 3
    assert cancelled == 2
    assert isinstance(second.error, JobTimeout)


def test_token_cancel_gives_cancelled_results_for_coroutine_jobs() -> None:
    c = Concurrency()

    async def main() -> list[rxpool.Result[Any]]:
        token = CancelToken()
        async with WorkerPool(3, backend="asyncio") as pool:
            jobs = (Job(c.job, args=(i, 10.0)) for i in range(10))
            collect = asyncio.create_task(rxpool.gather(pool.run(jobs, token=token)))
            while c.now < 3:
                await asyncio.sleep(0.001)
            token.cancel()
            return await collect

    results = run(main)
    assert len(results) == 3
    assert all(isinstance(r.error, rxpool.Cancelled) for r in results)
    assert c.cancelled == 3


@settings(max_examples=30, deadline=None)
@given(
    fails=st.lists(st.booleans(), min_size=0, max_size=40),
    workers=st.integers(1, 6),
    ordered=st.booleans(),
)
def test_loop_mode_every_job_yields_exactly_one_result(
    fails: list[bool], workers: int, ordered: bool
) -> None:
    async def job(i: int, fail: bool) -> int:
        await asyncio.sleep(0)
        if fail:
            raise ValueError(i)
        return i

    async def main() -> list[rxpool.Result[Any]]:
        async with WorkerPool(workers, backend="asyncio") as pool:
            jobs = [Job(job, args=(i, f), id=i) for i, f in enumerate(fails)]
            return await rxpool.gather(pool.run(jobs, ordered=ordered))

    results = run(main)
    assert sorted(r.id for r in results) == list(range(len(fails)))
    if ordered:
        assert [r.id for r in results] == list(range(len(fails)))
    for r in results:
        assert (r.error is not None) == fails[r.id]


# -- aiter, gather, last -----------------------------------------------------------------------


def test_hand_off_of_ten_thousand_results_from_eight_threads() -> None:
    async def main() -> list[int]:
        scheduler = ThreadPoolScheduler(8)
        try:
            source = reactivex.range(10_000).pipe(
                rops.map_concurrent(lambda x: x, 8, scheduler=scheduler)
            )
            loop_thread = threading.get_ident()
            out = []
            async for value in rxpool.aiter(source, maxsize=64):
                assert threading.get_ident() == loop_thread
                out.append(value)
            return out
        finally:
            scheduler.executor.shutdown(wait=True)

    assert sorted(run(main)) == list(range(10_000))


def test_errors_are_raised_at_the_async_for() -> None:
    def boom(x: int) -> int:
        if x == 7:
            raise KeyError("seven")
        return x

    async def main() -> list[int]:
        out = []
        with pytest.raises(KeyError, match="seven"):
            async for value in rxpool.aiter(
                reactivex.range(20).pipe(rops.map_concurrent(boom, 2, ordered=True))
            ):
                out.append(value)
        return out

    assert run(main) == list(range(7))


@pytest.mark.parametrize("how", ["break", "exception", "task_cancel"])
def test_leaving_async_for_early_cancels_the_run(how: str) -> None:
    tokens: list[CancelToken] = []

    releases = collections.defaultdict(threading.Event)

    def job(i: int, token: CancelToken) -> int:
        tokens.append(token)
        release = releases[i]
        link = token.on_cancel(release.set)
        release.wait(10)
        link.dispose()
        return i

    async def consume(pool: WorkerPool) -> None:
        async for _ in rxpool.aiter(pool.run(Job(job, args=(i,)) for i in range(1000))):
            if how == "break":
                break
            if how == "exception":
                raise RuntimeError("consumer failed")

    async def main() -> None:
        with WorkerPool(4) as pool:
            consumer = asyncio.create_task(consume(pool))
            while len(tokens) < 4:
                await asyncio.sleep(0.001)
            if how == "task_cancel":
                consumer.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await consumer
            else:
                releases[0].set()  # the first job returns: the first result arrives
                if how == "exception":
                    with pytest.raises(RuntimeError, match="consumer failed"):
                        await consumer
                else:
                    await consumer

    run(main)
    assert tokens and all(t.cancelled for t in tokens)
    assert len(tokens) <= 8  # nothing more started after the run was cancelled


def test_slow_consumer_keeps_thread_mode_intake_bounded() -> None:
    pulled = 0
    gap = 0

    def jobs() -> Any:
        nonlocal pulled
        for i in range(3000):
            pulled += 1
            yield Job(int, args=(i,))

    async def main() -> int:
        nonlocal gap
        seen = 0
        with WorkerPool(4) as pool:
            async for _ in rxpool.aiter(pool.run(jobs()), maxsize=16):
                seen += 1
                gap = max(gap, pulled - seen)
                if seen % 100 == 0:
                    await asyncio.sleep(0.002)  # a slow consumer
        return seen

    assert run(main) == 3000
    # The queue (16), plus what each worker holds: at most one batch of 64.
    assert gap <= 16 + 4 * 64 + 4


def test_slow_consumer_pauses_loop_mode_slots() -> None:
    started = 0
    gap = 0

    async def job(i: int) -> int:
        nonlocal started
        started += 1
        await asyncio.sleep(0)
        return i

    async def main() -> int:
        nonlocal gap
        seen = 0
        async with WorkerPool(4, backend="asyncio") as pool:
            stream = rxpool.aiter(pool.run(Job(job, args=(i,)) for i in range(2000)), maxsize=8)
            async for _ in stream:
                seen += 1
                gap = max(gap, started - seen)
                await asyncio.sleep(0.0001)
        return seen

    assert run(main) == 2000
    assert gap <= 8 + 4 + 1


def test_await_a_run_and_the_last_and_gather_helpers() -> None:
    async def main() -> None:
        with WorkerPool(3) as pool:
            last = await pool.run(Job(pow, args=(2, i)) for i in range(10))
            assert isinstance(last, rxpool.Result) and last.ok
            assert await rxpool.last(reactivex.of(1, 2, 3)) == 3
            assert await rxpool.gather(reactivex.of(1, 2, 3)) == [1, 2, 3]
            assert await rxpool.gather(reactivex.empty()) == []
            with pytest.raises(ValueError, match="without a value"):
                await rxpool.last(reactivex.empty())
            with pytest.raises(ZeroDivisionError):
                await rxpool.gather(reactivex.of(1, 0).pipe(ops.map(lambda x: 1 // x)))

    run(main)


def test_async_iterable_source_is_pulled_lazily() -> None:
    pulled = 0
    done = 0
    gap = 0

    async def source() -> AsyncIterator[Job[int]]:
        nonlocal pulled, gap
        for i in range(200):
            pulled += 1
            gap = max(gap, pulled - done)
            await asyncio.sleep(0)
            yield Job(finish, args=(i,))

    async def finish(i: int) -> int:
        nonlocal done
        await asyncio.sleep(0.0005)
        done += 1
        return i

    async def main() -> list[rxpool.Result[int]]:
        with WorkerPool(5) as pool:  # the thread backend: an async source means loop mode
            return await rxpool.gather(pool.run(source()))

    results = run(main)
    assert sorted(r.value for r in results) == list(range(200))
    assert gap <= 5 + 1


def test_async_iterable_source_error_ends_the_run_after_taken_jobs() -> None:
    async def source() -> AsyncIterator[Job[int]]:
        yield Job(int, args=(1,))
        raise OSError("source broke")

    async def main() -> None:
        async with WorkerPool(2, backend="asyncio") as pool:
            with pytest.raises(OSError, match="source broke"):
                await rxpool.gather(pool.run(source()))

    run(main)


# -- WorkerPool.map, submit, asubmit -----------------------------------------------------------


def test_map_yields_values_in_order_and_raises_the_first_error() -> None:
    with WorkerPool(4) as pool:
        assert list(pool.map(pow, [2, 3, 4], [2, 2, 2])) == [4, 9, 16]
        assert sorted(pool.map(abs, range(-50, 0), ordered=False)) == list(range(1, 51))

        def check(x: int) -> int:
            if x == 3:
                raise ValueError("three")
            return x

        out = []
        with pytest.raises(ValueError, match="three"):
            for value in pool.map(check, range(100)):
                out.append(value)
        assert out == [0, 1, 2]


def test_map_break_cancels_the_rest() -> None:
    tokens: list[CancelToken] = []

    def job(x: int, token: CancelToken) -> int:
        tokens.append(token)
        if x > 0:
            token.wait(10)
        return x

    with WorkerPool(3) as pool:
        for value in pool.map(job, range(1000)):
            assert value == 0
            break
    assert wait_until(lambda: all(t.cancelled for t in tokens[1:]))
    assert len(tokens) <= 6


def test_submit_returns_a_future_and_cancel_cancels_the_job() -> None:
    started = threading.Event()
    release = threading.Event()
    seen: list[CancelToken] = []

    def long(token: CancelToken) -> str:
        seen.append(token)
        started.set()
        token.wait(10)
        return "late"

    with WorkerPool(1) as pool:
        assert pool.submit(pow, 2, 5).result(5) == 32
        with pytest.raises(ZeroDivisionError):
            pool.submit(lambda: 1 // 0).result(5)
        running = pool.submit(long)
        assert started.wait(5)
        queued = pool.submit(release.set)  # waits behind the running one
        assert queued.cancel()
        assert running.cancel()  # cancels the running job's token
        assert seen[0].cancelled
        assert running.cancelled()
        assert pool.submit(pow, 3, 2).result(5) == 9
    assert not release.is_set()  # the cancelled queued job never started


def test_asubmit_is_awaitable_and_task_cancel_cancels_the_job() -> None:
    cancelled = threading.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    def blocking(token: CancelToken) -> None:
        token.wait(10)
        if token.cancelled:
            cancelled.set()

    async def main() -> None:
        async with WorkerPool(2, backend="asyncio") as pool:
            assert await pool.asubmit(pow, 2, 8) == 256
            task = asyncio.ensure_future(pool.asubmit(slow))
            await asyncio.sleep(0.02)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.wait_for(asyncio.to_thread(cancelled.wait, 5), 6)
        cancelled.clear()
        with WorkerPool(2) as pool:
            waiter: Awaitable[None] = pool.asubmit(blocking)
            task = asyncio.ensure_future(waiter)
            await asyncio.sleep(0.02)
            task.cancel()
            await asyncio.to_thread(cancelled.wait, 5)
            assert cancelled.is_set()

    run(main)


def test_close_with_cancel_pending_cancels_queued_submissions() -> None:
    started = threading.Event()
    gate = threading.Event()

    def first_job() -> str:
        started.set()
        gate.wait(5)
        return "finished"

    pool = WorkerPool(1)
    first = pool.submit(first_job)
    queued = [pool.submit(pow, 2, i) for i in range(5)]
    assert started.wait(5)
    pool.close(wait=False, cancel_pending=True)
    gate.set()
    assert first.result(5) == "finished"  # a running job finishes
    for future in queued:
        with pytest.raises(concurrent.futures.CancelledError):
            future.result(5)
    pool.close()


# -- bad input ---------------------------------------------------------------------------------


def test_bad_input_is_refused_at_the_call() -> None:
    with pytest.raises(ValueError, match="backend"):
        WorkerPool(2, backend="fibers")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="backend"):
        WorkerPool(2, backend=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="scheduler"):
        WorkerPool(2, scheduler=ThreadPoolScheduler(1), backend="asyncio")
    with pytest.raises(ValueError, match="backend"):
        rops.map_concurrent(abs, 2, backend="gpu")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Observable"):
        rxpool.aiter([1, 2, 3])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="maxsize"):
        rxpool.aiter(reactivex.of(1), maxsize=0)
    with WorkerPool(1) as pool:
        with pytest.raises(TypeError, match="iterable"):
            pool.map(abs)
        with pytest.raises(TypeError, match="iterables\\[0\\]"):
            pool.map(abs, 5)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="fn must be callable"):
            pool.submit(5)  # type: ignore[arg-type]
        with pytest.raises(RuntimeError, match="running event loop"):
            pool.asubmit(abs, 1)
    with pytest.raises(rxpool.PoolClosed):
        pool.submit(abs, 1)
