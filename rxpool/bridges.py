"""Bridges from an Observable to plain code: a blocking, bounded iterator."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from typing import TypeVar

from reactivex import Observable

from ._checks import check_count

__all__ = ["iterate"]

_T = TypeVar("_T")


def iterate(source: Observable[_T], *, maxsize: int = 1024) -> Iterator[_T]:
    """Iterate over an Observable from plain code: ``for result in iterate(pool.run(jobs))``.

    The iterator subscribes when iteration starts and blocks in ``next()``
    until the next value arrives; an ``on_error`` is raised there.

    **Ordering**: the source's order. **Threading**: values are handed from the
    source's threads to the iterating thread through a queue of ``maxsize``:
    when it is full, the source's thread waits (a slow consumer slows the
    workers instead of growing memory). **Cancellation**: leaving the loop
    early (``break``, an exception, ``KeyboardInterrupt`` while it waits, or
    the generator being closed) disposes the subscription, which cancels the
    run's token and starts no more jobs. **Cost**: one lock round trip per
    value, and at most ``maxsize`` values held.

    Args:
        source: Any Observable, e.g. `WorkerPool.run` or a piped operator.
        maxsize: Values buffered between the source and the loop.

    Raises:
        TypeError: ``source`` is not an Observable, or ``maxsize`` not an int.
        ValueError: ``maxsize`` < 1.
    """
    if not isinstance(source, Observable):
        raise TypeError(f"source must be a reactivex Observable, got {type(source).__name__}")
    check_count("maxsize", maxsize)
    return _iterate(source, maxsize)


_DONE = object()


def _iterate(source: Observable[_T], maxsize: int) -> Iterator[_T]:
    cond = threading.Condition(threading.Lock())
    queue: deque[_T] = deque()
    terminal: list[object] = []  # _DONE, or the error
    closed = False

    def on_next(value: _T) -> None:
        with cond:
            while len(queue) >= maxsize and not closed:
                cond.wait()
            if closed:
                return
            queue.append(value)
            cond.notify_all()

    def on_error(error: Exception) -> None:
        with cond:
            terminal.append(error)
            cond.notify_all()

    def on_completed() -> None:
        with cond:
            terminal.append(_DONE)
            cond.notify_all()

    subscription = source.subscribe(on_next, on_error, on_completed)
    try:
        while True:
            with cond:
                while not queue and not terminal:
                    cond.wait()
                if queue:
                    value = queue.popleft()
                    cond.notify_all()  # room for a waiting producer
                else:
                    end = terminal[0]
                    if isinstance(end, BaseException):
                        raise end
                    return
            yield value
    finally:
        with cond:
            closed = True  # release a producer waiting for room before disposing
            cond.notify_all()
        subscription.dispose()
