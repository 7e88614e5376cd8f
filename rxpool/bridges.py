"""Bridges from an Observable to plain and async code: bounded iterators, await helpers."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterator
from types import TracebackType
from typing import Any, Generic, TypeVar

from reactivex import Observable, abc

from . import _aio
from ._checks import check_count

__all__ = ["AsyncStream", "aiter", "gather", "iterate", "last"]

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
    _check(source, maxsize)
    return _iterate(source, maxsize)


_DONE = object()


def _check(source: object, maxsize: object) -> None:
    """The arguments `iterate` and `aiter` share, checked at the call."""
    if not isinstance(source, Observable):
        raise TypeError(f"source must be a reactivex Observable, got {type(source).__name__}")
    check_count("maxsize", maxsize)


def _iterate(source: Observable[_T], maxsize: int) -> Iterator[_T]:
    cond = threading.Condition(threading.Lock())
    queue: deque[_T] = deque()
    terminal: list[object] = []  # _DONE, or the error
    closed = False
    subscribing = False

    def on_next(value: _T) -> None:
        with cond:
            # While the consumer is inside subscribe() (a source that pushes
            # synchronously), it cannot consume: waiting for it would deadlock.
            while len(queue) >= maxsize and not closed and not subscribing:
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

    subscribing = True
    try:
        subscription = source.subscribe(on_next, on_error, on_completed)
    finally:
        with cond:
            subscribing = False
    try:
        while True:
            with cond:
                while not queue and not terminal:
                    # A timeout: Ctrl-C delivered to a worker thread still
                    # reaches this (main) thread within 50 ms.
                    cond.wait(0.05)
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


def aiter(source: Observable[_T], *, maxsize: int = 1024) -> AsyncStream[_T]:
    """Iterate over an Observable from a coroutine: ``async for r in aiter(pool.run(jobs))``.

    Subscribes at the first ``__anext__`` (on the running loop), and every
    value is handed to the loop thread; an ``on_error`` is raised at the
    ``async for``.

    **Ordering**: the source's order. **Threading**: a run on worker threads
    hands values over through a queue of ``maxsize``; when it is full the
    worker waits, so a slow consumer slows the intake instead of growing
    memory. A run in loop mode (``backend="asyncio"``, ``async def`` jobs)
    calls ``on_next`` on the loop thread, which must not block: its slot
    pauses before taking another job until the queue has room again.
    **Cancellation**: leaving the loop early (``break``, an exception, the
    task being cancelled) disposes the subscription, which cancels the run's
    token and its coroutine jobs' tasks. ``break`` relies on the iterator
    being released (immediate in CPython); ``async with aiter(...) as it``
    or `AsyncStream.aclose` make it explicit.

    Args:
        source: Any Observable, e.g. `WorkerPool.run` or a piped operator.
        maxsize: Values buffered between the source and the loop.

    Raises:
        TypeError: ``source`` is not an Observable, or ``maxsize`` not an int.
        ValueError: ``maxsize`` < 1.
    """
    _check(source, maxsize)
    return AsyncStream(source, maxsize)


async def gather(source: Observable[_T]) -> list[_T]:
    """Every value of ``source``, in its order, once it completes (``await gather(run)``).

    Raises the source's error; cancelling the awaiting task disposes the run.

    Raises:
        TypeError: ``source`` is not an Observable.
    """
    stream = aiter(source, maxsize=sys.maxsize)
    async with stream:
        return [value async for value in stream]


async def last(source: Observable[_T]) -> _T:
    """The last value of ``source`` once it completes (what ``await observable`` means).

    Unlike reactivex's own ``await``, it is safe when values come from worker
    threads, and cancelling the awaiting task disposes the run.

    Raises:
        TypeError: ``source`` is not an Observable.
        ValueError: ``source`` completed without a value.
    """
    stream = aiter(source, maxsize=1)
    found = False
    value: Any = None
    async with stream:
        async for value in stream:  # noqa: B007 - the last one is kept
            found = True
    if not found:
        raise ValueError("the observable completed without a value")
    return value  # type: ignore[no-any-return]


class _Channel(Generic[_T]):
    """The hand-off between a subscription and the loop: what the run's observer holds.

    `AsyncStream` wraps it so that the run (which references this through
    its observer) never references the stream: dropping the stream (``break``)
    frees it at once, and its finaliser disposes the run.
    """

    def __init__(self, source: Observable[_T], maxsize: int) -> None:
        self._source = source
        self._maxsize = maxsize
        self._lock = threading.Lock()
        self._space = threading.Condition(self._lock)  # worker threads wait for room
        self._queue: deque[_T] = deque()
        self._terminal: list[object] = []  # _DONE, or the error
        self._closed = False
        self._subscribing = False
        self._subscription: abc.DisposableBase | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._waiter: asyncio.Future[None] | None = None  # the consumer waits for a value
        self._room: asyncio.Future[None] | None = None  # a loop-mode slot waits for room

    # -- producer side (any thread) ---------------------------------------------------------

    def _on_next(self, value: _T) -> None:
        if threading.get_ident() == self._loop_thread:
            with self._lock:
                if self._closed:
                    return
                self._queue.append(value)
                full = len(self._queue) >= self._maxsize
            self._wake()
            if full:
                assert self._loop is not None
                if self._room is None or self._room.done():
                    self._room = self._loop.create_future()
                _aio.request_pause(self._room)
            return
        with self._lock:
            # While the loop thread is inside subscribe() (a source that pushes
            # synchronously), it cannot consume: waiting for it would deadlock.
            while len(self._queue) >= self._maxsize and not self._closed and not self._subscribing:
                self._space.wait()
            if self._closed:
                return
            self._queue.append(value)
            waiting = self._waiter is not None
        if waiting:
            self._wake_threadsafe()

    def _on_error(self, error: Exception) -> None:
        self._end(error)

    def _on_completed(self) -> None:
        self._end(_DONE)

    def _end(self, terminal: object) -> None:
        with self._lock:
            self._terminal.append(terminal)
        if threading.get_ident() == self._loop_thread:
            self._wake()
        else:
            self._wake_threadsafe()

    def _wake_threadsafe(self) -> None:
        assert self._loop is not None
        # RuntimeError: the loop closed, and nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # -- consumer side (the loop thread) ----------------------------------------------------

    async def anext(self) -> _T:
        if self._loop is None:
            self._start()
        while True:
            with self._lock:
                if self._queue:
                    value = self._queue.popleft()
                    if len(self._queue) + 1 >= self._maxsize:
                        self._space.notify()  # a worker may wait for this room
                    self._free_room()
                    return value
                if self._closed:
                    raise StopAsyncIteration
                if self._terminal:
                    end = self._terminal[0]
                    self._close_locked()
                    if isinstance(end, BaseException):
                        raise end
                    raise StopAsyncIteration
                assert self._loop is not None
                waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            except BaseException:  # the task was cancelled: the run goes with it
                self.close()
                raise

    def _start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._subscribing = True
        try:
            self._subscription = self._source.subscribe(
                self._on_next, self._on_error, self._on_completed
            )
        except BaseException:
            self.close()
            raise
        finally:
            with self._lock:
                self._subscribing = False
        if self._closed and self._subscription is not None:
            self._subscription.dispose()

    def _free_room(self) -> None:
        room = self._room
        if room is not None and len(self._queue) < self._maxsize:
            self._room = None
            if not room.done():
                room.set_result(None)

    def _close_locked(self) -> None:
        self._closed = True
        self._queue.clear()
        self._space.notify_all()  # release workers waiting for room; they drop their value

    def close(self) -> None:
        """Stop iterating: dispose the subscription (the run is cancelled). Safe twice."""
        with self._lock:
            self._close_locked()
            subscription, self._subscription = self._subscription, None
        room, self._room = self._room, None
        if room is not None and not room.done():
            room.set_result(None)
        if subscription is not None:
            subscription.dispose()


class AsyncStream(AsyncIterator[_T]):
    """The async iterator `aiter` returns; also an async context manager that closes it."""

    __slots__ = ("_channel",)

    def __init__(self, source: Observable[_T], maxsize: int) -> None:
        self._channel = _Channel(source, maxsize)

    def __aiter__(self) -> AsyncStream[_T]:
        return self

    async def __anext__(self) -> _T:
        return await self._channel.anext()

    def close(self) -> None:
        """Stop iterating: dispose the subscription (the run is cancelled). Safe twice."""
        self._channel.close()

    async def aclose(self) -> None:
        """`close`, for ``async with`` and `contextlib.aclosing`."""
        self._channel.close()

    async def __aenter__(self) -> AsyncStream[_T]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._channel.close()

    def __del__(self) -> None:
        # ``break`` out of ``async for`` drops the stream: the run must not go on.
        self._channel.close()
