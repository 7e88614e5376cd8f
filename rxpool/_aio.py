"""Event-loop plumbing: slots as tasks on a loop, private loop threads, the pause hand-shake.

A run in *loop mode* runs its slot loops as asyncio tasks on one event loop:
coroutine jobs are awaited there (no thread), blocking jobs go to a thread and
their outcomes come back to the loop thread, and every observer call happens
on the loop thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final, Protocol, TypeVar

from ._exceptions import job_error
from ._token import CancelToken

_log: Final = logging.getLogger("rxpool")
_T = TypeVar("_T")
_names = itertools.count(1)


class Offload(Protocol):
    """Where loop-mode runs send blocking jobs: anything with ``spawn(task)``."""

    def spawn(self, task: Callable[[], None], count: int = 1) -> None: ...


class LoopSlots:
    """Runs slot loops as tasks on ``loop``; blocking calls go to ``threads``.

    `spawn` may be called from any thread. `cancel` cancels the slot tasks
    still alive (the run was stopped): a slot awaiting a coroutine job cancels
    that job; one awaiting a blocking job stops waiting for it.
    """

    is_async = True

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        threads: Offload,
        owned: LoopThread | None = None,
    ) -> None:
        self.loop = loop
        self.threads = threads
        self._owned = owned  # a private loop thread, stopped once every slot is done
        self._tasks: set[asyncio.Task[None]] = set()
        self._cancelled = False
        self._lock = threading.Lock()

    def spawn(self, task: Callable[[], Coroutine[Any, Any, None]], count: int = 1) -> None:
        if running_loop() is self.loop:
            for _ in range(count):
                self._start(task)
        else:
            # Raises RuntimeError once the loop is closed: the run then fails.
            self.loop.call_soon_threadsafe(self._start_many, task, count)

    def _start_many(self, task: Callable[[], Coroutine[Any, Any, None]], count: int) -> None:
        for _ in range(count):
            self._start(task)

    def _start(self, task: Callable[[], Coroutine[Any, Any, None]]) -> None:
        slot = self.loop.create_task(task())
        self._tasks.add(slot)
        slot.add_done_callback(self._done)
        if self._cancelled:
            slot.cancel()

    def _done(self, slot: asyncio.Task[None]) -> None:
        self._tasks.discard(slot)
        if self._cancelled and not self._tasks and self._owned is not None:
            self._owned.stop()

    def cancel(self) -> None:
        """Cancel the live slot tasks (from any thread); a private loop stops after them."""
        with self._lock:
            if self._cancelled:
                return
            self._cancelled = True
        # RuntimeError: the loop is closed, and nothing of ours runs on it.
        with contextlib.suppress(RuntimeError):
            if running_loop() is self.loop:
                self._cancel_all()
            else:
                self.loop.call_soon_threadsafe(self._cancel_all)

    def _cancel_all(self) -> None:
        for slot in list(self._tasks):
            slot.cancel()
        if not self._tasks and self._owned is not None:
            self._owned.stop()

    def offload(self, call: Callable[[], _T]) -> asyncio.Future[_T]:
        """Run a blocking ``call`` on a thread; its outcome comes back on the loop thread."""
        loop = self.loop
        future: asyncio.Future[_T] = loop.create_future()

        def settle(value: Any, error: BaseException | None) -> None:
            if future.done():
                return
            if error is None:
                future.set_result(value)
            else:
                future.set_exception(error)

        def work() -> None:
            value: Any = None
            error: BaseException | None = None
            try:
                value = call()
            except BaseException as raised:  # reported as a failure, never lost
                error = job_error(raised)
            # RuntimeError: the loop closed while the job ran, and nobody waits.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, value, error)

        self.threads.spawn(work)
        return future


class LoopThread:
    """A private event loop on a thread of its own, for runs that need one and have none."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._main, name=f"rxpool-loop-{next(_names)}", daemon=True
        )
        self._thread.start()

    def _main(self) -> None:
        loop = self.loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
            # Anything a job left behind (tasks it spawned) is cancelled, not leaked.
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError):  # already closed
            self.loop.call_soon_threadsafe(self.loop.stop)


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running on this thread, if any."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def run_coroutine(
    coro: Coroutine[Any, Any, _T],
    token: CancelToken,
    loop: asyncio.AbstractEventLoop | None,
) -> _T:
    """Run a coroutine job from a worker thread and wait for it; ``token`` cancels it.

    It runs on ``loop`` (the loop the run was subscribed from, so it may use
    that loop's sessions and connections) or, without one, on a loop of its own.
    """
    if loop is not None and loop.is_running():
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        link = token.on_cancel(future.cancel)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise token.new_error() from None
        finally:
            link.dispose()
    return asyncio.run(cancellable(coro, token))


async def cancellable(coro: Awaitable[_T], token: CancelToken) -> _T:
    """Await ``coro`` as a task that ``token`` cancels (from any thread)."""
    task = asyncio.ensure_future(coro)
    loop = asyncio.get_running_loop()

    def cancel() -> None:
        # RuntimeError: the job already finished and its loop closed.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(task.cancel)

    link = token.on_cancel(cancel)
    try:
        return await task
    except asyncio.CancelledError:
        if token.cancelled:
            raise token.new_error() from None
        raise
    finally:
        link.dispose()


# -- the pause hand-shake -------------------------------------------------------------------
# An observer called on the loop thread cannot block to push back on a run, so
# it asks for a pause instead: `request_pause(awaitable)` during ``on_next``;
# the loop-mode slot that delivered the value awaits it before it takes another
# job. On worker threads, observers simply block (see `rxpool.aiter`).

_local = threading.local()


def request_pause(until: Awaitable[object]) -> None:
    """Ask the slot delivering the current value to wait for ``until`` (loop thread only)."""
    _local.pause = until


def clear_pause() -> None:
    """Forget a pause nobody took (asked for by a value that no loop-mode slot delivered)."""
    _local.pause = None


def take_pause() -> Awaitable[object] | None:
    """The pause requested by the last delivery on this thread, once."""
    pause: Awaitable[object] | None = getattr(_local, "pause", None)
    if pause is not None:
        _local.pause = None
    return pause
