"""rxpool.Executor keeps the concurrent.futures.Executor contract.

The behaviours of CPython's ``test_concurrent_futures`` executor tests
(submit, map, timeouts, shutdown, cancel_futures, initializer,
as_completed / wait), run on the thread and process backends, and on Dask
where a cluster matters.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import itertools
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rxpool
from rxpool import Executor, JobTimeout, Retry, WorkerCrashed
from rxpool.backends import DaskBackend

from . import _jobs
from .test_backends import dask_client  # noqa: F401  (a fixture: a LocalCluster on loopback)

BACKENDS = ["thread", "process"]


@pytest.fixture(params=BACKENDS)
def executor(request: pytest.FixtureRequest) -> Iterator[Executor]:
    with Executor(2, backend=request.param) as executor:
        yield executor


_seen_threads: list[str] = []


def _note_thread(tag: str) -> None:
    _seen_threads.append(f"{tag}:{threading.current_thread().name}")


def test_it_is_a_concurrent_futures_executor() -> None:
    assert issubclass(Executor, cf.Executor)
    assert rxpool.Executor is Executor


def test_submit_returns_a_future_of_the_value(executor: Executor) -> None:
    future = executor.submit(pow, 2, 8)
    assert isinstance(future, cf.Future)
    assert future.result(timeout=30) == 256
    assert executor.submit(_jobs.double, x=21).result(timeout=30) == 42


def test_the_job_error_is_the_futures_exception(executor: Executor) -> None:
    future = executor.submit(_jobs.boom, 3)
    with pytest.raises(ZeroDivisionError, match="boom 3"):
        future.result(timeout=30)
    assert isinstance(future.exception(), ZeroDivisionError)


def test_submit_takes_fn_positionally_only() -> None:
    with Executor(1) as executor:
        assert executor.submit(lambda fn: fn * 2, fn=4).result(timeout=10) == 8


def test_map_gives_values_in_input_order(executor: Executor) -> None:
    assert list(executor.map(_jobs.square, range(50))) == [x * x for x in range(50)]
    assert list(executor.map(pow, range(10), itertools.repeat(2))) == [x**2 for x in range(10)]
    assert list(executor.map(_jobs.square, [])) == []


def test_map_raises_the_error_when_its_item_is_reached(executor: Executor) -> None:
    results = executor.map(_jobs.fail_on, range(10), itertools.repeat(frozenset({4})))
    assert [next(results) for _ in range(4)] == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        next(results)


def test_map_with_chunksize_gives_the_same_values(executor: Executor) -> None:
    assert list(executor.map(_jobs.square, range(500), chunksize=37)) == [x * x for x in range(500)]


def test_map_timeout_is_measured_from_the_call(gate: Any) -> None:
    with Executor(2) as executor:
        results = executor.map(gate, [1, 2, 3], timeout=0.2)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            next(results)
        assert time.monotonic() - started < 5
        gate.open()


def test_map_timeout_does_not_fire_for_values_already_there() -> None:
    with Executor(2) as executor:
        results = executor.map(_jobs.square, range(3), timeout=0.5)
        assert list(results) == [0, 1, 4]


def test_map_starts_the_work_at_the_call_not_at_the_first_next() -> None:
    ran = threading.Event()
    with Executor(1) as executor:
        results = executor.map(lambda _: ran.set(), [0])
        assert ran.wait(10)
        assert list(results) == [None]


def test_map_buffersize_bounds_the_items_taken_ahead_of_the_consumer() -> None:
    taken = 0

    def inputs() -> Iterator[int]:
        nonlocal taken
        for x in range(1_000_000):
            taken += 1
            yield x

    with Executor(4) as executor:
        results = executor.map(_jobs.square, inputs(), buffersize=10)
        for consumed, value in enumerate(results, start=1):
            assert value == (consumed - 1) ** 2
            assert taken - consumed <= 10
            if consumed == 200:
                break
    assert taken <= 210


def test_leaving_a_map_early_cancels_the_rest() -> None:
    calls = 0

    def count(x: int) -> int:
        nonlocal calls
        calls += 1
        return x

    with Executor(2) as executor:
        results = executor.map(count, range(100_000), buffersize=8)
        assert next(results) == 0
        results.close()  # type: ignore[attr-defined]
    assert calls < 100


def test_map_and_submit_check_their_arguments() -> None:
    with Executor(1) as executor:
        with pytest.raises(ValueError, match="chunksize"):
            executor.map(_jobs.square, [1], chunksize=0)
        with pytest.raises(ValueError, match="buffersize"):
            executor.map(_jobs.square, [1], buffersize=0)
        with pytest.raises(TypeError, match="timeout"):
            executor.map(_jobs.square, [1], timeout="1")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="iterable"):
            executor.map(_jobs.square)
        with pytest.raises(TypeError, match="fn must be callable"):
            executor.submit(3)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, -1])
def test_max_workers_below_one_is_a_value_error(bad: int) -> None:
    with pytest.raises(ValueError, match="max_workers"):
        Executor(bad)


def test_bad_constructor_arguments_are_named() -> None:
    with pytest.raises(TypeError, match="max_workers"):
        Executor("4")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="initializer"):
        Executor(1, initializer=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="initargs"):
        Executor(1, initializer=print, initargs=[1])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unexpected keyword"):
        Executor(1, chunk=3)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="rate"):
        Executor(1, rate=0)


def test_max_workers_none_picks_the_standard_default() -> None:
    count = getattr(os, "process_cpu_count", os.cpu_count)() or 1
    with Executor() as executor:
        assert executor.max_workers == min(32, count + 4)
    with Executor(backend="process") as executor:
        assert executor.max_workers == count


def test_submit_after_shutdown_is_a_runtime_error(executor: Executor) -> None:
    executor.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(pow, 2, 2)
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.map(_jobs.square, [1])
    executor.shutdown()  # twice is fine


def test_shutdown_waits_for_the_submitted_jobs() -> None:
    executor = Executor(2)
    futures = [executor.submit(time.sleep, 0.05) for _ in range(6)]
    executor.shutdown(wait=True)
    assert all(f.done() and f.exception() is None for f in futures)


def test_the_worker_threads_are_gone_after_shutdown() -> None:
    executor = Executor(4, thread_name_prefix="exec-threads")
    list(executor.map(_jobs.square, range(1000)))
    executor.submit(pow, 2, 2).result(timeout=10)
    assert any(t.name.startswith("exec-threads_") for t in threading.enumerate())
    executor.shutdown(wait=True)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("exec-threads_")]


def test_shutdown_cancel_futures_cancels_those_not_started() -> None:
    started = threading.Event()
    release = threading.Event()

    def block() -> str:
        started.set()
        release.wait(10)
        return "ran"

    executor = Executor(1)
    running = executor.submit(block)
    assert started.wait(10)
    waiting = [executor.submit(pow, 2, i) for i in range(5)]
    executor.shutdown(wait=False, cancel_futures=True)
    assert all(f.cancelled() for f in waiting)
    release.set()
    executor.shutdown(wait=True)
    assert running.result() == "ran"
    done, not_done = cf.wait(waiting, timeout=10)
    assert done == set(waiting) and not not_done


def test_cancel_succeeds_before_the_job_starts_and_fails_once_it_runs(executor: Executor) -> None:
    first = executor.submit(_jobs.sleep_for, 0.3)
    second = executor.submit(_jobs.sleep_for, 0.3)
    third = executor.submit(_jobs.sleep_for, 0.3)
    for future in (first, second):
        _wait_running(future)
    assert third.cancel()
    assert third.cancelled()
    assert not first.cancel()
    assert first.result(timeout=30) == 0.3
    with pytest.raises(cf.CancelledError):
        third.result(timeout=1)


def _wait_running(future: cf.Future[Any]) -> None:
    deadline = time.monotonic() + 30
    while not future.running() and not future.done():
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.001)


def test_as_completed_wait_and_done_callbacks(executor: Executor) -> None:
    futures = [executor.submit(_jobs.square, i) for i in range(20)]
    seen: list[int] = []
    called = threading.Event()
    futures[-1].add_done_callback(lambda f: (seen.append(f.result()), called.set()))
    assert sorted(f.result() for f in cf.as_completed(futures, timeout=30)) == sorted(
        i * i for i in range(20)
    )
    done, not_done = cf.wait(futures, timeout=30, return_when=cf.ALL_COMPLETED)
    assert len(done) == 20 and not not_done
    assert called.wait(10) and seen == [19 * 19]


def test_wait_first_exception_returns_at_the_failure(gate: Any) -> None:
    with Executor(2) as executor:
        slow = executor.submit(gate, 1)
        bad = executor.submit(_jobs.boom, 1)
        done, not_done = cf.wait([slow, bad], timeout=30, return_when=cf.FIRST_EXCEPTION)
        assert done == {bad} and not_done == {slow}
        gate.open()


def test_run_in_executor_and_wrap_future(executor: Executor) -> None:
    async def main() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        a = await loop.run_in_executor(executor, _jobs.square, 7)
        b = await asyncio.wrap_future(executor.submit(_jobs.square, 8))
        return a, b

    assert asyncio.run(main()) == (49, 64)


def test_the_initializer_runs_once_in_each_worker_thread() -> None:
    _seen_threads.clear()
    with Executor(3, initializer=_note_thread, initargs=("t",)) as executor:
        list(executor.map(_jobs.sleep_for, [0.01] * 30))
        for f in [executor.submit(_jobs.sleep_for, 0.01) for _ in range(30)]:
            f.result(timeout=30)
    assert len(_seen_threads) == len(set(_seen_threads)) >= 1


def test_the_initializer_runs_once_in_each_worker_process(tmp_path: Any) -> None:
    # claim_pid fails if it runs twice in one process: that would break the executor.
    with Executor(
        2, backend="process", initializer=_jobs.claim_pid, initargs=(str(tmp_path),)
    ) as executor:
        ran_in = {pid for _, pid in executor.map(_jobs.where, range(200))}
        ran_in |= {executor.submit(_jobs.where, 0).result(timeout=60)[1] for _ in range(10)}
    assert {int(p.name) for p in tmp_path.iterdir()} == ran_in


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_failing_initializer_breaks_the_executor(backend: str) -> None:
    with Executor(2, backend=backend, initializer=_jobs.fail_init) as executor:
        # Submits may already be refused once the first job broke the executor.
        futures: list[cf.Future[int]] = []
        with contextlib.suppress(cf.BrokenExecutor):
            for i in range(5):
                futures.append(executor.submit(_jobs.square, i))
        assert futures
        for future in futures:
            with pytest.raises(cf.BrokenExecutor):
                future.result(timeout=30)
        error = futures[0].exception()
        assert error is not None and error.__cause__ is not None
        with pytest.raises(cf.BrokenExecutor):
            executor.submit(_jobs.square, 1)
        with pytest.raises(cf.BrokenExecutor):
            executor.map(_jobs.square, [1])


def test_a_failing_initializer_fails_map_with_broken_executor() -> None:
    with Executor(2, initializer=_jobs.fail_init) as executor, pytest.raises(cf.BrokenExecutor):
        list(executor.map(_jobs.square, range(10)))


def test_a_crashed_process_fails_its_future_and_the_executor_goes_on() -> None:
    with Executor(2, backend="process") as executor:
        crashed = executor.submit(_jobs.die, 3)
        with pytest.raises(WorkerCrashed):
            crashed.result(timeout=60)
        assert executor.submit(_jobs.square, 5).result(timeout=60) == 25
        assert list(executor.map(_jobs.square, range(5))) == [0, 1, 4, 9, 16]


def test_rxpool_options_apply_to_every_job() -> None:
    attempts = itertools.count(1)

    def flaky() -> int:
        if next(attempts) < 3:
            raise ConnectionError("not yet")
        return 7

    retry = Retry(attempts=3, backoff=0.001, retry_on=ConnectionError)
    with Executor(2, timeout=0.2, retry=retry) as executor:
        assert executor.submit(flaky).result(timeout=30) == 7
        with pytest.raises(JobTimeout):
            executor.submit(time.sleep, 1).result(timeout=30)
        stats = executor.statistics()
        assert stats.succeeded >= 1 and stats.timed_out == 1


def test_dask_backend_runs_submit_and_map(dask_client: Any) -> None:  # noqa: F811
    with Executor(4, backend=DaskBackend(dask_client)) as executor:
        assert executor.submit(_jobs.double, 4).result(timeout=60) == 8
        assert list(executor.map(_jobs.double, range(20))) == [2 * x for x in range(20)]


@settings(max_examples=25, deadline=None)
@given(
    values=st.lists(st.integers(-1000, 1000), max_size=60),
    failing=st.sets(st.integers(0, 59), max_size=3),
    workers=st.integers(1, 6),
)
def test_map_is_the_builtin_map_up_to_the_first_error(
    values: list[int], failing: set[int], workers: int
) -> None:
    bad = frozenset(values[i] for i in failing if i < len(values))
    expected: list[int] = []
    for value in values:
        if value in bad:
            break
        expected.append(value)
    with Executor(workers) as executor:
        got: list[int] = []
        results = executor.map(_jobs.fail_on, values, itertools.repeat(bad))
        with pytest.raises(ValueError) if bad else _no_error():
            for value in results:
                got.append(value)
    assert got == expected


class _no_error:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return False
