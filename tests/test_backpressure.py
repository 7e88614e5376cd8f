"""Intake and dispatch: overflow policies, priorities, rate limit, the ordered window."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reactivex import operators as ops
from reactivex.subject import Subject
from reactivex.testing import ReactiveTest, TestScheduler

from rxpool import BufferOverflow, Dropped, Job, Result, WorkerPool
from rxpool import operators as rops
from rxpool._intake import PriorityBuffer, RateLimiter

from ._helpers import Gate, Recorder, wait_until


@settings(max_examples=40, deadline=None)
@given(
    policy=st.sampled_from(["block", "drop_newest", "drop_oldest", "error"]),
    buffer_size=st.integers(1, 4),
    workers=st.integers(1, 3),
    extra=st.integers(0, 6),
    ordered=st.booleans(),
)
def test_overflow_policies_account_for_every_job(
    policy: str, buffer_size: int, workers: int, extra: int, ordered: bool
) -> None:
    gate = Gate()
    subject: Subject[Job[Any]] = Subject()
    rec = Recorder()
    total = workers + buffer_size + extra
    jobs = [Job(gate, args=(i,), id=i) for i in range(total)]
    with WorkerPool(workers) as pool:
        pool.run(
            subject,
            ordered=ordered,
            buffer_size=buffer_size,
            overflow=policy,  # type: ignore[arg-type]
        ).subscribe(rec.on_next, rec.on_error, rec.on_completed)
        for running, job in enumerate(jobs[:workers], start=1):
            subject.on_next(job)  # one at a time: a buffer of 1 could overflow otherwise
            assert gate.wait_running(running)
        # The first jobs run; the rest wait in the buffer or overflow it.
        if policy == "block":
            # The producer's thread is held at the full buffer until workers free up.
            def produce() -> None:
                for job in jobs[workers:]:
                    subject.on_next(job)
                subject.on_completed()

            producer = threading.Thread(target=produce)
            producer.start()
            producer.join(0.05 if extra else 5)
            assert producer.is_alive() == (extra > 0)
            gate.open()
            producer.join(10)
        else:
            for job in jobs[workers:]:
                subject.on_next(job)
            gate.open()
            subject.on_completed()
        assert rec.ended.wait(10)

    results: list[Result[Any]] = rec.values
    ids = [r.id for r in results]
    assert len(ids) == len(set(ids))
    overflowed = extra > 0
    if policy == "error" and overflowed:
        assert len(rec.errors) == 1 and isinstance(rec.errors[0], BufferOverflow)
        assert all(not isinstance(r.error, Dropped) for r in results)
        return
    assert rec.errors == []
    assert sorted(ids) == list(range(total)), "a job has no result"
    dropped = sorted(r.id for r in results if isinstance(r.error, Dropped))
    if policy == "drop_newest":
        assert dropped == list(range(total - extra, total))
    elif policy == "drop_oldest":
        assert dropped == list(range(workers, workers + extra))
    else:
        assert dropped == []
    for r in results:
        if r.id not in dropped:
            assert r.ok and r.value == r.id


def test_block_policy_parks_the_producer_thread(gate: Gate) -> None:
    subject: Subject[int] = Subject()
    rec = Recorder()
    subject.pipe(rops.map_concurrent(gate, 2, buffer_size=3)).subscribe(
        rec.on_next, rec.on_error, rec.on_completed
    )
    pushed: list[int] = []

    def produce() -> None:
        for i in range(20):
            subject.on_next(i)
            pushed.append(i)
        subject.on_completed()

    producer = threading.Thread(target=produce)
    producer.start()
    assert gate.wait_running(2)
    # 2 running + 3 buffered: the 6th on_next blocks the producer's thread.
    assert wait_until(lambda: len(pushed) == 5)
    producer.join(0.2)
    assert producer.is_alive() and len(pushed) == 5
    gate.open()
    producer.join(10)
    assert rec.completed.wait(10)
    assert sorted(rec.values) == list(range(20))


@pytest.mark.parametrize("policy", ["drop_newest", "drop_oldest"])
def test_map_concurrent_reports_drops_through_callback(policy: str, gate: Gate) -> None:
    subject: Subject[int] = Subject()
    rec = Recorder()
    dropped: list[int] = []
    subject.pipe(
        rops.map_concurrent(gate, 1, buffer_size=2, overflow=policy, on_drop=dropped.append)  # type: ignore[arg-type]
    ).subscribe(rec.on_next, rec.on_error, rec.on_completed)
    subject.on_next(0)
    assert gate.wait_running(1)
    for i in range(1, 8):
        subject.on_next(i)
    gate.open()
    subject.on_completed()
    assert rec.completed.wait(10)
    assert len(dropped) == 5
    assert sorted(rec.values + dropped) == list(range(8))
    assert dropped == ([3, 4, 5, 6, 7] if policy == "drop_newest" else [1, 2, 3, 4, 5])


def test_priorities_dispatch_highest_first_fifo_among_equals(gate: Gate) -> None:
    order: list[str] = []

    def record(name: str) -> str:
        order.append(name)
        return name

    subject: Subject[Job[Any]] = Subject()
    rec = Recorder()
    with WorkerPool(1) as pool:
        pool.run(subject).subscribe(rec.on_next, rec.on_error, rec.on_completed)
        subject.on_next(Job(gate, args=("first",)))
        assert gate.wait_running(1)
        for name, priority in [("a", 0), ("b", 5), ("c", 1), ("d", 5), ("e", 0), ("f", 1)]:
            subject.on_next(Job(record, args=(name,), priority=priority))
        gate.open()
        subject.on_completed()
        assert rec.completed.wait(10)
    assert order == ["b", "d", "c", "f", "a", "e"]


def test_priority_buffer_evicts_lowest_oldest() -> None:
    class Item:
        def __init__(self, name: str, priority: float) -> None:
            self.name, self.priority = name, priority

    buf = PriorityBuffer(Item(n, p) for n, p in [("a", 1), ("b", 0), ("c", 2), ("d", 0)])
    assert len(buf) == 4
    assert buf.evict().name == "b"
    assert [i.name for i in buf] == ["c", "a", "d"]
    assert buf.popleft().name == "c"
    assert buf.popleft().name == "a"
    assert buf.popleft().name == "d"
    assert len(buf) == 0


def test_rate_limit_in_virtual_time() -> None:
    scheduler = TestScheduler()
    jobs = [Job(lambda i=i: i, id=i) for i in range(5)]
    xs = scheduler.create_hot_observable(
        *[ReactiveTest.on_next(210, job) for job in jobs], ReactiveTest.on_completed(300)
    )
    started: list[float] = []

    def stamp(job: Job[Any]) -> Job[Any]:
        return Job(lambda: started.append(scheduler.clock) or job.id, id=job.id)

    results = scheduler.start(
        lambda: xs.pipe(ops.map(stamp), rops.run_jobs(4, scheduler=scheduler, rate=0.1, burst=2))
    )
    # Two at once from the full bucket, then one every 10 ticks.
    assert started == [210, 210, 220, 230, 240]
    assert [m.value.value.id for m in results.messages[:-1]] == [0, 1, 2, 3, 4]
    assert results.messages[-1] == ReactiveTest.on_completed(300)


@settings(max_examples=8, deadline=None)
@given(rate=st.sampled_from([200.0, 500.0]), burst=st.integers(1, 4), workers=st.integers(1, 4))
def test_rate_limit_on_threads_never_exceeds_the_bucket(
    rate: float, burst: int, workers: int
) -> None:
    starts: list[float] = []
    lock = threading.Lock()

    def job(i: int) -> int:
        with lock:
            starts.append(time.monotonic())
        return i

    n = 40
    with WorkerPool(workers) as pool:
        out = (
            pool.run((Job(job, args=(i,), id=i) for i in range(n)), rate=rate, burst=burst)
            .pipe(ops.to_list())
            .run()
        )
    assert sorted(r.value for r in out) == list(range(n))
    starts.sort()
    slack = 0.002  # clock reads inside the jobs lag the bucket's by a little
    for i, t0 in enumerate(starts):
        within = sum(1 for t in starts[i:] if t - t0 <= 0.05)
        assert within <= burst + rate * (0.05 + slack) + 1


def test_rate_limiter_bucket() -> None:
    now = [0.0]
    limiter = RateLimiter(10.0, 3, lambda: now[0])
    assert limiter.take(5) == 3
    assert limiter.take(1) == 0
    assert limiter.delay() == pytest.approx(0.1)
    now[0] = 0.25
    assert limiter.take(5) == 2
    limiter.give_back(1)
    assert limiter.take(5) == 1
    now[0] = 10.0
    assert limiter.available() == 3


def test_ordered_window_bounds_the_intake(gate: Gate) -> None:
    pulled = [0]

    def source() -> Iterator[Job[Any]]:
        for i in itertools.count():
            pulled[0] += 1
            yield Job(gate if i == 0 else int, args=(i,), id=i)

    with WorkerPool(4) as pool:
        sub = pool.run(source(), ordered=True).subscribe()
        assert gate.wait_running(1)
        window = 1024
        assert wait_until(lambda: pulled[0] >= window)
        # With the head parked, the window is full and nothing more is pulled.
        assert not wait_until(lambda: pulled[0] > window, timeout=0.3)
        sub.dispose()
        gate.open()


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"overflow": "drop_some"}, ValueError, "overflow must be one of"),
        ({"buffer_size": 0}, ValueError, "buffer_size must be >= 1"),
        ({"buffer_size": 1.5}, TypeError, "buffer_size must be an int"),
        ({"rate": 0}, ValueError, "rate must be a finite number > 0"),
        ({"rate": -3}, ValueError, "rate must be a finite number > 0"),
        ({"rate": float("nan")}, ValueError, "rate must be a finite number > 0"),
        ({"rate": "fast"}, TypeError, "rate must be a number"),
        ({"burst": 0}, ValueError, "burst must be >= 1"),
        ({"on_drop": 3}, TypeError, "on_drop must be callable"),
    ],
)
def test_bad_intake_options(kwargs: dict[str, Any], exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        rops.map_concurrent(int, 2, **kwargs)
    kwargs.pop("on_drop", None)
    if kwargs:
        with pytest.raises(exc, match=match):
            rops.run_jobs(2, **kwargs)
        with WorkerPool(1) as pool, pytest.raises(exc, match=match):
            pool.run([], **kwargs)


def test_bad_priority() -> None:
    with pytest.raises(TypeError, match="priority must be a number"):
        Job(int, priority="high")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="priority must not be NaN"):
        Job(int, priority=float("nan"))
