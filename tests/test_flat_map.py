"""rxpool.operators.flat_map on virtual time: message for message what reactivex produces."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import reactivex
from hypothesis import given, settings
from hypothesis import strategies as st
from reactivex import Observable
from reactivex import operators as ops
from reactivex.testing import ReactiveTest, TestScheduler
from reactivex.testing.coldobservable import ColdObservable

from rxpool import operators as rops

on_next = ReactiveTest.on_next
on_completed = ReactiveTest.on_completed
on_error = ReactiveTest.on_error
subscribe = ReactiveTest.subscribe

BOOM = RuntimeError("boom")


@dataclass(frozen=True)
class Inner:
    """A cold inner sequence: values at offsets, then completion or error."""

    values: tuple[tuple[int, int], ...]
    end: int
    fails: bool


@dataclass(frozen=True)
class Scenario:
    items: tuple[tuple[int, Inner], ...]  # outer on_next times (hot), strictly increasing
    outer_end: int
    outer_fails: bool
    max_concurrent: int | None
    disposed: int


def _run(
    scenario: Scenario, make: Callable[[Callable[[Inner], Observable[int]], int | None], Any]
) -> tuple[list[Any], list[Any], list[list[Any]]]:
    scheduler = TestScheduler()
    inners: list[ColdObservable[int]] = []

    def mapper(spec: Inner) -> Observable[int]:
        messages = [on_next(t, v) for t, v in spec.values]
        messages.append(on_error(spec.end, BOOM) if spec.fails else on_completed(spec.end))
        cold = scheduler.create_cold_observable(messages)
        inners.append(cold)
        return cold

    outer_messages = [on_next(t, spec) for t, spec in scenario.items]
    outer_messages.append(
        on_error(scenario.outer_end, BOOM)
        if scenario.outer_fails
        else on_completed(scenario.outer_end)
    )
    xs = scheduler.create_hot_observable(outer_messages)
    operator = make(mapper, scenario.max_concurrent)
    results = scheduler.start(lambda: xs.pipe(operator), disposed=scenario.disposed)
    return (
        results.messages,
        xs.subscriptions,
        [inner.subscriptions for inner in inners],
    )


def reference(mapper: Callable[[Inner], Observable[int]], k: int | None) -> Any:
    if k is None:
        return ops.flat_map(mapper)
    return lambda source: source.pipe(ops.map(mapper), ops.merge(max_concurrent=k))


def ours(mapper: Callable[[Inner], Observable[int]], k: int | None) -> Any:
    return rops.flat_map(mapper, max_concurrent=k)


inner_strategy = st.builds(
    lambda offsets, end_gap, fails: Inner(
        tuple((t, i) for i, t in enumerate(sorted(set(offsets)))),
        (max(offsets) if offsets else 0) + end_gap,
        fails,
    ),
    st.lists(st.integers(1, 60), max_size=4),
    st.integers(1, 30),
    st.booleans(),
)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    times = sorted(set(draw(st.lists(st.integers(201, 400), max_size=8))))
    items = tuple((t, draw(inner_strategy)) for t in times)
    outer_end = (times[-1] if times else 200) + draw(st.integers(1, 100))
    return Scenario(
        items=items,
        outer_end=outer_end,
        outer_fails=draw(st.booleans()),
        max_concurrent=draw(st.sampled_from([None, 1, 2, 3])),
        disposed=draw(st.integers(250, 700)),
    )


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_same_messages_and_subscriptions_as_reactivex(scenario: Scenario) -> None:
    assert _run(scenario, ours) == _run(scenario, reference)


def _simple(k: int | None, disposed: int = 1000) -> Scenario:
    a = Inner(((10, 1), (20, 2)), 30, False)
    b = Inner(((5, 3),), 40, False)
    return Scenario(((210, a), (220, b), (230, a)), 300, False, k, disposed)


def test_bound_one_subscribes_inners_one_after_another() -> None:
    messages, outer, inners = _run(_simple(1), ours)
    assert messages == [
        on_next(220, 1),
        on_next(230, 2),
        on_next(245, 3),
        on_next(290, 1),
        on_next(300, 2),
        on_completed(310),
    ]
    assert outer == [subscribe(200, 300)]
    assert inners == [[subscribe(210, 240)], [subscribe(240, 280)], [subscribe(280, 310)]]


def test_unbounded_interleaves() -> None:
    messages, _, inners = _run(_simple(None), ours)
    assert [m.time for m in messages] == [220, 225, 230, 240, 250, 300]
    assert inners == [[subscribe(210, 240)], [subscribe(220, 260)], [subscribe(230, 260)]]


def test_dispose_unsubscribes_running_and_drops_waiting() -> None:
    messages, outer, inners = _run(_simple(1, disposed=235), ours)
    assert messages == [on_next(220, 1), on_next(230, 2)]
    assert outer == [subscribe(200, 235)]
    assert inners == [[subscribe(210, 235)], [], []]  # mapped, never subscribed


def test_inner_error_ends_the_stream() -> None:
    bad = Inner(((5, 9),), 10, True)
    good = Inner(((50, 1),), 60, False)
    messages, _, inners = _run(Scenario(((210, good), (220, bad)), 400, False, 2, 1000), ours)
    assert messages == [on_next(225, 9), on_error(230, BOOM)]
    assert inners == [[subscribe(210, 230)], [subscribe(220, 230)]]


def test_mapper_may_return_iterables_and_futures() -> None:
    from concurrent.futures import Future

    def mapper(x: int) -> Any:
        if x % 2:
            return [x, x]
        future: Future[int] = Future()
        future.set_result(-x)
        return future

    out = reactivex.from_iterable([1, 2, 3]).pipe(rops.flat_map(mapper, 2), ops.to_list()).run()
    assert sorted(out) == [-2, 1, 1, 3, 3]


def test_mapper_exception_reaches_on_error() -> None:
    def mapper(x: int) -> Observable[int]:
        raise ValueError("bad item")

    with pytest.raises(ValueError, match="bad item"):
        reactivex.of(1).pipe(rops.flat_map(mapper, 1)).run()


def test_long_queue_drains_in_order() -> None:
    # 50,000 inner sequences queue behind a bound of 1 (a deque, not list.pop(0)),
    # then drain through the trampoline without recursion when the head completes.
    from reactivex.scheduler import ImmediateScheduler
    from reactivex.subject import Subject

    n = 50_000
    head: Subject[int] = Subject()
    immediate = ImmediateScheduler()
    out: list[int] = []
    done: list[bool] = []

    def mapper(x: int) -> Observable[int]:
        return head if x == 0 else reactivex.just(x, immediate)

    reactivex.range(n).pipe(rops.flat_map(mapper, 1)).subscribe(
        out.append, on_completed=lambda: done.append(True)
    )
    assert out == [] and not done
    head.on_completed()
    assert out == list(range(1, n))
    assert done == [True]


@pytest.mark.parametrize(
    ("args", "exc", "match"),
    [
        ((3,), TypeError, "mapper must be callable"),
        ((reactivex.just, 0), ValueError, "max_concurrent must be >= 1, got 0"),
        ((reactivex.just, -1), ValueError, "max_concurrent must be >= 1, got -1"),
        ((reactivex.just, 1.5), TypeError, "max_concurrent must be an int"),
        ((reactivex.just, 1, "sched"), TypeError, "scheduler must be a reactivex scheduler"),
    ],
)
def test_bad_input(args: tuple[Any, ...], exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        rops.flat_map(*args)
