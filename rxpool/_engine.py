"""The dispatcher: intake, worker slots as drain loops, reorder window, one emitter.

One `_Run` is one subscription. Its path (see DESIGN.md)::

    source -> intake -> slots (<= N drain loops) -> (reorder) -> emitter -> observer

* Intake. An iterator is pulled by the slots themselves, under ``_pull_lock``,
  only when a slot is free: nothing is read ahead of the workers. A hot
  Observable pushes into ``_buffer``; a full buffer blocks the producer's
  thread (when slots run on other threads) until a slot takes a job.
* Slots. A slot is a loop scheduled once that keeps taking jobs while there
  are any, then exits; it is spawned again when work arrives and fewer than N
  slots are live. Jobs that run fast are taken in growing batches, which
  halves the lock traffic per job; a slow job resets the batch to one, so slow
  work is never hoarded by one slot.
* Emitter. Every observer call happens under ``_lock`` (an RLock, so a
  subscriber may dispose from inside ``on_next``), and nothing is emitted once
  the run is stopped. With ``ordered=True`` results wait in a reorder map keyed
  by sequence number; a slot takes no job more than ``window`` places past the
  oldest undelivered one, so the window is bounded and a full window stops the
  intake instead of growing.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from threading import Condition, Lock, RLock
from typing import Any, Final, Generic, TypeVar

from reactivex import Observable, abc
from reactivex.disposable import Disposable, SingleAssignmentDisposable

from ._exceptions import BufferOverflow, Dropped
from ._intake import Policy, PriorityBuffer, RateLimiter, evict
from ._job import Job, Result
from ._token import CancelToken

_log: Final = logging.getLogger("rxpool")

_T = TypeVar("_T")
_R = TypeVar("_R")

_monotonic = time.monotonic
_perf_counter = time.perf_counter

# A batch whose jobs average below this many seconds doubles the next batch.
_FAST_JOB: Final = 50e-6
_MAX_BATCH: Final = 64


_NOTHING: Final = object()


class _Terminal:
    """The terminal notification, queued behind the values before it."""

    __slots__ = ("error",)

    def __init__(self, error: Exception | None) -> None:
        self.error = error


class Slots:
    """Where slot loops run: a `ThreadRunner` or a reactivex scheduler (structural type)."""

    def spawn(self, task: Callable[[], None]) -> None:  # pragma: no cover - protocol
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - protocol
        raise NotImplementedError


class _Run(Generic[_T, _R]):
    """State of one subscription. Subclasses say how a batch of items is executed."""

    def __init__(
        self,
        observer: abc.ObserverBase[_R],
        policy: Policy,
        *,
        slots: Any,
        release_slots: bool,
        blocking: bool,
        parent_token: CancelToken | None,
        scheduler: abc.SchedulerBase | None = None,
    ) -> None:
        self._observer = observer
        self._policy = policy
        self._n = policy.max_concurrent
        self._ordered = policy.ordered
        self._window = policy.window
        self._slots = slots
        self._release_slots = release_slots
        self._blocking = blocking
        self._scheduler = scheduler  # set when slots run on a reactivex scheduler
        self._limiter: RateLimiter | None = None
        self._rate_waiter = False  # one slot (or timer) waits for the next rate token
        if policy.rate is not None:
            self._limiter = RateLimiter(policy.rate, policy.burst, self._clock())

        self._lock = RLock()
        self._space = Condition(self._lock)
        self._pull_lock = Lock()
        self._iterator: Iterator[Any] | None = None
        self._buffer: deque[Any] | PriorityBuffer = deque()
        self._producers_waiting = 0
        self._source_subscription = SingleAssignmentDisposable()
        self._source_done = False
        self._source_error: Exception | None = None

        self._active = 0  # slot loops scheduled or running
        self._pending = 0  # items taken and not yet delivered
        self._seq = 0  # sequence number of the next item taken
        self._next_emit = 0  # ordered: sequence number of the next item to emit
        self._reorder: dict[int, list[Any]] = {}
        self._window_blocked = False
        self._stopped = False  # no more work is taken or delivered
        self._disposed = False  # the observer must not hear from us again
        self._outbox: deque[Any] = deque()  # notifications waiting for the observer
        self._draining = False

        self._token = CancelToken(parent=parent_token)
        self._token_link: abc.DisposableBase | None = None

    def _clock(self) -> Callable[[], float]:
        scheduler = self._scheduler
        if scheduler is None:
            return _monotonic
        epoch = scheduler.now
        return lambda: (scheduler.now - epoch).total_seconds()

    # -- starting -----------------------------------------------------------------------------

    def start_iterator(self, iterator: Iterator[Any]) -> abc.DisposableBase:
        self._iterator = iterator
        self._watch_token()
        self._kick()
        return Disposable(self.dispose)

    def start_observable(
        self, source: Observable[Any], scheduler: abc.SchedulerBase | None
    ) -> abc.DisposableBase:
        self._watch_token()
        if not self._stopped:
            self._source_subscription.disposable = source.subscribe(
                self._on_source_next,
                self._on_source_error,
                self._on_source_completed,
                scheduler=scheduler,
            )
        return Disposable(self.dispose)

    def _watch_token(self) -> None:
        """Overridden where a cancelled caller's token must end the run."""

    # -- intake -------------------------------------------------------------------------------

    def _admit(self, item: Any) -> Any:
        """Check one item from the source; raise TypeError to end the intake."""
        return item

    def _on_source_next(self, item: Any) -> None:
        try:
            item = self._admit(item)
        except TypeError as error:
            self._on_source_error(error)
            return
        spawn = False
        dropped: Any = _NOTHING
        with self._lock:
            if self._stopped or self._source_done:
                return
            if len(self._buffer) >= self._policy.buffer_size:
                overflow = self._policy.overflow
                if overflow == "block":
                    if self._blocking:
                        self._producers_waiting += 1
                        while len(self._buffer) >= self._policy.buffer_size and not self._stopped:
                            self._space.wait()
                        self._producers_waiting -= 1
                        if self._stopped:
                            return
                    # else: slots share the producer's thread; waiting would deadlock,
                    # so the buffer grows (documented for virtual-time schedulers).
                elif overflow == "drop_newest":
                    dropped = item
                elif overflow == "drop_oldest":
                    dropped = evict(self._buffer)
                else:
                    size = self._policy.buffer_size
                    self._fail(BufferOverflow(f"the buffer of {size} items is full"))
                    return
            if dropped is not item:
                self._enqueue(item)
                if self._active < self._n and not self._window_blocked and not self._rate_waiter:
                    self._active += 1
                    spawn = True
            if dropped is not _NOTHING:
                self._drop_locked(dropped)
        if dropped is not _NOTHING:
            self._dropped(dropped)
        if spawn:
            self._spawn()

    def _enqueue(self, item: Any) -> None:
        self._buffer.append(item)

    def _drop_locked(self, item: Any) -> None:
        """An item was dropped by the overflow policy (under ``_lock``)."""

    def _dropped(self, item: Any) -> None:
        """An item was dropped by the overflow policy (after ``_lock`` is released)."""

    def _on_source_error(self, error: Exception) -> None:
        with self._lock:
            if self._stopped or self._source_done:
                return
            self._source_done = True
            self._source_error = error
            self._source_failed()

    def _source_failed(self) -> None:
        """The source failed: by default finish the jobs taken, then report the error."""
        self._maybe_complete()

    def _on_source_completed(self) -> None:
        with self._lock:
            if self._stopped or self._source_done:
                return
            self._source_done = True
            self._maybe_complete()

    # -- slots --------------------------------------------------------------------------------

    def _kick(self) -> None:
        with self._lock:
            if self._stopped or self._window_blocked or self._rate_waiter:
                return
            if self._iterator is not None:
                want = 0 if self._source_done else self._n - self._active
            else:
                want = min(self._n - self._active, len(self._buffer))
            if self._limiter is not None:
                want = min(want, max(1, self._limiter.available()))
            if want <= 0:
                return
            self._active += want
        for _ in range(want):
            self._spawn()

    def _spawn(self) -> None:
        try:
            self._slots.spawn(self._slot)
        except BaseException as error:
            with self._lock:
                self._active -= 1
            self._fail(error if isinstance(error, Exception) else RuntimeError(repr(error)))

    def _slot(self) -> None:
        batch = 1
        try:
            while True:
                taken = self._take(batch)
                if taken is None:
                    return
                if type(taken) is float:
                    self._token.wait(taken)  # thread slots wait for the next rate token
                    with self._lock:
                        self._rate_waiter = False
                    self._kick()
                    continue
                first, items = taken  # type: ignore[misc]
                began = _perf_counter()
                outcome = self._execute(items)
                if (_perf_counter() - began) < _FAST_JOB * len(items):
                    batch = min(batch * 2, _MAX_BATCH)
                else:
                    batch = 1
                self._deliver(first, outcome)
        except BaseException as error:
            # Only a bug or an interrupt gets here; the run must still end.
            with self._lock:
                self._active -= 1
            self._fail(error if isinstance(error, Exception) else RuntimeError(repr(error)))

    def _take(self, want: int) -> tuple[int, list[Any]] | float | None:
        """Take up to ``want`` items with consecutive sequence numbers.

        Returns None when the slot should exit (``_active`` is decremented), or
        the seconds a thread slot should wait for the next rate token.
        """
        iterator = self._iterator
        if iterator is None:
            with self._lock:
                room = self._room(want)
                n = min(room, len(self._buffer))
                if n > 0 and self._limiter is not None:
                    n = self._limiter.take(n)
                    if n <= 0:
                        return self._wait_for_rate()
                if n <= 0:
                    if room <= 0 and self._buffer:
                        self._window_blocked = True
                    self._active -= 1
                    return None
                pop = self._buffer.popleft
                items = [pop() for _ in range(n)]
                if self._producers_waiting:
                    self._space.notify()
                return self._register(items)

        with self._pull_lock:
            with self._lock:
                room = self._room(want)
                if room <= 0 or self._source_done:
                    if room <= 0 and not self._source_done:
                        self._window_blocked = True
                    self._active -= 1
                    return None
                if self._limiter is not None:
                    room = self._limiter.take(room)
                    if room <= 0:
                        return self._wait_for_rate()
            items = []
            exhausted = False
            failure: Exception | None = None
            try:
                for _ in range(room):
                    items.append(self._admit(next(iterator)))
            except StopIteration:
                exhausted = True
            except Exception as error:  # the source raised, or gave a non-Job
                failure = error
            with self._lock:
                if self._limiter is not None and len(items) < room:
                    self._limiter.give_back(room - len(items))
                if exhausted or failure is not None:
                    self._source_done = True
                    self._source_error = failure
                if self._stopped or not items:
                    self._active -= 1
                    if failure is not None and not self._stopped:
                        self._source_failed()
                    else:
                        self._maybe_complete()
                    return None
                taken = self._register(items)
                if failure is not None:
                    self._source_failed()
                return taken

    def _wait_for_rate(self) -> float | None:
        """Out of rate tokens (under ``_lock``): one waiter waits, other slots exit."""
        assert self._limiter is not None
        if self._rate_waiter:
            self._active -= 1
            return None
        self._rate_waiter = True
        delay = self._limiter.delay()
        if self._scheduler is None:
            return delay
        self._active -= 1
        self._scheduler.schedule_relative(delay, self._rate_timer)
        return None

    def _rate_timer(self, _scheduler: abc.SchedulerBase, _state: object = None) -> None:
        with self._lock:
            self._rate_waiter = False
        self._kick()

    def _room(self, want: int) -> int:
        """How many items a slot may take now (under ``_lock``); 0 when stopped."""
        if self._stopped:
            return 0
        if self._ordered:
            return min(want, self._window - (self._seq - self._next_emit))
        return want

    def _register(self, items: list[Any]) -> tuple[int, list[Any]]:
        first = self._seq
        self._seq = first + len(items)
        self._pending += len(items)
        self._track(first, items)
        return first, items

    def _track(self, first: int, items: list[Any]) -> None:
        """Remember a batch as taken and not delivered (job runs need it to cancel)."""

    def _untrack(self, first: int) -> None:
        """Forget a delivered batch."""

    def _execute(self, items: list[Any]) -> tuple[list[Any], Exception | None]:
        raise NotImplementedError

    # -- emitter ------------------------------------------------------------------------------

    def _deliver(self, first: int, outcome: tuple[list[Any], Exception | None]) -> None:
        values, error = outcome
        with self._lock:
            if self._stopped:
                return
            self._untrack(first)
            self._pending -= len(values) if error is None else 0
            if self._ordered:
                if first != self._next_emit:
                    self._reorder[first] = values
                else:
                    self._emit_all(values)
                    self._next_emit = first + len(values)
                    reorder = self._reorder
                    while self._next_emit in reorder and not self._stopped:
                        later = reorder.pop(self._next_emit)
                        self._emit_all(later)
                        self._next_emit += len(later)
                    if self._window_blocked and not self._stopped:
                        self._window_blocked = False
                        self._kick()
            else:
                self._emit_all(values)
            if error is not None:
                self._fail(error)
            else:
                self._maybe_complete()

    def _emit_all(self, values: list[Any]) -> None:
        """Queue values for the observer and drain the queue (under ``_lock``)."""
        self._outbox.extend(values)
        self._drain()

    def _terminate(self, error: Exception | None) -> None:
        """Queue the terminal notification after what is queued (under ``_lock``)."""
        self._outbox.append(_Terminal(error))
        self._drain()

    def _drain(self) -> None:
        # Queue-drain: a subscriber that cancels or fails the run from inside
        # on_next re-enters here; its notifications are queued behind the ones
        # being emitted, so a batch half emitted is never lost.
        if self._draining:
            return
        self._draining = True
        outbox = self._outbox
        observer = self._observer
        try:
            while outbox and not self._disposed:
                value = outbox.popleft()
                if type(value) is _Terminal:
                    self._disposed = True
                    outbox.clear()
                    try:
                        if value.error is not None:
                            observer.on_error(value.error)
                        else:
                            observer.on_completed()
                    except Exception:
                        _log.exception("rxpool: the subscriber's terminal handler raised")
                    return
                try:
                    observer.on_next(value)
                except Exception as error:
                    self._subscriber_failed(error, value)
                    return
        finally:
            self._draining = False

    def _subscriber_failed(self, error: Exception, value: Any) -> None:
        """The subscriber's on_next raised: cancel the run and report the error once."""
        self._stopped = True
        self._disposed = True
        self._outbox.clear()
        self._token.cancel("the subscriber's on_next raised")
        try:
            self._observer.on_error(error)
        except Exception:
            _log.exception("rxpool: on_next raised for %r and on_error raised too", value)
        self._finish()

    def _maybe_complete(self) -> None:
        """End the run once the source is done and nothing is pending (under ``_lock``)."""
        if self._stopped or not self._source_done or self._pending or self._buffer:
            return
        self._stopped = True
        self._terminate(self._source_error)
        self._finish()

    def _fail(self, error: Exception) -> None:
        """End the run with ``error`` now: running jobs are told through the token."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            self._terminate(error)
        self._token.cancel(f"the run failed: {error!r}")
        self._finish()

    def dispose(self) -> None:
        """Stop the run: emit nothing more, start no job, cancel the running jobs' token."""
        with self._lock:
            self._disposed = True
            self._outbox.clear()
            if self._stopped:
                return
            self._stopped = True
        self._token.cancel("the subscription was disposed")
        self._finish()

    def _finish(self) -> None:
        """Release what the run holds; called once, after ``_stopped`` is set."""
        with self._lock:
            self._buffer.clear()
            self._reorder.clear()
            self._space.notify_all()
        self._source_subscription.dispose()
        link, self._token_link = self._token_link, None
        if link is not None:
            link.dispose()
        self._token.detach()
        if self._release_slots:
            self._slots.close()


class MapRun(_Run[_T, _R]):
    """``map_concurrent``: values out; the first exception ends the stream with that error."""

    def __init__(
        self,
        observer: abc.ObserverBase[_R],
        policy: Policy,
        fn: Callable[..., _R],
        pass_token: bool,
        **kw: Any,
    ) -> None:
        super().__init__(observer, policy, **kw)
        self._fn = fn
        self._pass_token = pass_token

    def _dropped(self, item: Any) -> None:
        on_drop = self._policy.on_drop
        if on_drop is not None:
            try:
                on_drop(item)
            except Exception:
                _log.exception("rxpool: the on_drop callback raised for %r", item)

    def _source_failed(self) -> None:
        # Like any Rx operator: an upstream error passes through at once.
        error = self._source_error
        assert error is not None
        self._fail(error)

    def _execute(self, items: list[Any]) -> tuple[list[Any], Exception | None]:
        fn = self._fn
        values: list[Any] = []
        append = values.append
        try:
            if self._pass_token:
                token = self._token
                for item in items:
                    if self._stopped:
                        break
                    append(fn(item, token=token))
            else:
                for item in items:
                    if self._stopped:
                        break
                    append(fn(item))
        except Exception as error:
            return values, error
        return values, None


class JobRun(_Run[Job[Any], Result[Any]]):
    """``run_jobs`` / ``WorkerPool.run``: one `Result` per job taken, errors as values."""

    def __init__(self, observer: abc.ObserverBase[Result[Any]], policy: Policy, **kw: Any) -> None:
        super().__init__(observer, policy, **kw)
        self._taken: dict[int, list[Job[Any]]] = {}

    def _enqueue(self, item: Any) -> None:
        buffer = self._buffer
        if item.priority and type(buffer) is deque:
            # The first job with a priority turns the FIFO into a priority buffer.
            buffer = self._buffer = PriorityBuffer(buffer)
        buffer.append(item)

    def _drop_locked(self, item: Any) -> None:
        size = self._policy.buffer_size
        now = _monotonic()
        error = Dropped(f"dropped: the buffer of {size} jobs was full")
        self._emit_all([Result(None, error, item.descriptor, 1, now, now)])

    def _admit(self, item: Any) -> Any:
        if type(item) is not Job and not isinstance(item, Job):
            raise TypeError(f"jobs must be rxpool.Job instances, got {type(item).__name__}")
        return item

    def _watch_token(self) -> None:
        parent = self._token._parent
        if parent is None:
            return
        if parent.cancelled:
            self._cancel_from_caller()
        else:
            self._token_link = parent.on_cancel(self._cancel_from_caller)

    def _track(self, first: int, items: list[Any]) -> None:
        self._taken[first] = items

    def _untrack(self, first: int) -> None:
        del self._taken[first]

    def _execute(self, items: list[Any]) -> tuple[list[Any], Exception | None]:
        token = self._token
        results: list[Result[Any]] = []
        append = results.append
        for job in items:
            if self._stopped:
                break
            started = _monotonic()
            try:
                if job.wants_token:
                    value = job.fn(*job.args, token=token, **job.kwargs)
                else:
                    value = job.fn(*job.args, **job.kwargs)
            except Exception as error:
                append(Result(None, error, job.descriptor, 1, started, _monotonic()))
            else:
                append(Result(value, None, job.descriptor, 1, started, _monotonic()))
        return results, None

    def _cancel_from_caller(self) -> None:
        """The caller's token was cancelled: every job taken gets a Cancelled result, then done."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            parent = self._token._parent
            assert parent is not None
            new_error = parent.new_error
            now = _monotonic()

            def cancelled(jobs: Iterable[Job[Any]]) -> list[Result[Any]]:
                return [Result(None, new_error(), job.descriptor, 1, now, now) for job in jobs]

            undelivered = {first: cancelled(jobs) for first, jobs in self._taken.items()}
            undelivered.update(self._reorder)
            for first in sorted(undelivered):
                self._outbox.extend(undelivered[first])
            self._outbox.extend(cancelled(self._buffer))
            self._taken.clear()
            self._terminate(None)
        self._token.cancel(parent.new_error())
        self._finish()
