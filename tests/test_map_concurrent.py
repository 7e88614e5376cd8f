"""map_concurrent on real threads and on virtual time."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import reactivex
from reactivex import operators as ops
from reactivex.scheduler import ThreadPoolScheduler
from reactivex.subject import Subject
from reactivex.testing import ReactiveTest, TestScheduler

from rxpool import CancelToken
from rxpool import operators as rops
from rxpool._dispatch import shared_threads

from ._helpers import Gate, wait_until


def double(x: int) -> int:
    return x * 2


def test_all_results_arrive() -> None:
    out = reactivex.range(2000).pipe(rops.map_concurrent(double, 8), ops.to_list()).run()
    assert sorted(out) == [2 * i for i in range(2000)]


def test_ordered_keeps_input_order_with_uneven_jobs() -> None:
    import time

    def uneven(x: int) -> int:
        if x % 7 == 0:
            time.sleep(0.002)
        return x

    source = reactivex.range(3000)
    out = source.pipe(rops.map_concurrent(uneven, 8, ordered=True), ops.to_list()).run()
    assert out == list(range(3000))


def test_concurrency_never_exceeds_bound(gate: Gate) -> None:
    done = threading.Event()
    out: list[object] = []
    reactivex.range(40).pipe(rops.map_concurrent(gate, 4)).subscribe(
        out.append, on_completed=done.set
    )
    assert gate.wait_running(4)
    assert not gate.wait_running(5, timeout=0.2)
    gate.open()
    assert done.wait(10)
    assert gate.high_water == 4
    assert len(out) == 40


def test_error_ends_stream_with_that_exception_and_stops_intake() -> None:
    started = []
    lock = threading.Lock()

    def fn(x: int) -> int:
        with lock:
            started.append(x)
        if x == 5:
            raise KeyError("five")
        return x

    errors: list[Exception] = []
    after_error: list[object] = []
    done = threading.Event()

    def on_error(e: Exception) -> None:
        errors.append(e)
        done.set()

    reactivex.range(100_000).pipe(rops.map_concurrent(fn, 2)).subscribe(
        lambda v: after_error.append(v) if errors else None, on_error
    )
    assert done.wait(10)
    assert len(errors) == 1 and isinstance(errors[0], KeyError)
    assert after_error == []
    assert len(started) < 100_000


def test_source_error_passes_through() -> None:
    source = reactivex.concat(reactivex.of(1, 2), reactivex.throw(ValueError("upstream")))
    with pytest.raises(ValueError, match="upstream"):
        source.pipe(rops.map_concurrent(double, 2), ops.to_list()).run()


def test_dispose_mid_run_stops_everything(gate: Gate) -> None:
    subject: Subject[int] = Subject()
    out: list[object] = []
    sub = subject.pipe(rops.map_concurrent(gate, 3)).subscribe(out.append)
    for i in range(10):
        subject.on_next(i)
    assert gate.wait_running(3)
    sub.dispose()
    gate.open()
    for i in range(10, 20):
        subject.on_next(i)

    # Every thread the run used is released once the parked jobs return: idle
    # in the shared cache, which lets idle threads go at once when trimmed.
    def released() -> bool:
        shared_threads().trim()
        return not [t for t in threading.enumerate() if t.name.startswith("rxpool-")]

    assert wait_until(released)
    assert out == []
    assert gate.entered == 3


def test_token_parameter_gets_the_run_token(gate: Gate) -> None:
    tokens: list[CancelToken] = []
    stopped = threading.Event()

    def cooperative(x: int, token: CancelToken) -> int:
        tokens.append(token)
        token.wait(10)
        stopped.set()
        return x

    sub = reactivex.of(1).pipe(rops.map_concurrent(cooperative, 1)).subscribe()
    assert wait_until(lambda: bool(tokens))
    sub.dispose()
    assert stopped.wait(5)
    assert tokens[0].cancelled


def test_hot_source_faster_than_workers_blocks_producer() -> None:
    produced = 0

    def gen() -> Iterator[int]:
        nonlocal produced
        for i in range(20_000):
            produced += 1
            yield i

    release = threading.Event()

    def slow(x: int) -> int:
        release.wait(10)
        return x

    done = threading.Event()
    out: list[int] = []
    source = reactivex.from_iterable(gen())
    thread = threading.Thread(
        target=lambda: source.pipe(rops.map_concurrent(slow, 2)).subscribe(
            out.append, on_completed=done.set
        )
    )
    thread.start()
    # The producer is parked on the bounded buffer, far short of 20,000.
    assert wait_until(lambda: produced > 100)
    assert not done.wait(0.2)
    assert produced < 5000
    release.set()
    assert done.wait(30)
    thread.join(5)
    assert len(out) == 20_000


def test_explicit_thread_pool_scheduler() -> None:
    scheduler = ThreadPoolScheduler(4)
    try:
        out = (
            reactivex.range(500)
            .pipe(rops.map_concurrent(double, 4, scheduler=scheduler), ops.to_list())
            .run()
        )
        assert sorted(out) == [2 * i for i in range(500)]
    finally:
        scheduler.executor.shutdown(wait=True)


def test_virtual_time_is_deterministic() -> None:
    scheduler = TestScheduler()
    xs = scheduler.create_hot_observable(
        ReactiveTest.on_next(210, 1),
        ReactiveTest.on_next(220, 2),
        ReactiveTest.on_next(230, 3),
        ReactiveTest.on_completed(240),
    )
    results = scheduler.start(lambda: xs.pipe(rops.map_concurrent(double, 2)))
    assert results.messages == [
        ReactiveTest.on_next(210, 2),
        ReactiveTest.on_next(220, 4),
        ReactiveTest.on_next(230, 6),
        ReactiveTest.on_completed(240),
    ]
    assert xs.subscriptions == [ReactiveTest.subscribe(200, 240)]


def test_virtual_time_error_and_dispose() -> None:
    scheduler = TestScheduler()

    def fn(x: int) -> int:
        if x == 2:
            raise ValueError("two")
        return x

    xs = scheduler.create_hot_observable(
        ReactiveTest.on_next(210, 1), ReactiveTest.on_next(220, 2), ReactiveTest.on_next(230, 3)
    )
    results = scheduler.start(lambda: xs.pipe(rops.map_concurrent(fn, 2, scheduler=scheduler)))
    assert [m.time for m in results.messages] == [210, 220]
    assert results.messages[0] == ReactiveTest.on_next(210, 1)
    assert results.messages[1].value.kind == "E"
    assert xs.subscriptions == [ReactiveTest.subscribe(200, 220)]


def test_each_subscription_is_an_independent_run() -> None:
    mapped = reactivex.range(100).pipe(rops.map_concurrent(double, 4, ordered=True), ops.to_list())
    assert mapped.run() == mapped.run() == [2 * i for i in range(100)]


@pytest.mark.parametrize(
    ("args", "kwargs", "exc", "match"),
    [
        ((3, 2), {}, TypeError, "fn must be callable"),
        ((double, 0), {}, ValueError, "max_concurrent must be >= 1, got 0"),
        ((double, -1), {}, ValueError, "max_concurrent must be >= 1, got -1"),
        ((double, "2"), {}, TypeError, "max_concurrent must be an int"),
        ((double, True), {}, TypeError, "max_concurrent must be an int"),
        ((double, 2), {"ordered": "yes"}, TypeError, "ordered must be a bool"),
        ((double, 2), {"scheduler": 5}, TypeError, "scheduler must be a reactivex scheduler"),
    ],
)
def test_bad_input(
    args: tuple[Any, ...], kwargs: dict[str, Any], exc: type[Exception], match: str
) -> None:
    with pytest.raises(exc, match=match):
        rops.map_concurrent(*args, **kwargs)


def test_back_to_back_runs_reuse_threads_and_idle_ones_exit() -> None:
    def thread_name(_: int) -> str:
        return threading.current_thread().name

    def names() -> set[str]:
        out = reactivex.range(64).pipe(rops.map_concurrent(thread_name, 4), ops.to_list()).run()
        return set(out)

    first = names()
    second = names()
    assert len(first) <= 4
    assert first & second  # warm threads from the cache serve the next run
    # With nothing to do, the cache's threads exit by themselves after their idle timeout.
    assert wait_until(lambda: not any(t.name in first for t in threading.enumerate()), timeout=5.0)


@pytest.mark.parametrize("ordered", [False, True])
def test_finished_results_do_not_wait_for_a_slow_batch_mate(ordered: bool) -> None:
    # 300 fast items grow the batches; item 300 blocks until released. The
    # results of the items before it must arrive while it still runs, not
    # when its batch ends.
    release = threading.Event()
    out: list[int] = []

    def work(x: int) -> int:
        if x == 300:
            assert release.wait(10)
        return x

    done = threading.Event()
    reactivex.range(400).pipe(rops.map_concurrent(work, 1, ordered=ordered)).subscribe(
        out.append, on_completed=done.set
    )
    try:
        assert wait_until(lambda: len(out) >= 300, timeout=5)
        assert sorted(out[:300]) == list(range(300))
    finally:
        release.set()
    assert done.wait(5)
    assert sorted(out) == list(range(400))


def test_pool_results_do_not_wait_for_a_slow_batch_mate() -> None:
    from rxpool import Job, WorkerPool

    release = threading.Event()

    def work(x: int) -> int:
        if x == 200:
            assert release.wait(10)
        return x

    seen: list[int] = []
    done = threading.Event()
    with WorkerPool(1) as pool:
        pool.run(Job(work, args=(i,)) for i in range(300)).subscribe(
            lambda r: seen.append(r.value), on_completed=done.set
        )
        try:
            assert wait_until(lambda: len(seen) >= 200, timeout=5)
        finally:
            release.set()
        assert done.wait(5)
    assert sorted(seen) == list(range(300))


@pytest.mark.parametrize("fail_at", [0, 1, 250, 499])
def test_ordered_error_comes_after_every_earlier_item(fail_at: int) -> None:
    def work(x: int) -> int:
        if x == fail_at:
            raise KeyError(x)
        return x

    out: list[int] = []
    errors: list[Exception] = []
    ended = threading.Event()
    reactivex.range(500).pipe(rops.map_concurrent(work, 4, ordered=True)).subscribe(
        out.append, lambda e: (errors.append(e), ended.set()), ended.set
    )
    assert ended.wait(10)
    assert out == list(range(fail_at))  # as ops.map would: everything before it, in order
    assert len(errors) == 1 and isinstance(errors[0], KeyError)
