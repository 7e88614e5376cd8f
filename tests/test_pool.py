"""WorkerPool and run_jobs on real threads."""

from __future__ import annotations

import gc
import itertools
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
import reactivex
from reactivex import operators as ops
from reactivex.subject import Subject
from reactivex.testing import ReactiveTest, TestScheduler

from rxpool import (
    Cancelled,
    CancelToken,
    DeadlineExceeded,
    Job,
    PoolClosed,
    Result,
    WorkerPool,
)
from rxpool import operators as rops

from ._helpers import Gate, wait_until


def double(x: int) -> int:
    return x * 2


def jobs(n: int, fn: Any = double) -> list[Job[Any]]:
    return [Job(fn, args=(i,), id=i) for i in range(n)]


def rxpool_threads() -> int:
    return sum(t.name.startswith("rxpool-") for t in threading.enumerate())


def test_results_carry_values_errors_and_timestamps() -> None:
    def maybe_fail(x: int) -> int:
        if x % 3 == 0:
            raise ValueError(f"bad {x}")
        return x

    with WorkerPool(4) as pool:
        results = pool.run(jobs(30, maybe_fail)).pipe(ops.to_list()).run()
    assert sorted(r.id for r in results) == list(range(30))
    for r in results:
        assert r.attempt == 1
        assert r.started <= r.finished
        if r.id % 3 == 0:
            assert isinstance(r.error, ValueError) and r.value is None and not r.ok
            assert r.error.__traceback__ is not None
        else:
            assert r.ok and r.value == r.id


def test_ordered_run() -> None:
    with WorkerPool(8) as pool:
        results = pool.run(jobs(2000), ordered=True).pipe(ops.to_list()).run()
    assert [r.id for r in results] == list(range(2000))


def test_concurrency_never_exceeds_workers(gate: Gate) -> None:
    done = threading.Event()
    results: list[Result[Any]] = []
    with WorkerPool(5) as pool:
        pool.run(jobs(50, gate)).subscribe(results.append, on_completed=done.set)
        assert gate.wait_running(5)
        assert not gate.wait_running(6, timeout=0.2)
        gate.open()
        assert done.wait(10)
    assert gate.high_water == 5
    assert len(results) == 50


def test_lazy_pull_from_infinite_generator(gate: Gate) -> None:
    pulled = 0

    def forever() -> Iterator[Job[Any]]:
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield Job(gate, args=(i,), id=i)

    with WorkerPool(4) as pool:
        sub = pool.run(forever()).subscribe()
        assert gate.wait_running(4)
        assert pulled == 4  # a job is taken only when a worker is free
        sub.dispose()
        gate.open()
        pool.close()
    assert pulled <= 8


def test_dispose_mid_run(gate: Gate) -> None:
    baseline = rxpool_threads()
    pulled = 0
    lock = threading.Lock()

    def source() -> Iterator[Job[Any]]:
        nonlocal pulled
        for i in range(1000):
            with lock:
                pulled += 1
            yield Job(gate, args=(i,), id=i)

    out: list[Result[Any]] = []
    pool = WorkerPool(3)
    sub = pool.run(source()).subscribe(out.append)
    assert gate.wait_running(3)
    sub.dispose()
    pulled_at_dispose = pulled
    gate.open()
    pool.close(wait=True)
    assert out == []  # nothing is emitted after dispose
    assert pulled == pulled_at_dispose  # the source is no longer pulled
    assert gate.entered == 3  # no job started after dispose
    assert wait_until(lambda: rxpool_threads() == baseline)


def test_dispose_cancels_running_jobs_token() -> None:
    entered = threading.Event()
    returned = threading.Event()

    def cooperative(token: CancelToken) -> str:
        entered.set()
        token.wait(10)
        returned.set()
        return "late"

    with WorkerPool(2) as pool:
        sub = pool.run([Job(cooperative)]).subscribe()
        assert entered.wait(5)
        sub.dispose()
        assert returned.wait(5)


def test_token_cancel_completes_without_waiting_for_running_jobs() -> None:
    token = CancelToken()
    release = threading.Event()
    gate_hits = Gate()

    def stubborn(x: int) -> int:
        gate_hits(x)
        release.wait(10)  # ignores the token
        return x

    results: list[Result[Any]] = []
    done = threading.Event()
    pool = WorkerPool(3)
    try:
        pool.run(jobs(100, stubborn), token=token).subscribe(results.append, on_completed=done.set)
        gate_hits.open()
        assert wait_until(lambda: gate_hits.entered == 3)
        token.cancel("stop now")
        assert done.wait(2), "the run must complete without waiting for running jobs"
        assert len(results) == 3
        assert all(isinstance(r.error, Cancelled) for r in results)
        assert {r.id for r in results} == {0, 1, 2}
    finally:
        release.set()
        pool.close()
    # The late returns were discarded.
    assert len(results) == 3


def test_deadline_gives_deadline_exceeded() -> None:
    def slow(x: int, token: CancelToken) -> int:
        token.wait(10)
        return x

    token = CancelToken.with_timeout(0.05)
    with WorkerPool(2) as pool:
        results = pool.run((Job(slow, args=(i,), id=i) for i in range(10)), token=token)
        out = results.pipe(ops.to_list()).run()
    assert len(out) == 2
    assert all(isinstance(r.error, DeadlineExceeded) for r in out)


def test_hot_observable_of_jobs_with_token_cancel() -> None:
    subject: Subject[Job[Any]] = Subject()
    token = CancelToken()
    release = threading.Event()
    out: list[Result[Any]] = []
    done = threading.Event()

    def parked(x: int) -> int:
        release.wait(10)
        return x

    with WorkerPool(2) as pool:
        pool.run(subject, token=token).subscribe(out.append, on_completed=done.set)
        for job in jobs(10, parked):
            subject.on_next(job)
        token.cancel()
        assert done.wait(5)
        release.set()
    # every job that was handed over got exactly one result
    assert sorted(r.id for r in out) == list(range(10))
    assert all(isinstance(r.error, Cancelled) for r in out)


def test_run_jobs_operator_and_source_error_after_jobs_finish() -> None:
    source = reactivex.concat(reactivex.from_iterable(jobs(5)), reactivex.throw(OSError("disk")))
    out: list[Result[Any]] = []
    errors: list[Exception] = []
    done = threading.Event()

    def on_error(e: Exception) -> None:
        errors.append(e)
        done.set()

    source.pipe(rops.run_jobs(2)).subscribe(out.append, on_error)
    assert done.wait(5)
    assert sorted(r.value for r in out) == [0, 2, 4, 6, 8]
    assert isinstance(errors[0], OSError)


def test_non_job_in_lazy_source_is_a_type_error() -> None:
    def source() -> Iterator[Any]:
        yield Job(double, args=(1,))
        yield 42

    with WorkerPool(2) as pool, pytest.raises(TypeError, match=r"rxpool\.Job"):
        pool.run(source()).pipe(ops.to_list()).run()


def test_each_subscription_is_independent() -> None:
    with WorkerPool(3) as pool:
        run = pool.run(jobs(50), ordered=True).pipe(ops.map(lambda r: r.value), ops.to_list())
        assert run.run() == run.run() == [2 * i for i in range(50)]


def test_virtual_time_run_jobs() -> None:
    scheduler = TestScheduler()
    job_list = jobs(3)
    xs = scheduler.create_hot_observable(
        *[ReactiveTest.on_next(210 + 10 * i, job) for i, job in enumerate(job_list)],
        ReactiveTest.on_completed(250),
    )
    results = scheduler.start(lambda: xs.pipe(rops.run_jobs(2, scheduler=scheduler)))
    values = [(m.time, m.value.value.value) for m in results.messages[:-1]]
    assert values == [(210, 0), (220, 2), (230, 4)]
    assert results.messages[-1] == ReactiveTest.on_completed(250)


def test_closed_pool_refuses_work() -> None:
    pool = WorkerPool(2)
    pending = pool.run(jobs(3))
    pool.close()
    pool.close()  # safe twice
    assert pool.closed
    with pytest.raises(PoolClosed):
        pool.run(jobs(3))
    with pytest.raises(PoolClosed):
        pending.run()


def test_a_finished_run_is_not_kept_alive_by_the_pools_idle_threads() -> None:
    # An open pool's threads wait for the next run; the last one they served,
    # with its subscriber and source and what those hold, must be free to go.
    class Subscriber:
        def __init__(self) -> None:
            self.values: list[Any] = []
            self.done = threading.Event()

        def on_next(self, value: Any) -> None:
            self.values.append(value)

        def on_completed(self) -> None:
            self.done.set()

    with WorkerPool(4) as pool:
        subscriber = Subscriber()
        jobs = (Job(abs, args=(-i,)) for i in range(1000))
        pool.run(jobs).subscribe(subscriber.on_next, on_completed=subscriber.on_completed)
        assert subscriber.done.wait(10)
        assert len(subscriber.values) == 1000
        gone = weakref.ref(subscriber)
        del subscriber
        # The thread that called on_completed is still winding the run down.
        assert wait_until(lambda: gc.collect() >= 0 and gone() is None)


def test_close_releases_threads() -> None:
    baseline = rxpool_threads()
    pool = WorkerPool(4)
    pool.run(jobs(100)).pipe(ops.to_list()).run()
    pool.close(wait=True)
    assert rxpool_threads() == baseline


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: WorkerPool(0), ValueError, "workers must be >= 1, got 0"),
        (lambda: WorkerPool(-3), ValueError, "workers must be >= 1"),
        (lambda: WorkerPool(2.5), TypeError, "workers must be an int"),
        (lambda: WorkerPool(2, scheduler="x"), TypeError, "scheduler must be"),
        (lambda: rops.run_jobs(0), ValueError, "max_concurrent must be >= 1"),
        (lambda: rops.run_jobs(2, token="t"), TypeError, "token must be a CancelToken"),
    ],
)
def test_bad_constructor_input(call: Any, exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize(
    ("jobs_arg", "kwargs", "exc", "match"),
    [
        ([Job(double, args=(1,)), 7], {}, TypeError, r"jobs\[1\] must be an rxpool.Job"),
        (5, {}, TypeError, "jobs must be an iterable, async iterable or Observable of Job"),
        ("abc", {}, TypeError, "jobs must be an iterable, async iterable or Observable of Job"),
        ([], {"token": 3}, TypeError, "token must be a CancelToken"),
        ([], {"ordered": 1}, TypeError, "ordered must be a bool"),
    ],
)
def test_bad_run_input(
    jobs_arg: Any, kwargs: dict[str, Any], exc: type[Exception], match: str
) -> None:
    with WorkerPool(2) as pool, pytest.raises(exc, match=match):
        pool.run(jobs_arg, **kwargs)
