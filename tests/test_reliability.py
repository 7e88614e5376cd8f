"""Timeouts, retries, error policies and graceful shutdown."""

from __future__ import annotations

import os
import signal
import threading
import time
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
    Job,
    JobTimeout,
    Result,
    Retry,
    WorkerPool,
)
from rxpool import operators as rops

from ._helpers import Gate, Recorder, wait_until

# -- timeouts --------------------------------------------------------------------------------


def test_timeout_result_comes_at_the_deadline_and_the_slot_stays_busy() -> None:
    release = threading.Event()
    started: list[str] = []

    def stubborn() -> str:
        started.append("stubborn")
        release.wait(10)  # ignores its token
        return "late"

    def quick() -> str:
        started.append("quick")
        return "quick"

    rec = Recorder()
    with WorkerPool(1) as pool:
        begin = time.monotonic()
        jobs = [Job(stubborn, id="s", timeout=0.1), Job(quick, id="q")]
        pool.run(jobs).subscribe(rec.on_next, rec.on_error, rec.on_completed)
        assert wait_until(lambda: len(rec.values) == 1)
        timed_out = rec.values[0]
        assert isinstance(timed_out.error, JobTimeout)
        assert isinstance(timed_out.error, TimeoutError)
        assert timed_out.id == "s"
        assert 0.1 <= rec.stamps[0] - begin < 0.1 + 0.05  # within 50 ms of the deadline
        assert pool.abandoned == 1
        # The only worker still runs the abandoned function: the bound holds.
        assert started == ["stubborn"]
        release.set()
        assert rec.completed.wait(5)
    assert started == ["stubborn", "quick"]
    assert [r.id for r in rec.values] == ["s", "q"]
    assert rec.values[1].value == "quick"
    assert pool.abandoned == 0


def test_timeout_cancels_the_jobs_token_so_it_stops() -> None:
    stopped = threading.Event()

    def cooperative(token: CancelToken) -> str:
        if token.wait(10):
            stopped.set()
            token.raise_if_cancelled()
        return "finished"

    with WorkerPool(2) as pool:
        out = pool.run([Job(cooperative, timeout=0.05)]).pipe(ops.to_list()).run()
        assert stopped.wait(5)
    assert len(out) == 1 and isinstance(out[0].error, JobTimeout)


def test_run_default_timeout_and_job_override() -> None:
    def nap(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    jobs = [
        Job(nap, args=(0.2,), id="default"),
        Job(nap, args=(0.2,), id="generous", timeout=5),
        Job(nap, args=(0.0,), id="quick"),
    ]
    with WorkerPool(3) as pool:
        out = {r.id: r for r in pool.run(jobs, timeout=0.05).pipe(ops.to_list()).run()}
    assert isinstance(out["default"].error, JobTimeout)
    assert out["generous"].value == 0.2
    assert out["quick"].value == 0.0


def test_map_concurrent_timeout_ends_the_stream() -> None:
    def slow(x: int) -> int:
        time.sleep(0.5 if x == 3 else 0)
        return x

    with pytest.raises(JobTimeout):
        reactivex.range(6).pipe(rops.map_concurrent(slow, 2, timeout=0.05), ops.to_list()).run()


def test_ordered_run_keeps_order_with_timeouts() -> None:
    def nap(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    naps = [0.0, 0.3, 0.0, 0.0, 0.3, 0.0]
    jobs = [Job(nap, args=(s,), id=i) for i, s in enumerate(naps)]
    with WorkerPool(4) as pool:
        out = pool.run(jobs, ordered=True, timeout=0.1).pipe(ops.to_list()).run()
    assert [r.id for r in out] == list(range(6))
    assert [isinstance(r.error, JobTimeout) for r in out] == [s > 0 for s in naps]


# -- retries ---------------------------------------------------------------------------------


class Flaky:
    """Fails ``failures`` times, then returns its attempt number."""

    def __init__(self, failures: int, error: type[Exception] = ConnectionError) -> None:
        self.failures = failures
        self.calls = 0
        self.error = error
        self.lock = threading.Lock()

    def __call__(self) -> int:
        with self.lock:
            self.calls += 1
            calls = self.calls
        if calls <= self.failures:
            raise self.error(f"attempt {calls}")
        return calls


def test_retry_until_success_records_attempts() -> None:
    flaky = Flaky(2)
    with WorkerPool(2) as pool:
        job = Job(flaky, retry=Retry(3, backoff=0.001))
        (result,) = pool.run([job]).pipe(ops.to_list()).run()
    assert result.ok and result.value == 3 and result.attempt == 3


def test_final_failure_chains_earlier_errors() -> None:
    flaky = Flaky(10)
    with WorkerPool(2) as pool:
        (result,) = pool.run([Job(flaky)], retry=Retry(3, backoff=0.001)).pipe(ops.to_list()).run()
    assert result.attempt == 3 and not result.ok
    error = result.error
    assert isinstance(error, ConnectionError) and str(error) == "attempt 3"
    assert isinstance(error.__context__, ConnectionError)
    assert str(error.__context__) == "attempt 2"
    assert str(error.__context__.__context__) == "attempt 1"
    assert any("no attempt left" in note for note in error.__notes__)


def test_retry_on_filters_errors() -> None:
    flaky = Flaky(1, error=KeyError)
    with WorkerPool(1) as pool:
        only_io = Retry(3, backoff=0.001, retry_on=(ConnectionError, TimeoutError))
        (result,) = pool.run([Job(flaky, retry=only_io)]).pipe(ops.to_list()).run()
        assert isinstance(result.error, KeyError) and result.attempt == 1
        predicate = Retry(3, backoff=0.001, retry_on=lambda e: isinstance(e, KeyError))
        (result,) = pool.run([Job(Flaky(1, KeyError), retry=predicate)]).pipe(ops.to_list()).run()
        assert result.ok and result.attempt == 2


def test_retried_timeouts() -> None:
    calls = []

    def first_hangs(token: CancelToken) -> str:
        calls.append(1)
        if len(calls) == 1:
            token.wait(5)
        return "second time lucky"

    with WorkerPool(2) as pool:
        job = Job(first_hangs, timeout=0.05, retry=Retry(2, backoff=0.001))
        (result,) = pool.run([job]).pipe(ops.to_list()).run()
    assert result.ok and result.attempt == 2


def test_map_concurrent_retries_then_errors() -> None:
    flaky = Flaky(1)
    out = (
        reactivex.of(0)
        .pipe(rops.map_concurrent(lambda _: flaky(), 1, retry=Retry(2, backoff=0.001)))
        .pipe(ops.to_list())
        .run()
    )
    assert out == [2]
    with pytest.raises(ConnectionError, match="attempt 3"):
        reactivex.of(0).pipe(
            rops.map_concurrent(lambda _: Flaky(5)(), 1, retry=Retry(3, backoff=0.001))
        ).run()


def test_backoff_uses_the_scheduler_clock_and_frees_the_worker() -> None:
    scheduler = TestScheduler()
    flaky = Flaky(2)
    calls: list[tuple[str, float]] = []

    def flaky_job() -> int:
        calls.append(("flaky", scheduler.clock))
        return flaky()

    def other() -> str:
        calls.append(("other", scheduler.clock))
        return "other"

    retry = Retry(3, backoff=10, multiplier=2, jitter=0)
    xs = scheduler.create_hot_observable(
        ReactiveTest.on_next(210, Job(flaky_job, id="f", retry=retry)),
        ReactiveTest.on_next(215, Job(other, id="o")),
        ReactiveTest.on_completed(300),
    )
    results = scheduler.start(lambda: xs.pipe(rops.run_jobs(1, scheduler=scheduler)))
    # One worker: "other" runs while "flaky" waits out its backoff (10, then 20).
    assert calls == [("flaky", 210), ("other", 215), ("flaky", 220), ("flaky", 240)]
    outcome = [(m.time, m.value.value.id, m.value.value.attempt) for m in results.messages[:-1]]
    assert outcome == [(215, "o", 1), (240, "f", 3)]
    assert results.messages[-1] == ReactiveTest.on_completed(300)


def test_cancel_during_backoff_gives_cancelled_at_once() -> None:
    token = CancelToken()
    rec = Recorder()
    with WorkerPool(1) as pool:
        job = Job(Flaky(5), id="f", retry=Retry(5, backoff=30, jitter=0))
        pool.run([job], token=token).subscribe(rec.on_next, rec.on_error, rec.on_completed)
        assert not rec.ended.wait(0.05)
        token.cancel()
        assert rec.completed.wait(2)
    assert len(rec.values) == 1 and isinstance(rec.values[0].error, Cancelled)


def test_retry_delays() -> None:
    retry = Retry(5, backoff=0.5, multiplier=3, max_delay=2, jitter=0)
    assert [retry.delay(k) for k in range(1, 5)] == [0.5, 1.5, 2, 2]
    jittered = Retry(3, backoff=1, jitter=0.5)
    assert all(0.5 <= jittered.delay(1) <= 1.5 for _ in range(50))
    custom = Retry(3, backoff=lambda attempt: attempt * 0.25)
    assert custom.delay(2) == pytest.approx(0.5, rel=0.11)
    assert not Retry(3).should_retry(Cancelled("x"), 1)
    assert not Retry(3).should_retry(ValueError("x"), 3)


# -- error policy ------------------------------------------------------------------------------


def test_fail_fast_ends_the_stream_and_cancels_the_rest() -> None:
    cancelled = threading.Event()

    def waits(token: CancelToken) -> str:
        if token.wait(10):
            cancelled.set()
        return "late"

    def boom() -> str:
        time.sleep(0.02)
        raise RuntimeError("first failure")

    rec = Recorder()
    with WorkerPool(3) as pool:
        jobs = [Job(waits), Job(waits), Job(boom), *[Job(str) for _ in range(10)]]
        pool.run(jobs, fail_fast=True).subscribe(rec.on_next, rec.on_error, rec.on_completed)
        assert rec.ended.wait(5)
        assert cancelled.wait(5)
    assert len(rec.errors) == 1 and str(rec.errors[0]) == "first failure"
    assert not rec.completed.is_set()
    assert all(r.ok for r in rec.values)


def test_on_next_raising_cancels_the_run_and_reaches_on_error() -> None:
    cancelled = threading.Event()
    both_waiting = threading.Barrier(3)

    def waits(token: CancelToken) -> str:
        both_waiting.wait(5)
        if token.wait(10):
            cancelled.set()
        return "late"

    def trigger() -> str:
        both_waiting.wait(5)
        return "the first result"

    errors: list[Exception] = []
    ended = threading.Event()

    def on_next(result: Result[Any]) -> None:
        raise ValueError("subscriber bug")

    def on_error(error: Exception) -> None:
        errors.append(error)
        ended.set()

    with WorkerPool(3) as pool:
        pool.run([Job(waits), Job(waits), Job(trigger)]).subscribe(on_next, on_error)
        assert ended.wait(5)
        assert cancelled.wait(5)
    assert len(errors) == 1 and str(errors[0]) == "subscriber bug"


# -- graceful shutdown -----------------------------------------------------------------------


def test_close_waits_for_queued_and_running_work(gate: Gate) -> None:
    rec = Recorder()
    pool = WorkerPool(2)
    pool.run([Job(gate, args=(i,), id=i) for i in range(8)]).subscribe(
        rec.on_next, rec.on_error, rec.on_completed
    )
    assert gate.wait_running(2)
    closer = threading.Thread(target=pool.close)
    closer.start()
    closer.join(0.2)
    assert closer.is_alive()  # close(wait=True) waits for the run
    gate.open()
    closer.join(5)
    assert not closer.is_alive()
    assert rec.completed.is_set()
    assert sorted(r.value for r in rec.values) == list(range(8))
    pool.close()  # twice is fine


def test_close_cancel_pending_cancels_buffered_jobs(gate: Gate) -> None:
    subject: Subject[Job[Any]] = Subject()
    rec = Recorder()
    pool = WorkerPool(2)
    pool.run(subject).subscribe(rec.on_next, rec.on_error, rec.on_completed)
    for i in range(7):
        subject.on_next(Job(gate, args=(i,), id=i))
    assert gate.wait_running(2)
    pool.close(wait=False, cancel_pending=True)
    assert wait_until(lambda: len(rec.values) == 5)
    assert all(isinstance(r.error, Cancelled) for r in rec.values)
    assert not rec.completed.is_set()  # the running jobs finish first
    gate.open()
    assert rec.completed.wait(5)
    done = [r for r in rec.values if r.ok]
    assert sorted(r.id for r in done) == [0, 1]
    assert sorted(r.id for r in rec.values) == list(range(7))
    pool.close()


def test_keyboard_interrupt_while_closing_cancels_pending(gate: Gate) -> None:
    subject: Subject[Job[Any]] = Subject()
    rec = Recorder()
    pool = WorkerPool(1)
    pool.run(subject).subscribe(rec.on_next, rec.on_error, rec.on_completed)
    for i in range(4):
        subject.on_next(Job(gate, args=(i,), id=i))
    assert gate.wait_running(1)
    # A real SIGINT, as Ctrl-C sends (it interrupts a blocking wait).
    threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt):
        pool.close()  # the subject never completes: only Ctrl-C gets out
    assert wait_until(lambda: len(rec.values) == 3)
    assert all(isinstance(r.error, Cancelled) for r in rec.values)
    gate.open()
    assert rec.completed.wait(5)


def test_context_manager_exit_on_error_cancels_pending(gate: Gate) -> None:
    subject: Subject[Job[Any]] = Subject()
    rec = Recorder()
    with pytest.raises(RuntimeError, match="caller failed"), WorkerPool(1) as pool:
        pool.run(subject).subscribe(rec.on_next, rec.on_error, rec.on_completed)
        for i in range(3):
            subject.on_next(Job(gate, args=(i,), id=i))
        assert gate.wait_running(1)
        threading.Timer(0.05, gate.open).start()
        raise RuntimeError("caller failed")
    assert rec.completed.is_set()
    assert [isinstance(r.error, Cancelled) for r in sorted(rec.values, key=lambda r: r.id)] == [
        False,
        True,
        True,
    ]


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: Job(str, timeout=-1), ValueError, "timeout must be a number of seconds > 0"),
        (lambda: Job(str, timeout=float("nan")), ValueError, "timeout must be"),
        (lambda: Job(str, timeout=0), ValueError, "timeout must be"),
        (lambda: Job(str, timeout="1"), TypeError, "timeout must be a number"),
        (lambda: Job(str, retry=3), TypeError, "retry must be an rxpool.Retry"),
        (lambda: Retry(0), ValueError, "attempts must be >= 1"),
        (lambda: Retry(2.5), TypeError, "attempts must be an int"),
        (lambda: Retry(3, retry_on=5), TypeError, "retry_on must be"),
        (lambda: Retry(3, retry_on=(ValueError, 5)), TypeError, "retry_on must hold"),
        (lambda: Retry(3, backoff=-1), ValueError, "backoff must be >= 0"),
        (lambda: Retry(3, max_delay=float("nan")), ValueError, "max_delay must be >= 0"),
        (lambda: Retry(3, jitter=2), ValueError, "jitter must be a fraction"),
        (lambda: rops.run_jobs(2, timeout=-0.5), ValueError, "timeout must be"),
        (lambda: rops.run_jobs(2, retry="often"), TypeError, "retry must be an rxpool.Retry"),
        (lambda: rops.run_jobs(2, fail_fast="yes"), TypeError, "fail_fast must be a bool"),
        (lambda: rops.map_concurrent(str, 2, timeout=float("nan")), ValueError, "timeout"),
        (lambda: WorkerPool(1).run([], timeout=-1), ValueError, "timeout must be"),
    ],
)
def test_bad_input(call: Any, exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        call()


def test_close_bad_input() -> None:
    with WorkerPool(1) as pool, pytest.raises(TypeError, match="cancel_pending must be a bool"):
        pool.close(cancel_pending="yes")  # type: ignore[arg-type]


def test_cancel_while_a_slot_pulls_the_source_still_reports_that_job(gate: Gate) -> None:
    pulling = threading.Event()
    release = threading.Event()

    def source() -> Iterator[Job[Any]]:
        yield Job(gate, args=("a",), id="a")
        pulling.set()
        assert release.wait(10)  # the second slot is inside next(), outside the run's lock
        yield Job(gate, args=("b",), id="b")

    token = CancelToken()
    rec = Recorder()
    with WorkerPool(2) as pool:
        pool.run(source(), token=token).subscribe(rec.on_next, rec.on_error, rec.on_completed)
        assert gate.wait_running(1) and pulling.wait(5)
        token.cancel()
        assert wait_until(lambda: len(rec.values) == 1)  # "a" at once
        assert not rec.completed.is_set()  # "b" is being taken: the end waits for it
        release.set()
        assert rec.completed.wait(5)
        gate.open()
    assert sorted(r.id for r in rec.values) == ["a", "b"]
    assert all(isinstance(r.error, Cancelled) for r in rec.values)


# -- durations a timer cannot take, and policies that raise (#28) ------------------------------


@pytest.mark.parametrize("bad", [float("inf"), 1e10, 1e300])
@pytest.mark.parametrize(
    "call",
    [
        lambda bad: Job(str, timeout=bad),
        lambda bad: rops.run_jobs(2, timeout=bad),
        lambda bad: rops.map_concurrent(str, 2, timeout=bad),
        lambda bad: WorkerPool(1).run([], timeout=bad),
        lambda bad: CancelToken.with_timeout(bad),
        lambda bad: CancelToken.with_deadline(time.monotonic() + bad),
        lambda bad: Retry(3, backoff=bad),
        lambda bad: Retry(3, max_delay=bad),
    ],
    ids=[
        "job",
        "run_jobs",
        "map_concurrent",
        "pool.run",
        "with_timeout",
        "with_deadline",
        "backoff",
        "max_delay",
    ],
)
def test_a_duration_no_timer_can_wait_for_is_refused_at_the_call(call: Any, bad: float) -> None:
    with pytest.raises(ValueError, match="finite number of seconds"):
        call(bad)


def test_timeouts_still_fire_after_a_backoff_asked_for_an_endless_wait() -> None:
    """A bad delay fails its own job; the process-wide timer thread goes on serving."""

    def fail() -> None:
        raise ConnectionError("down")

    endless = Retry(3, backoff=lambda attempt: float("inf"))
    with WorkerPool(2) as pool:
        first = pool.run([Job(fail, id="f", retry=endless)]).pipe(ops.to_list()).run()
        assert [type(r.error) for r in first] == [ValueError]
        assert isinstance(first[0].error.__context__, ConnectionError)
        release = threading.Event()
        try:
            jobs = [Job(release.wait, args=(10,), id="t", timeout=0.05)]
            second = pool.run(jobs).pipe(ops.to_list()).run()
        finally:
            release.set()
    assert [type(r.error) for r in second] == [JobTimeout]


def test_a_token_wait_longer_than_a_timer_takes_waits_until_cancelled() -> None:
    token = CancelToken()
    threading.Timer(0.05, token.cancel).start()
    assert token.wait(1e12) is True
