"""`DaskBackend`: jobs go to a Dask cluster; ``distributed`` is imported when one is made."""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections import deque
from collections.abc import Sequence
from typing import Any, Final

from .._checks import check_count
from .._exceptions import Cancelled, WorkerCrashed
from .._remote import (
    Call,
    Outcome,
    failed_outcomes,
    load_outcomes,
    run_calls_sent,
    run_one,
)
from .._token import CancelToken
from ._protocol import Lane, merged, not_sendable, run_alone

__all__ = ["DaskBackend"]


class DaskBackend:
    """Jobs go to a Dask cluster through ``client.submit(..., pure=False)``.

    A slot submits a chunk as one task and waits for a done-callback; the
    run's bound keeps at most N tasks in flight on the cluster. A slot's next
    chunk waits in the client and the done-callback of the task before it
    submits it (see `Lane`), so the cluster does not wait for the slot thread. Dispose
    cancels the queued and pending futures. A worker lost under a task (Dask
    gives up on it with ``KilledWorker``) gives a `WorkerCrashed` result, or
    retries with a `Retry` policy; a chunk Dask gave up on runs again one
    call a task, so only a call that kills its worker fails. Functions are
    sent with cloudpickle, so lambdas work.

    Args:
        client: A ``distributed.Client`` (a ``LocalCluster``'s or a deployed one's).
        chunk_size: Calls per task; None sizes them from the last round trip.

    Raises:
        TypeError: ``client`` is not a ``distributed.Client``.
        ValueError: ``chunk_size`` < 1.
    """

    def __init__(self, client: Any, *, chunk_size: int | None = None) -> None:
        try:
            from distributed import Client
        except ImportError as error:  # pragma: no cover - the extra is missing
            raise ImportError("DaskBackend needs the dask extra: pip install rxpool[dask]") from (
                error
            )
        if not isinstance(client, Client):
            raise TypeError(f"client must be a distributed.Client, got {type(client).__name__}")
        self.client = client
        self.chunk_size = None if chunk_size is None else check_count("chunk_size", chunk_size)

    def open_lane(self, token: CancelToken) -> Lane:
        """A `Lane` for one slot; ``token`` cancels every chunk sent on it."""
        return _DaskLane(self.client, token)

    def run_chunk(self, calls: Sequence[Call], token: CancelToken) -> list[Outcome]:
        return run_alone(_DaskLane(self.client, token), calls)

    def close(self) -> None:
        """Nothing to release: the client belongs to the caller."""

    def __repr__(self) -> str:
        return f"DaskBackend({self.client!r}, chunk_size={self.chunk_size})"


# How often a slot waiting for a Dask task looks at the client: a client that
# closed because it lost its scheduler leaves its futures pending for ever.
_CLIENT_CHECK_EVERY: Final = 0.5


class _DaskTask:
    """A chunk on a `_DaskLane`: its future once submitted, set ``done`` when it is over."""

    __slots__ = ("calls", "done", "error", "future", "single", "size", "unsent")

    def __init__(self, calls: Sequence[Call]) -> None:
        self.calls = list(calls)  # the calls to submit
        self.size = len(self.calls)
        # One plain call goes with its arguments (as a hand-written client.submit
        # sends it), run by `run_one`; a chunk goes as one task that runs its
        # calls (`run_calls_sent`). Either returns its outcomes pickled.
        self.single = self.size == 1 and not self.calls[0][2]
        self.unsent: dict[int, Outcome] = {}  # by index: calls that could not be pickled
        self.future: Any = None
        self.error: Exception | None = None  # the submit itself failed
        self.done = threading.Event()

    def drop_unsendable(self) -> bool:
        """After a failed submit: take out the calls that cannot be pickled; any?"""
        import cloudpickle

        kept: list[Call] = []
        for index, call in enumerate(self.calls):
            try:
                cloudpickle.dumps(call)
                kept.append(call)
            except Exception as error:
                self.unsent[index] = (False, not_sendable(call, error, "a Dask worker"), 0.0)
        self.calls = kept
        self.single = False
        return bool(self.unsent)

    def outcomes(self, sent: list[Outcome]) -> list[Outcome]:
        """Every call's outcome, in order: ``sent`` for the calls submitted."""
        return merged(self.size, self.unsent, sent)


def _task_key(calls: Sequence[Call]) -> str:
    """A new Dask key named as ``client.submit(fn, ..., pure=False)`` names it.

    So the dashboard groups a run's tasks by their job function (``double``),
    not by rxpool's wrapper; a chunk of several functions is ``rxpool-chunk``.
    """
    from dask.utils import funcname

    first = calls[0][0]
    name = "rxpool-chunk"
    if all(fn is first for fn, _, _ in calls):
        with contextlib.suppress(Exception):  # a callable object whose str() raises
            name = funcname(first)
    return f"{name}-{uuid.uuid4()}"


class _DaskLane:
    """A `Lane` on a `DaskBackend`: one task on the cluster, the next held here.

    The done-callback of the running task (on Dask's callback thread, not the
    client's event loop) submits the held one, as a hand-written pool with
    callbacks does, then wakes the slot. The lane never has two tasks on the
    cluster, so a run's N slots keep at most N tasks in flight.
    """

    def __init__(self, client: Any, token: CancelToken) -> None:
        self._client = client
        self._token = token
        self._lock = threading.Lock()
        self._tasks: deque[_DaskTask] = deque()  # sent and not received, oldest first
        self._held: deque[_DaskTask] = deque()  # waiting for the running task to end
        self._running: _DaskTask | None = None
        self._link = token.on_cancel(self._cancelled)

    def send(self, calls: Sequence[Call]) -> None:
        task = _DaskTask(calls)
        with self._lock:
            self._tasks.append(task)
            if self._running is not None:
                self._held.append(task)
                return
            self._running = task
        self._start(task)

    def _start(self, task: _DaskTask | None) -> None:
        """Submit ``task`` (the running one), or end it and go on to the next one held."""
        while task is not None:
            if not self._token.cancelled and task.calls:
                try:
                    key = _task_key(task.calls)
                    if task.single:
                        fn, args, _ = task.calls[0]
                        task.future = self._client.submit(run_one, fn, *args, key=key)
                    else:
                        task.future = self._client.submit(run_calls_sent, task.calls, key=key)
                    if self._token.cancelled:  # the cancel came while it was submitted
                        task.future.cancel()
                    task.future.add_done_callback(lambda _, task=task: self._ended(task))
                    return
                except Exception as error:  # a call cannot be pickled, or the client is closed
                    task.future = None
                    if not task.unsent and task.drop_unsendable():
                        continue  # the other calls go without them
                    task.error = error
            task = self._next(task)

    def _ended(self, task: _DaskTask) -> None:
        self._start(self._next(task))

    def _next(self, task: _DaskTask) -> _DaskTask | None:
        """``task`` is over: wake its receiver; the held task that runs next, if any."""
        with self._lock:
            following = self._held.popleft() if self._held else None
            self._running = following
        task.done.set()
        return following

    def _cancelled(self) -> None:
        with self._lock:
            held, self._held = self._held, deque()
            running = self._running
        for task in held:
            task.done.set()  # never submitted: receive() raises for it
        if running is not None and running.future is not None:
            running.future.cancel()

    def receive(self) -> list[Outcome]:
        from distributed import KilledWorker

        task = self._tasks.popleft()
        while not task.done.wait(_CLIENT_CHECK_EVERY):
            if self._client.status == "closed" or self._token.cancelled:
                break  # a client that lost its scheduler may never end the future
        future = task.future
        try:
            if self._token.cancelled:
                raise self._token.new_error()
            if not task.done.is_set():
                raise Cancelled(
                    "the Dask client closed before the task ended (did it lose its scheduler?)"
                )
            if task.error is not None:  # it could not be submitted
                return task.outcomes(failed_outcomes(task.error, len(task.calls)))
            if future is None:  # no call in it could be pickled
                return task.outcomes([])
            try:
                value = future.result()
            except KilledWorker as error:
                if len(task.calls) > 1:
                    return task.outcomes(self._one_by_one(task.calls))
                raise WorkerCrashed(f"the Dask worker running the job died: {error}") from None
            except Exception as error:  # the job raised, or could not be sent or run
                if future.cancelled():
                    if self._token.cancelled:
                        raise self._token.new_error() from None
                    raise Cancelled(
                        "the Dask task was cancelled outside the run (was its client closed?)"
                    ) from None
                # Its own time is not known.
                return task.outcomes(failed_outcomes(error, len(task.calls)))
            return task.outcomes(load_outcomes(value, len(task.calls)))
        finally:
            if future is not None and future.status != "finished":
                # Cancelled or failed: let the cluster forget it now. A finished
                # future is released when dropped, as a plain submit's is.
                future.release()

    def _one_by_one(self, calls: Sequence[Call]) -> list[Outcome]:
        """The outcomes of a chunk that killed its workers, its calls run again one a task.

        Dask ran the chunk again on other workers (``allowed-failures``), so its
        calls may have run more than once already; alone, only a call that
        kills its worker gets a `WorkerCrashed`, and a chunk too big for a
        worker's memory may fit call by call. One task at a time on this
        slot (the task held behind the chunk may be running too).
        """
        outcomes: list[Outcome] = []
        for index, call in enumerate(calls):
            if self._token.cancelled:
                outcomes += failed_outcomes(self._token.new_error(), len(calls) - index)
                break
            try:
                outcomes += run_alone(_DaskLane(self._client, self._token), [call])
            except (Cancelled, WorkerCrashed) as error:
                outcomes += failed_outcomes(error.with_traceback(None), 1)
        return outcomes

    def close(self) -> None:
        """End the lane; chunks sent and not received (only after an error) are cancelled."""
        self._link.dispose()
        if self._tasks:
            with self._lock:
                self._held.clear()
            for task in self._tasks:
                if task.future is not None:
                    task.future.cancel()
            self._tasks.clear()
