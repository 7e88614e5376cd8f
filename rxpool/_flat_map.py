"""Bounded flat_map: reactivex's ``flat_map`` plus the bound of ``merge(max_concurrent=k)``.

Pure Rx, no threads of its own. With ``max_concurrent=None`` it is exactly
``ops.map(project) + ops.merge_all()`` (what ``ops.flat_map`` does). With a
bound it replays reactivex's ``merge(max_concurrent=k)`` message for message,
but queues waiting inner sequences in a deque: O(1) per queued item, where
reactivex pops from the front of a list (quadratic on long queues).
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any, TypeVar

import reactivex
from reactivex import Observable, abc
from reactivex import operators as ops
from reactivex.disposable import CompositeDisposable, SingleAssignmentDisposable

_T = TypeVar("_T")
_R = TypeVar("_R")


def _projection(
    mapper: Callable[[_T], Any], scheduler: abc.SchedulerBase | None
) -> Callable[[_T], Observable[Any]]:
    def project(value: _T) -> Observable[Any]:
        result = mapper(value)
        if isinstance(result, Observable):
            return result
        if isinstance(result, Future) or asyncio.isfuture(result):
            return reactivex.from_future(result)
        if isinstance(result, Iterable):
            return reactivex.from_iterable(result, scheduler=scheduler)
        raise TypeError(
            "flat_map's mapper must return an Observable, a Future or an iterable, "
            f"got {type(result).__name__}"
        )

    return project


def bounded_merge(source: Observable[Observable[_R]], max_concurrent: int) -> Observable[_R]:
    """``merge(max_concurrent=k)`` with a deque for the waiting inner sequences."""

    def subscribe(
        observer: abc.ObserverBase[_R], scheduler: abc.SchedulerBase | None = None
    ) -> abc.DisposableBase:
        lock = threading.RLock()
        group = CompositeDisposable()
        waiting: deque[Observable[_R]] = deque()
        pending: deque[Observable[_R]] = deque()
        active = 0
        is_stopped = False
        is_subscribing = False

        def on_next_synchronized(value: _R) -> None:
            with lock:
                observer.on_next(value)

        def on_error_synchronized(error: Exception) -> None:
            with lock:
                observer.on_error(error)

        def subscribe_next(inner: Observable[_R]) -> None:
            # Trampoline: an inner that completes synchronously while subscribing
            # must not recurse once per queued sequence.
            nonlocal is_subscribing
            pending.append(inner)
            if is_subscribing:
                return
            is_subscribing = True
            try:
                while pending and not group.is_disposed:
                    subscribe_inner(pending.popleft())
            finally:
                is_subscribing = False

        def subscribe_inner(inner: Observable[_R]) -> None:
            subscription = SingleAssignmentDisposable()
            group.add(subscription)

            def on_completed() -> None:
                nonlocal active
                with lock:
                    group.remove(subscription)
                    if waiting:
                        subscribe_next(waiting.popleft())
                    else:
                        active -= 1
                        if is_stopped and active == 0:
                            observer.on_completed()

            subscription.disposable = inner.subscribe(
                on_next_synchronized, on_error_synchronized, on_completed, scheduler=scheduler
            )

        def on_next(inner: Observable[_R]) -> None:
            nonlocal active
            if active < max_concurrent:
                active += 1
                subscribe_inner(inner)
            else:
                waiting.append(inner)

        def on_completed() -> None:
            nonlocal is_stopped
            is_stopped = True
            if active == 0:
                observer.on_completed()

        group.add(source.subscribe(on_next, observer.on_error, on_completed, scheduler=scheduler))
        return group

    return Observable(subscribe)


def flat_map(
    mapper: Callable[[_T], Observable[_R] | Future[_R] | Iterable[_R]],
    max_concurrent: int | None = None,
    scheduler: abc.SchedulerBase | None = None,
) -> Callable[[Observable[_T]], Observable[_R]]:
    """See `rxpool.operators.flat_map`."""
    if not callable(mapper):
        raise TypeError(f"mapper must be callable, got {type(mapper).__name__}")
    if max_concurrent is not None:
        if isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int):
            raise TypeError(
                f"max_concurrent must be an int or None, got {type(max_concurrent).__name__}"
            )
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be >= 1, got {max_concurrent}")
    if scheduler is not None and not isinstance(scheduler, abc.SchedulerBase):
        raise TypeError(
            f"scheduler must be a reactivex scheduler or None, got {type(scheduler).__name__}"
        )
    project = _projection(mapper, scheduler)
    bound = max_concurrent

    def operator(source: Observable[_T]) -> Observable[_R]:
        mapped: Observable[Observable[_R]] = source.pipe(ops.map(project))
        if bound is None:
            return mapped.pipe(ops.merge_all())
        return bounded_merge(mapped, bound)

    return operator
