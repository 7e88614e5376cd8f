"""The dispatcher: intake, worker slots as drain loops, reorder window, one emitter.

One `_Run` is one subscription. Its path (see DESIGN.md)::

    source -> intake -> slots (<= N drain loops) -> (reorder) -> emitter -> observer

* Intake. An iterator is pulled by the slots themselves, under ``_pull_lock``,
  only when a slot is free: nothing is read ahead of the workers. A hot
  Observable pushes into ``_buffer``; when it is full the overflow policy
  blocks the producer's thread, drops a job (which still gets a result) or
  fails the run.
* Slots. A slot is a loop scheduled once that keeps taking jobs while there
  are any, then exits; it is spawned again when work arrives and fewer than N
  slots are live. Fast jobs are taken in growing batches, which divides the
  lock traffic per job; a slow job resets the batch to one, so slow work is
  never hoarded by one slot. A job with a timeout always runs alone.
* Every item taken gets a sequence number and, until its final outcome is
  delivered, stays in ``_inflight`` (for runs that must account for it). An
  outcome may be deferred: a failed attempt waiting to be retried (its backoff
  runs on a timer and holds no slot), or a timed-out job whose result the
  watchdog already delivered while its function still runs.
* Emitter. Parts queue notifications under ``_lock`` (an RLock, so a
  subscriber may dispose from inside ``on_next``); the `Emitter` delivers them
  once the lock is released, one call at a time, and nothing once the run is
  stopped. With ``ordered=True`` outcomes wait in a reorder map keyed by
  sequence number; a slot takes no job more than ``window`` places past the
  oldest undelivered one, so a full window stops the intake instead of growing.

Lock order (see docs/architecture.md): ``_pull_lock`` before ``_lock``;
under ``_lock`` only leaf locks (a cursor's, the watchdog's, ``Counters``);
never the emitter's lock or a token's while ``_lock`` is held.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import operator
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from threading import Condition, Lock, RLock
from typing import Any, Final, Generic, TypeVar

from reactivex import Observable, abc
from reactivex.disposable import Disposable, SingleAssignmentDisposable
from reactivex.scheduler import VirtualTimeScheduler

from . import _aio
from ._emitter import Emitter
from ._exceptions import (
    BufferOverflow,
    Cancelled,
    Dropped,
    JobTimeout,
    WorkerCrashed,
    copy_of,
    job_error,
)
from ._intake import Policy, PriorityBuffer, RateLimiter, evict
from ._job import Job, Result, is_coroutine_function
from ._remote import Call, Outcome, failed_outcomes
from ._retry import Retry, chain
from ._stats import ProgressBar, Tracker
from ._threads import ThreadRunner
from ._timers import Timer, call_later
from ._token import CancelToken
from .backends import Backend, Lane
from .backends._protocol import LaneBackend

_log: Final = logging.getLogger("rxpool")

_T = TypeVar("_T")
_R = TypeVar("_R")

_monotonic = time.monotonic
_perf_counter = time.perf_counter
_thread_time = time.thread_time

# A batch whose jobs average below this many seconds (wall clock, so a GIL switch
# of 5 ms inside a batch of 64 still counts as fast) doubles the next batch.
_FAST_JOB: Final = 200e-6
_MAX_BATCH: Final = 64
# Remote backends (processes, Dask): a chunk of calls is at most this much work
# (see _Run._next_chunk), so slow jobs go one at a time and work spreads out.
_CHUNK_SECONDS: Final = 0.05
# On a lane, when the run's length is known: a chunk is at most this much work,
# and at most the remaining jobs over `_GUIDED_SHARE` times the slots.
_GUIDED_SECONDS: Final = 0.2
_GUIDED_SHARE: Final = 2
_MAX_CHUNK: Final = 1024
# Chunks in flight on a slot's lane (see _Run._lane_slot): one running, one queued.
_LANE_DEPTH: Final = 2
# A batch still running this long after it started (or was last flushed)
# delivers what it has finished (see _Run._execute_flushed).
_FLUSH_AFTER: Final = 0.002

_NOTHING: Final = object()
_TIMED_OUT: Final = JobTimeout("the job ran past its timeout")  # reported to an adaptive limit
_DEFERRED: Final = object()  # an outcome that comes later (retry) or came already (timeout)
_RUNNING: Final = object()  # a timed attempt whose function runs and whose deadline is ahead


class _Here(threading.local):
    handoff = False  # this thread queues notifications but does not deliver them


_here: Final = _Here()


@contextlib.contextmanager
def _handing_off() -> Iterator[None]:
    """On this thread, for the block: a slot delivers what the run queues (see `_Run._emit`)."""
    before, _here.handoff = _here.handoff, True
    try:
        yield
    finally:
        _here.handoff = before


class _RunLock:
    """A run's lock: an RLock whose outermost release delivers what the run queued.

    Every part queues notifications under this lock; the emitter delivers them
    only once the releasing thread holds no level of it, so observer callbacks
    never run under it (#23). ``depth`` is only changed by the thread that
    holds the lock (the one ``Condition.wait`` on it saves and restores it).
    """

    __slots__ = ("_acquire", "_release", "_run", "depth", "raw")

    def __init__(self, run: _Run[Any, Any]) -> None:
        self.raw = RLock()
        self._acquire = self.raw.acquire
        self._release = self.raw.release
        self._run = run
        self.depth = 0

    def __enter__(self) -> None:
        self._acquire()
        self.depth += 1

    def __exit__(self, *exc: object) -> None:
        self.depth -= 1
        last = not self.depth
        self._release()
        if last and self._run._emitter.pending:
            self._run._emit()


class Counters:
    """Counts shared by the runs of one pool."""

    __slots__ = ("abandoned", "lock")

    def __init__(self) -> None:
        self.lock = Lock()
        self.abandoned = 0  # timed-out jobs whose functions have not returned yet

    def add_abandoned(self, delta: int) -> None:
        with self.lock:
            self.abandoned += delta


class _Run(Generic[_T, _R]):
    """State of one subscription. Subclasses say how one item is called and reported."""

    def __init__(
        self,
        observer: abc.ObserverBase[_R],
        policy: Policy,
        *,
        slots: Any,
        blocking: bool,
        parent_token: CancelToken | None,
        scheduler: abc.SchedulerBase | None = None,
        counters: Counters | None = None,
        on_finished: Callable[[_Run[Any, Any]], None] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        remote: Backend | None = None,
        tracker: Tracker | None = None,
    ) -> None:
        self._observer = observer
        self._policy = policy
        self._n = policy.max_concurrent
        self._breaker = policy.breaker  # run_jobs: per job kind, checked around each call
        # An adaptive limit: _n follows it (read under _lock), slots over it exit.
        self._adaptive = policy.adaptive if remote is None else None
        if policy.adaptive is not None:
            self._n = policy.adaptive.limit
        self._ordered = policy.ordered
        self._window = policy.window
        self._slots = slots
        # Loop mode: slots are tasks on an event loop (see _aio); else drain loops on threads.
        self._loop_slots: _aio.LoopSlots | None = (
            slots if isinstance(slots, _aio.LoopSlots) else None
        )
        self._slot_task: Callable[[], Any] = self._aslot if self._loop_slots else self._slot
        # Thread mode: the loop the run was subscribed from runs its coroutine jobs.
        self._loop = loop
        # Remote mode (process, Dask): slot threads hand chunks of calls to this backend.
        self._remote = remote
        self._chunk = policy.chunk_size
        if self._chunk is None and remote is not None:
            self._chunk = remote.chunk_size
        self._chunk_stats = threading.local()  # per slot thread: the last chunk's compute time
        # A backend with lanes (processes) takes a slot's next chunk while it
        # runs the last one (see _lane_slot).
        self._open_lane: Callable[[CancelToken], Lane] | None = (
            remote.open_lane if isinstance(remote, LaneBackend) else None
        )
        if self._open_lane is not None and self._loop_slots is None:
            self._slot_task = self._lane_slot
        # Batches on rxpool's threads deliver their finished part when a batch
        # mate runs long (see _execute_flushed); on a reactivex scheduler the
        # batch is delivered whole (a virtual clock would not fire the timer).
        self._flushable = remote is None and isinstance(slots, ThreadRunner)
        self._batches: dict[int, _Batch] = {}  # batches running now (see _execute_flushed)
        self._sweeping = False  # a sweeper task runs
        self._blocking = blocking
        self._scheduler = scheduler  # set when slots run on a reactivex scheduler
        # Timers (timeouts, backoff, rate) follow a virtual clock; on any real
        # clock the watchdog thread serves them (a same-thread scheduler would
        # sleep in its trampoline until they are due).
        self._virtual = scheduler if isinstance(scheduler, VirtualTimeScheduler) else None
        self._counters = counters if counters is not None else Counters()
        self._on_finished = on_finished
        self._limiter: RateLimiter | None = None
        self._rate_waiter = False  # one slot (or timer) waits for the next rate token
        self._now = self._clock()
        if policy.rate is not None:
            self._limiter = RateLimiter(policy.rate, policy.burst, self._now)
        # Runs that must account for every item, or that defer outcomes, track them.
        # An adaptive limit measures every attempt: those runs take the careful path too.
        self._tracked = (
            policy.timeout is not None or policy.retry is not None or self._adaptive is not None
        )

        self._lock = _RunLock(self)
        self._space = Condition(self._lock.raw)
        self._pull_lock = Lock()
        self._iterator: Iterator[Any] | None = None
        self._length = policy.total  # items the source gives, when known (see _remaining)
        self._aiterator: AsyncIterator[Any] | None = None
        self._apull_lock: asyncio.Lock | None = None  # loop mode: one slot awaits the source
        self._buffer: deque[Any] | PriorityBuffer = deque()
        self._producers_waiting = 0
        self._source_subscription = SingleAssignmentDisposable()
        self._source_done = False
        self._source_error: Exception | None = None

        self._active = 0  # slot loops scheduled or running
        self._pending = 0  # items numbered and without a final outcome delivered
        self._seq = 0  # sequence number of the next item numbered
        self._next_emit = 0  # ordered: sequence number of the next item to emit
        self._reorder: dict[int, Any] = {}
        self._window_blocked = False
        # ordered=True: (sequence number, error) of a failure that ends the stream
        # once everything before it has been emitted.
        self._fatal_hold: tuple[int, Exception] | None = None
        self._inflight: dict[int, Any] = {}  # tracked runs: seq -> item without an outcome
        self._retry_queue: deque[tuple[int, Any, int, list[BaseException]]] = deque()
        self._retry_waiting: dict[int, tuple[Any, Timer]] = {}
        # Jobs sent on lanes that wait at their worker behind the one it runs
        # (see _lane_slot): queued, not running, in statistics and progress bars.
        self._at_workers = 0
        # Lane slots holding work (chunks in flight, or an item run alone): a slot
        # queues a chunk behind its running one only when every slot holds work.
        self._lanes_busy = 0
        # Timed attempts whose function runs, (seq, attempt) -> _RUNNING. The slot
        # (the function returned) and the watchdog (the deadline passed) both
        # pop the entry; the one that gets it reports the attempt.
        self._timed: dict[tuple[int, int], object] = {}
        self._stopped = False  # no more work is taken or delivered
        self._drain_queued = False  # a slot's drain task is spawned, not started yet
        self._retired = False  # on_finished was called
        self._pulling = False  # a slot is in next(iterator), outside the lock
        self._terminal_deferred = False  # a cancel waits for that pull to end

        self._token = CancelToken(parent=parent_token)
        self._token_link: abc.DisposableBase | None = None

        # Counting (WorkerPool.statistics, progress bars): None costs nothing.
        if tracker is None and policy.progress:
            tracker = Tracker()
        self.tracker = tracker
        self._count: Callable[[Any], None] | None = None  # per value emitted
        self._count_batch: Tracker | None = None  # or per batch delivered (plain values)
        self._progress: ProgressBar | None = None
        if tracker is not None:
            self._count = self._counter(tracker)
            if self._count is None:
                self._count_batch = tracker
            tracker.waiting = self._waiting
        self._emitter: Emitter[_R] = Emitter(
            observer, self._count, self._subscriber_failed, self._retire
        )

    def _counter(self, tracker: Tracker) -> Callable[[Any], None] | None:
        """How the emitter counts one value; None: count whole batches as they are delivered.

        `map_concurrent` emits plain values (its failures end the stream), so
        a batch is counted with one addition instead of a call per value.
        """
        return None

    def _waiting(self) -> tuple[int, int, int, int]:
        """What the run's jobs not counted as results do: ``(queued, running, held, buffered)``.

        Buffered: pushed by the source and not taken by a slot yet, which the
        tracker does not count as taken (a count per pushed job cost
        `map_concurrent` a few % with a progress bar); they are queued too.

        Queued: waiting in the buffer, for a retry, at their worker behind
        another, or in a batch behind the one running. Running: their
        functions run, at most one per slot. Held: finished, their results
        waiting for the rest of their batch, for an earlier one
        (``ordered``) or for the subscriber. (`map_concurrent` counts its
        results as it delivers them, so results waiting for order are
        counted already.)

        Read without the lock (a dashboard that polls must not hold up the
        slots), in the order jobs move, so that a job moving on between two
        reads is counted twice rather than missed: `running` (what is left)
        may read low for an instant, and never more than one per slot.
        """
        buffered = queued = len(self._buffer)
        waiting = len(self._retry_queue) + len(self._retry_waiting) + self._at_workers
        held = 0
        if self._batches:
            for batch in list(self._batches.values()):
                pending = batch.pending
                waiting += len(pending) if pending is not None else max(0, batch.size - 1)
                held += max(0, len(batch.outcomes) - batch.delivered)
        # The rest run, except a batch a slot took and has not started: its
        # jobs are queued (one slot runs one job at a time).
        rest = max(0, self._pending - waiting - held)
        running = min(rest, self._active)
        queued += waiting + rest - running
        if self._count_batch is None:
            held += len(self._reorder)
            held += len(self._emitter.outbox)
        return queued, running, held, buffered

    def _running(self) -> int:
        """Items whose functions run now (see `_waiting`)."""
        return self._waiting()[1]

    def _begin(self) -> None:
        """The run starts: its progress bar, if asked for."""
        if _log.isEnabledFor(logging.DEBUG):
            where = "remote" if self._remote else "loop" if self._loop_slots else "threads"
            _log.debug("run %x starts: %d slots on %s (%r)", id(self), self._n, where, self._slots)
        if self._policy.progress and self.tracker is not None:
            adaptive = self._adaptive
            self._progress = ProgressBar(
                self.tracker,
                self._policy.total,
                self._running,
                limit=(lambda: adaptive.limit) if adaptive is not None else None,
            )

    def _clock_now(self) -> float:
        """Now, on the clock timers use (the virtual one on a virtual-time scheduler)."""
        return self._now()

    def _clock(self) -> Callable[[], float]:
        scheduler = self._virtual
        if scheduler is None:
            return _monotonic
        epoch = scheduler.now
        return lambda: (scheduler.now - epoch).total_seconds()

    # -- starting -----------------------------------------------------------------------------

    def start_iterator(self, iterator: Iterator[Any]) -> abc.DisposableBase:
        self._iterator = iterator
        if self._length is None:  # asked once, before any slot pulls it
            hint = operator.length_hint(iterator, -1)
            self._length = hint if hint >= 0 else None
        self._begin()
        self._watch_token()
        self._kick()
        return Disposable(self.dispose)

    def start_aiterator(self, aiterator: AsyncIterator[Any]) -> abc.DisposableBase:
        """Pull an async iterator (loop mode only): slots await its next item when free."""
        assert self._loop_slots is not None
        self._aiterator = aiterator
        self._begin()
        self._watch_token()
        self._kick()
        return Disposable(self.dispose)

    def start_observable(
        self, source: Observable[Any], scheduler: abc.SchedulerBase | None
    ) -> abc.DisposableBase:
        self._begin()
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
                        depth = self._lock.depth  # the wait releases every level
                        self._lock.depth = 0
                        while len(self._buffer) >= self._policy.buffer_size and not self._stopped:
                            self._space.wait()
                        self._lock.depth = depth
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
            self._spawn(1)

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

    def _queued(self) -> int:
        """Items ready to be taken without pulling the source (under ``_lock``)."""
        return len(self._buffer) + len(self._retry_queue)

    def _kick(self) -> None:
        with self._lock:
            if self._stopped or self._window_blocked or self._rate_waiter:
                return
            if self._adaptive is not None:
                self._n = self._adaptive.limit
            if (self._iterator or self._aiterator) is not None and not self._source_done:
                want = self._n - self._active
            else:
                want = min(self._n - self._active, self._queued())
            if self._limiter is not None:
                want = min(want, max(1, self._limiter.available()))
            if want <= 0:
                return
            self._active += want
        self._spawn(want)

    def _spawn(self, count: int) -> None:
        try:
            self._slots.spawn(self._slot_task, count)
        except BaseException as error:
            with self._lock:
                self._active -= count
            self._fail(error if isinstance(error, Exception) else RuntimeError(repr(error)))

    def _slot(self) -> None:
        batch = self._chunk or 1  # a fixed chunk size holds from the first chunk
        try:
            while True:
                taken = self._take(batch)
                if taken is None:
                    return
                if type(taken) is float:
                    self._wait_for_token(taken)
                    continue
                first, items, retry_state = taken  # type: ignore[misc]
                began = _perf_counter()
                if len(items) > 1 and self._flushable:
                    outcome = self._execute_flushed(first, items)
                else:
                    outcome = self._execute(first, items, retry_state, [])
                elapsed = _perf_counter() - began
                if self._remote is not None:
                    compute = getattr(self._chunk_stats, "compute", 0.0)
                    batch = self._next_chunk(len(items), elapsed, compute)
                elif elapsed < _FAST_JOB * len(items):
                    batch = min(batch * 2, _MAX_BATCH)
                else:
                    batch = 1
                if outcome is not None:
                    self._deliver(first, *outcome)
                elif self._emitter.pending:  # a flushed batch delivered itself
                    self._emitter.drain()
        except BaseException as error:
            # Only a bug or an interrupt gets here; the run must still end.
            with self._lock:
                self._active -= 1
            self._fail(error if isinstance(error, Exception) else RuntimeError(repr(error)))

    def _wait_for_token(self, seconds: float) -> None:
        """A thread slot that `_take` made the rate waiter: wait, then let slots take again."""
        self._token.wait(seconds)
        with self._lock:
            self._rate_waiter = False
        self._kick()

    def _execute_flushed(
        self, first: int, items: list[Any]
    ) -> tuple[list[Any], Exception | None, bool] | None:
        """Run a batch whose finished results do not wait for a slow batch mate.

        The batch is registered for the run's sweeper, a task on the run's
        threads that lives while batches run: a batch still running
        `_FLUSH_AFTER` after it started (or after its last flush) gets what it
        has finished delivered by the sweeper, since the slot is busy.
        The sweeper also hands the batch's items not started yet to other
        slots, when there is room for more slots (the source has run dry, so
        slots have exited): a slow job no longer holds up the jobs behind it
        in its batch while threads are free for them. They keep their
        sequence numbers and go through the ready queue, as retries do.
        Returns None: the slot delivers the rest here.
        """
        batch = _Batch(first, len(items))
        if self._fast(items):
            batch.pending = deque(items)
        batches = self._batches
        batches[id(batch)] = batch
        if not self._sweeping:  # after registering: the sweeper checks in the other order
            self._sweeping = True
            try:
                self._slots.spawn(self._sweeper)
            except Exception:  # the threads are closing: the batch is delivered whole
                self._sweeping = False
        try:
            if batch.pending is not None:
                outcome = self._run_fast(batch.pending, batch.outcomes)
            else:
                outcome = self._execute(first, items, None, batch.outcomes)
        except BaseException:
            del batches[id(batch)]
            raise
        outcomes, fatal, deferred = outcome
        with self._lock:
            batch.done = True  # the sweeper takes no more (it steals under the lock)
            done = batch.delivered
            # The fast paths fill the batch's list; others return their own.
            rest = outcomes[done:] if done and outcomes is batch.outcomes else outcomes
            if batch.stolen and fatal is None:
                rest = [*rest, *[_DEFERRED] * batch.stolen]  # they come from other slots
                deferred = True
            try:
                self._deliver_locked(first + done, rest, fatal, deferred)
            finally:
                del batches[id(batch)]  # after delivering: statistics always find its jobs
        return None

    def _sweeper(self) -> None:
        """Every `_FLUSH_AFTER`, flush the batches that run long; exit when none runs."""
        while True:
            time.sleep(_FLUSH_AFTER)
            if not self._stopped:
                now = _perf_counter()
                for batch in list(self._batches.values()):
                    if not batch.done and now - batch.since >= _FLUSH_AFTER:
                        self._flush(batch)
                        if batch.pending and self._active < self._n and self._steal(batch):
                            self._kick()
            if self._batches and not self._stopped:
                continue
            self._sweeping = False
            if not self._batches or self._stopped or self._sweeping:
                return  # a batch registered now saw the flag down and starts a sweeper
            self._sweeping = True

    def _steal(self, batch: _Batch) -> bool:
        """Hand the batch's items not started yet to the ready queue; False if none."""
        pending = batch.pending
        assert pending is not None
        with self._lock:
            if batch.done or self._stopped or self._limiter is not None:
                return False  # (a rate limit would charge their tokens twice)
            stolen: list[Any] = []
            while True:
                try:
                    stolen.append(pending.pop())
                except IndexError:
                    break
            if not stolen:
                return False
            end = batch.first + batch.size - batch.stolen  # after the last not stolen before
            batch.stolen += len(stolen)
            start = end - len(stolen)
            self._retry_queue.extend(
                (start + index, item, 1, []) for index, item in enumerate(reversed(stolen))
            )
        return True

    def _flush(self, batch: _Batch) -> None:
        with self._lock:
            batch.since = _perf_counter()
            if batch.done or self._stopped:
                return
            ready = len(batch.outcomes)  # the slot appends without the lock (atomic)
            if ready > batch.delivered:
                start, batch.delivered = batch.delivered, ready
                self._deliver(batch.first + start, batch.outcomes[start:ready], None, False)

    async def _aslot(self) -> None:
        """A slot in loop mode: one job at a time, awaited on the loop."""
        try:
            while True:
                taken = await self._atake() if self._aiterator is not None else self._take(1)
                if taken is None:
                    return
                if type(taken) is float:
                    await asyncio.sleep(taken)  # the next rate token
                    with self._lock:
                        self._rate_waiter = False
                    self._kick()
                    continue
                first, items, retry_state = taken  # type: ignore[misc]
                outcome = await self._aexecute(first, items[0], retry_state)
                _aio.clear_pause()
                self._deliver(first, *outcome)
                pause = _aio.take_pause()  # the observer asked us to wait (a full queue)
                if pause is not None:
                    await pause
        except asyncio.CancelledError:
            # The run was stopped (its slot tasks are cancelled then), or someone
            # cancelled our task: then the run cannot go on, and says so.
            with self._lock:
                self._active -= 1
            if not self._stopped:
                self._fail(Cancelled("a worker slot's task on the event loop was cancelled"))
        except BaseException as error:  # a bug guard, as in _slot
            with self._lock:
                self._active -= 1
            self._fail(error if isinstance(error, Exception) else RuntimeError(repr(error)))

    async def _atake(self) -> tuple[int, list[Any], Any] | float | None:
        """`_take` for an async iterator source: retries first, then await the next item."""
        if self._retry_queue:  # an unlocked peek: most runs never retry
            retried = self._take_retry()
            if retried is not _NOTHING:
                return retried  # type: ignore[return-value]
        aiterator = self._aiterator
        assert aiterator is not None
        if self._apull_lock is None:
            self._apull_lock = asyncio.Lock()
        async with self._apull_lock:
            began = self._pull_begin(1)
            if type(began) is not int:
                return began
            items = []
            exhausted = False
            failure: Exception | None = None
            try:
                items.append(self._admit(await anext(aiterator)))
            except StopAsyncIteration:
                exhausted = True
            except asyncio.CancelledError:
                self._pull_end(began, items, True, None)
                raise
            except Exception as error:  # the source raised, or gave a non-Job
                failure = error
            return self._pull_end(began, items, exhausted, failure)

    async def _aexecute(
        self, first: int, item: Any, retry_state: Any
    ) -> tuple[list[Any], Exception | None, bool]:
        """One attempt at one item in loop mode, with its timeout and retry policy."""
        attempt, errors = retry_state if retry_state is not None else (1, [])
        timeout = self._timeout_of(item)
        token = self._token
        if timeout is not None and self._wants_token(item):
            token = token.child()  # a timeout cancels this job's token only
        slots = self._loop_slots
        assert slots is not None
        started = _monotonic()
        error: Exception | None = None
        value: Any = None
        breaker = self._breaker
        trial: bool | None = None  # with a breaker: None when it refused the job
        try:
            if breaker is not None:
                trial = breaker.enter(item.descriptor.kind)
            if self._is_async(item):
                work: Any = self._call(item, token)
            else:
                work = slots.offload(lambda: self._call(item, token))
            if timeout is None:
                value = await work
            else:
                async with asyncio.timeout(timeout) as deadline:
                    value = await work
        except TimeoutError as raised:
            if timeout is not None and deadline.expired():
                error = JobTimeout(
                    f"job {self._describe(item)} ran past its timeout of {timeout:g}s"
                )
                if token is not self._token:
                    token.cancel(JobTimeout(str(error)))
            else:
                error = raised
        except Exception as raised:
            error = raised
        finished = _monotonic()
        if breaker is not None and trial is not None:
            breaker.leave(item.descriptor.kind, error, trial)
        if self._adaptive is not None:
            self._adapt(finished - started, error)
        if error is None:
            outcome = self._success(item, value, attempt, started, finished)
        else:
            outcome = self._failure(first, item, error, attempt, errors, started, finished)
        if outcome is _DEFERRED:
            return [_DEFERRED], None, True
        fatal = self._fatal(outcome)
        if fatal is not None:
            return [], fatal, False
        return [outcome], None, False

    def _next_chunk(
        self,
        size: int,
        elapsed: float,
        compute: float | None,
        cpu: float | None = None,
        asked: int = 0,
    ) -> int:
        """Remote mode: the next chunk's size.

        ``elapsed``: the last chunk's wall time, from when it was sent (or,
        queued behind another, from when that one came back) to its outcomes;
        ``compute``: its calls' own time, None if it was given up. Four times
        the overhead (``elapsed - compute``) in work, so the overhead is about
        a fifth of a chunk's time, but at most `_CHUNK_SECONDS` of work, so
        slow jobs go one by one and work spreads over the workers.

        On a lane (``cpu``: this thread's CPU time for the last chunk) the
        round trip is hidden, but a chunk still costs ``c``: the thread's time,
        taken from the cores the workers use (0.2-0.4 ms with two busy workers
        on two cores, much more than in an idle process: every wake-up finds
        its caches cold), and the worker's own time between two chunks (what
        is left of ``elapsed - compute``). Fewer, bigger chunks save it; a
        bigger chunk may leave one worker running alone at the end. For ``J``
        jobs of ``w`` seconds on ``n`` workers, ``k`` jobs a chunk cost about
        ``(J*w + J/k*c)/n + k*w/2``, least at ``k = sqrt(2*J*c/(n*w))``; ``J``
        is the jobs taken so far, so a short run keeps small chunks.

        When the run's length is known (``total=``, or a source with a length
        hint such as a list), the tail is no longer the price of big chunks:
        a chunk is up to `_GUIDED_SECONDS` of work, and at most the remaining
        jobs over `_GUIDED_SHARE` times the slots, so chunks shrink to one job
        as the end nears (guided self-scheduling, as joblib's batches do).

        A chunk grows at most eightfold over the bigger of ``size`` and
        ``asked`` (the size asked last): on a lane the chunk received was
        asked for before the one queued behind it, and growing from it alone
        would take one more round trip per step.
        """
        if self._chunk is not None:
            return self._chunk
        if compute is None or size <= 0:  # the chunk was given up: nothing learned
            return max(size, 1)
        per_call = compute / size
        grown = min(max(size, asked) * 8, _MAX_CHUNK)
        remaining = None if cpu is None else self._remaining()
        if remaining is not None:  # guided: shrink toward the end
            grown = max(1, min(grown, math.ceil(remaining / (_GUIDED_SHARE * self._n))))
        if per_call <= 0:
            return grown
        if remaining is not None:
            return max(1, min(grown, round(_GUIDED_SECONDS / per_call)))
        overhead = max(elapsed - compute, 0.0)
        want = min(4 * overhead, _CHUNK_SECONDS) / per_call
        if cpu:
            cost = cpu + overhead  # per chunk: this thread's time, and the worker's
            balance = math.sqrt(2 * self._seq * cost / (self._n * per_call))
            want = max(want, min(balance, _CHUNK_SECONDS / per_call))
        return max(1, min(grown, round(want)))

    def _remaining(self) -> int | None:
        """Items not taken yet, when the run's length is known (``total=``, a length hint)."""
        length = self._length
        return None if length is None else max(length - self._seq, 0)

    def _take(self, want: int, keep: bool = False) -> tuple[int, list[Any], Any] | float | None:
        """Take up to ``want`` items with consecutive sequence numbers.

        Returns ``(first_seq, items, retry_state)``; None when the slot should
        exit (``_active`` is decremented); or the seconds a thread slot should
        wait for the next rate token. With ``keep`` (a slot that still has
        work in flight) None only means nothing is ready now: the slot stays
        counted, and retries, rate tokens and a busy source are left alone.
        """
        if keep and self._limiter is not None:
            return None
        if self._adaptive is not None and not keep:
            with self._lock:
                self._n = self._adaptive.limit
                if self._active > self._n:  # the limit came down: this slot goes
                    self._active -= 1
                    return None
        if self._retry_queue and not keep:  # an unlocked peek: most runs never retry
            retried = self._take_retry()
            if retried is not _NOTHING:
                return retried  # type: ignore[return-value]
        iterator = self._iterator
        if iterator is None:
            with self._lock:
                room = self._room(want)
                buffer = self._buffer
                n = min(room, len(buffer))
                if n > 0 and self._limiter is not None:
                    n = self._limiter.take(n)
                    if n <= 0:
                        return self._wait_for_rate()
                if n <= 0:
                    if room <= 0 and buffer:
                        self._window_blocked = True
                    if not keep:
                        self._active -= 1
                    return None
                pop = buffer.popleft
                items = [pop() for _ in range(n)]
                if self._producers_waiting:
                    self._space.notify()
                return self._register(items)

        if not self._pull_lock.acquire(not keep):
            return None  # another slot pulls the source
        try:
            began = self._pull_begin(want, keep)
            if type(began) is not int:
                return began
            items = []
            exhausted = False
            failure: Exception | None = None
            try:
                for _ in range(began):
                    items.append(self._admit(next(iterator)))
            except StopIteration:
                exhausted = True
            except BaseException as raised:  # the source raised, or gave a non-Job
                failure = job_error(raised, "the source")
            return self._pull_end(began, items, exhausted, failure, keep)
        finally:
            self._pull_lock.release()

    def _take_retry(self) -> object:
        """A retry waiting to run, as `_take` returns it; `_NOTHING` if none is ready."""
        with self._lock:
            if not self._retry_queue or self._stopped:
                return _NOTHING
            if self._limiter is not None and not self._limiter.take(1):
                return self._wait_for_rate()
            seq, item, attempt, errors = self._retry_queue.popleft()
            return seq, [item], (attempt, errors)

    def _pull_begin(self, want: int, keep: bool = False) -> int | float | None:
        """Before pulling the source: how many items to pull, or what `_take` returns."""
        with self._lock:
            room = self._room(want)
            if room <= 0 or self._source_done:
                if room <= 0 and not self._source_done:
                    self._window_blocked = True
                if keep:
                    return None
                self._active -= 1
                if not self._stopped:
                    self._maybe_complete()
                return None
            if self._limiter is not None:
                room = self._limiter.take(room)
                if room <= 0:
                    return self._wait_for_rate()
            self._pulling = True
            return room

    def _pull_end(
        self,
        room: int,
        items: list[Any],
        exhausted: bool,
        failure: Exception | None,
        keep: bool = False,
    ) -> tuple[int, list[Any], Any] | None:
        """After pulling the source: number what was pulled, or end the slot."""
        with self._lock:
            self._pulling = False
            if self._limiter is not None and len(items) < room:
                self._limiter.give_back(room - len(items))
            if exhausted or failure is not None:
                self._source_done = True
                self._source_error = failure
            if self._terminal_deferred:
                self._taken_while_stopping(items)  # then the terminal notification
                if not keep:
                    self._active -= 1
                return None
            if self._stopped or not items:
                if not keep:
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

    def _taken_while_stopping(self, items: list[Any]) -> None:
        """Items pulled while the caller cancelled: report them, then end (under ``_lock``)."""
        self._terminal_deferred = False
        self._terminate(None)

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
        call_later(delay, self._rate_timer, self._virtual)
        return None

    def _rate_timer(self) -> None:
        with self._lock:
            self._rate_waiter = False
        self._kick()

    def _room(self, want: int) -> int:
        """How many items a slot may take now (under ``_lock``); 0 when stopped."""
        if self._stopped or self._token.fired or self._fatal_hold is not None:
            return 0  # stopped, about to be, or waiting to end with an error
        if self._ordered:
            return min(want, self._window - (self._seq - self._next_emit))
        return want

    def _register(self, items: list[Any]) -> tuple[int, list[Any], None]:
        count = len(items)
        if self.tracker is not None:
            self.tracker.taken += count
        first = self._seq
        self._seq = first + count
        self._pending += count
        if self._tracked:
            if count == 1:  # slow jobs go one by one: the common case when it matters
                self._inflight[first] = items[0]
            else:
                self._inflight.update(zip(range(first, first + count), items, strict=True))
        return first, items, None

    # -- execution ----------------------------------------------------------------------------

    def _execute(
        self, first: int, items: list[Any], retry_state: Any, sink: list[Any]
    ) -> tuple[list[Any], Exception | None, bool]:
        """Run a batch: ``(outcomes, fatal error or None, any outcome deferred)``.

        The fast paths append each outcome to ``sink`` as it is known and
        return it (so `_flush` can deliver a prefix); other paths may return
        a list of their own.
        """
        raise NotImplementedError

    def _fast(self, items: list[Any]) -> bool:
        """Whether `_execute` runs these items (no retry state) on `_run_fast`."""
        return False

    def _run_fast(
        self, pending: deque[Any], sink: list[Any]
    ) -> tuple[list[Any], Exception | None, bool]:
        """Run items taken one by one from the left of ``pending``, outcomes into ``sink``.

        Items another slot takes meanwhile (see `_steal`) are not run here.
        """
        raise NotImplementedError

    def _run_careful(
        self, first: int, items: list[Any], retry_state: Any
    ) -> tuple[list[Any], Exception | None, bool]:
        """Run a batch whose items may time out or be retried, one attempt each.

        The batch goes through a `_Cursor`: it holds the running item's deadline
        for the watchdog (one timer per batch, not per job), and lets the
        watchdog hand the items not yet started to other slots when one times
        out, instead of leaving them behind a function that may never return.
        """
        attempt, errors = retry_state if retry_state is not None else (1, [])
        cursor = _Cursor(self, first, items)
        outcomes: list[Any] = []
        deferred = False
        try:
            for index, item in enumerate(items):
                if not cursor.claim(index):
                    outcomes.extend([_DEFERRED] * (len(items) - index))  # handed away
                    return outcomes, None, True
                if self._stopped:
                    break
                outcome = self._run_one(first + index, item, attempt, errors, cursor)
                if outcome is _DEFERRED:
                    deferred = True
                else:
                    fatal = self._fatal(outcome)
                    if fatal is not None:
                        return outcomes, fatal, deferred
                outcomes.append(outcome)
            return outcomes, None, deferred
        finally:
            cursor.close()

    def _run_one(
        self,
        seq: int,
        item: Any,
        attempt: int,
        errors: list[BaseException],
        cursor: _Cursor,
    ) -> Any:
        """One attempt at one item, with its timeout and retry policy."""
        timeout = self._timeout_of(item)
        token = self._token
        started = _monotonic()
        key = (seq, attempt)
        if timeout is not None:
            if self._wants_token(item):
                token = cursor.job_token()
            self._timed[key] = _RUNNING
            cursor.arm(_Running(key, item, errors, started, timeout, token))
        error: Exception | None = None
        value: Any = None
        breaker = self._breaker
        trial: bool | None = None  # with a breaker: None when it refused the job
        try:
            if breaker is not None:
                trial = breaker.enter(item.descriptor.kind)
            value = self._call(item, token)
        except BaseException as raised:
            error = job_error(raised)
        finished = _monotonic()
        if timeout is not None:
            cursor.disarm()
            # dict.pop is atomic: the slot and the watchdog cannot both take _RUNNING.
            if self._timed.pop(key, None) is not _RUNNING:
                self._counters.add_abandoned(-1)
                if self._adaptive is not None:
                    self._adapt(finished - started, _TIMED_OUT)
                if breaker is not None and trial is not None:
                    breaker.leave(item.descriptor.kind, _TIMED_OUT, trial)
                return _DEFERRED  # its timeout was reported at the deadline
        if breaker is not None and trial is not None:
            breaker.leave(item.descriptor.kind, error, trial)
        if self._adaptive is not None:
            self._adapt(finished - started, error)
        if error is None:
            return self._success(item, value, attempt, started, finished)
        return self._failure(seq, item, error, attempt, errors, started, finished)

    def _adapt(self, seconds: float, error: BaseException | None) -> None:
        """Report an attempt to the adaptive limit; start slots if it went up."""
        assert self._adaptive is not None
        if self._adaptive.report(seconds, error) > self._active:  # an unlocked peek
            self._kick()

    def _failure(
        self,
        seq: int,
        item: Any,
        error: Exception,
        attempt: int,
        errors: list[BaseException],
        started: float,
        finished: float,
    ) -> Any:
        retry = self._retry_of(item)
        if retry is not None and not self._stopped:
            try:
                again = retry.should_retry(error, attempt)
                delay = retry.delay(attempt) if again else 0.0
            except Exception as broken:
                # The user's retry_on or backoff raised: this job's outcome, not
                # the run's end (#28); the job's own error stays its context.
                broken.__context__ = error
                broken.add_note(
                    f"rxpool: the retry policy raised while judging attempt {attempt}'s error"
                )
                error, again = broken, False
            if again:
                self._schedule_retry(seq, item, attempt + 1, [*errors, error], delay)
                return _DEFERRED
        if errors:
            error = chain([*errors, error])  # type: ignore[assignment]
        return self._failed(item, error, attempt, started, finished)

    def _schedule_retry(
        self, seq: int, item: Any, attempt: int, errors: list[BaseException], delay: float
    ) -> None:
        def requeue() -> None:
            with self._lock:
                if self._retry_waiting.pop(seq, None) is None or self._stopped:
                    return
                self._retry_queue.append((seq, item, attempt, errors))
            self._kick()

        # Under the lock (as from _expire): the watchdog calls back outside its
        # own lock, and a virtual-time scheduler never calls back synchronously.
        with self._lock:
            if self._stopped:
                return
            if self.tracker is not None:
                self.tracker.retried += 1
            self._retry_waiting[seq] = (item, call_later(delay, requeue, self._virtual))

    def _expire(self, cursor: _Cursor, running: _Running) -> None:
        """The watchdog: a job ran past its timeout. Report it now; its slot stays busy.

        The jobs behind it in its slot's batch, not yet started, go to the ready
        queue (they keep their sequence numbers), so other slots run them. The
        timer thread serves every pool: a slot delivers the result.
        """
        with _handing_off():
            self._expire_now(cursor, running)

    def _expire_now(self, cursor: _Cursor, running: _Running) -> None:
        seq, attempt = running.key
        item = running.item
        error = JobTimeout(
            f"job {self._describe(item)} ran past its timeout of {running.timeout:g}s"
        )
        with self._lock:
            if self._timed.pop(running.key, None) is not _RUNNING:
                return  # the function returned first
            self._counters.add_abandoned(1)
            if self._stopped:
                return  # nothing more is reported; the slot still counts it out
            released = cursor.release()
            self._retry_queue.extend((seq_, rest, 1, []) for seq_, rest in released)
            outcome = self._failure(
                seq, item, error, attempt, running.errors, running.started, _monotonic()
            )
            if outcome is not _DEFERRED:
                fatal = self._fatal(outcome)
                if fatal is not None:
                    self._deliver_locked(seq, [], fatal, False)
                else:
                    self._deliver_locked(seq, [outcome], None, False)
        if running.token is not self._token:
            running.token.cancel(JobTimeout(str(error)))
        if released:
            self._kick()

    def _timeout_of(self, item: Any) -> float | None:
        return self._policy.timeout

    def _retry_of(self, item: Any) -> Retry | None:
        return self._policy.retry

    def _wants_token(self, item: Any) -> bool:
        raise NotImplementedError

    def _is_async(self, item: Any) -> bool:
        """True if the item's function is a coroutine function."""
        raise NotImplementedError

    # -- remote mode (processes, Dask) ---------------------------------------------------------

    def _spec(self, item: Any) -> Call:
        """The ``(fn, args, kwargs)`` a remote backend runs for ``item``."""
        raise NotImplementedError

    def _remote_outcomes(self, items: list[Any], token: CancelToken) -> list[Outcome]:
        """Run items on the remote backend; a crash is every item's outcome."""
        assert self._remote is not None
        try:
            return self._remote.run_chunk([self._spec(item) for item in items], token)
        except WorkerCrashed as crash:
            # Without the traceback: rxpool's own frames, which hold the run,
            # would live as long as the results do.
            return failed_outcomes(crash.with_traceback(None), len(items))
        except Cancelled as error:  # e.g. the backend was closed
            if token.cancelled:
                raise
            return failed_outcomes(error.with_traceback(None), len(items))

    def _remote_call(self, item: Any, token: CancelToken) -> Any:
        ok, value, _ = self._remote_outcomes([item], token)[0]
        if ok:
            return value
        raise value

    def _remote_batch(self, items: list[Any]) -> tuple[list[tuple[bool, Any, float, float]], bool]:
        """Run a chunk; ``([(ok, value, started, finished)], complete)`` on the run's clock."""
        started = _monotonic()
        try:
            outcomes = self._remote_outcomes(items, self._token)
        except Cancelled:  # the run is stopping and reports these itself
            self._chunk_stats.compute = None
            return [], False
        self._chunk_stats.compute = sum(seconds for _, _, seconds in outcomes)
        return _timed(outcomes, started, _monotonic()), True

    def _remote_results(
        self, items: list[Any], timed: list[tuple[bool, Any, float, float]], sink: list[Any]
    ) -> tuple[list[Any], Exception | None, bool]:
        """A chunk's outcomes as `_execute` returns them (``timed`` may be short: stopping)."""
        raise NotImplementedError

    def _plain(self, items: list[Any]) -> bool:
        """Remote mode: no timeout or retry applies to these items, so they may be queued."""
        return not self._tracked

    def _lane_slot(self) -> None:
        """A slot on a backend with lanes: its next chunk waits at the worker.

        Up to `_LANE_DEPTH` chunks are in flight on the slot's lane, run one
        after the other by one worker, so the worker starts the next chunk as
        soon as it returns one instead of waiting for the round trip to this
        thread; the second only while every slot has work (`_may_queue`), so
        a job never waits behind another while a worker is free for it. The
        slot still runs one chunk at a time. Items with a timeout
        or a retry policy go alone, through `Backend.run_chunk`, once the lane
        is empty (a timeout must not count time spent queued).
        """
        assert self._open_lane is not None
        lane: Lane | None = None
        inflight: deque[tuple[int, list[Any], float]] = deque()  # first, items, when sent
        batch = self._chunk or 1
        back = 0.0  # when the last chunk's outcomes came back
        cpu_mark = _thread_time()  # this thread's CPU time when that happened
        counted = 0  # this slot's part of _at_workers
        holding = False  # this slot's part of _lanes_busy

        def hold(now: bool) -> None:
            nonlocal holding
            if now != holding:
                with self._lock:
                    self._lanes_busy += 1 if now else -1
                holding = now

        def recount(taking: int = 0) -> None:
            """Count the jobs in flight that wait at the worker (and ``taking`` more).

            The worker runs one job of the slot's chunks at a time. Counted
            before the jobs are taken and after they are delivered, so that
            statistics never show more jobs running than slots.
            """
            nonlocal counted
            waiting = max(0, sum(len(items) for _, items, _ in inflight) + taking - 1)
            if waiting != counted:
                with self._lock:
                    self._at_workers += waiting - counted
                counted = waiting

        try:
            while True:
                if len(inflight) < _LANE_DEPTH and (not inflight or self._may_queue()):
                    recount(batch)
                    taken = self._take(batch, keep=bool(inflight))
                    if type(taken) is not tuple:
                        recount()
                    if type(taken) is float:  # only with nothing in flight
                        self._wait_for_token(taken)
                        continue
                    if taken is not None:
                        hold(True)
                        first, items, retry_state = taken  # type: ignore[misc]
                        if retry_state is None and self._plain(items):
                            if lane is None:
                                lane = self._open_lane(self._token)
                            lane.send([self._spec(item) for item in items])
                            inflight.append((first, items, _monotonic()))
                            recount()
                            continue
                        recount()
                        while inflight:  # the careful items wait for the lane to empty
                            back = self._lane_receive(lane, inflight, back)[1]
                            recount()
                        if lane is not None:
                            lane.close()
                            lane = None
                        outcome = self._execute(first, items, retry_state, [])
                        hold(False)
                        self._deliver(first, *outcome)
                        continue
                    if not inflight:
                        return  # _take counted the slot out
                assert lane is not None
                size, back, compute, elapsed = self._lane_receive(lane, inflight, back)
                recount()
                cpu_now = _thread_time()
                cpu, cpu_mark = cpu_now - cpu_mark, cpu_now
                batch = self._next_chunk(size, elapsed, compute, cpu, batch)
                if not inflight:
                    hold(False)
                    lane.close()  # the process is free for other slots until there is work
                    lane = None
        except BaseException as error:
            # Only a bug or an interrupt gets here; the run must still end.
            with self._lock:
                self._active -= 1
            self._fail(error if isinstance(error, Exception) else RuntimeError(repr(error)))
        finally:
            hold(False)
            if counted:
                with self._lock:
                    self._at_workers -= counted
            if lane is not None:
                lane.close()

    def _may_queue(self) -> bool:
        """Whether a lane slot may queue a chunk behind the one its worker runs.

        Only when the run has all its slots and each holds work: otherwise a
        slot that has none (just started, or about to be) would take it, and
        queued, it would wait for a job while a worker is free. Nor, when the
        run's length is known, once fewer jobs are left than slots: the last
        ones go to the slots that free up first. (Read without the lock: a
        slot seeing an old count at worst waits for its chunk's round trip
        once, or queues one chunk as before.)
        """
        active = self._active
        if active < self._n or self._lanes_busy < active:
            return False
        remaining = self._remaining()
        return remaining is None or remaining >= active

    def _lane_receive(
        self, lane: Lane | None, inflight: deque[tuple[int, list[Any], float]], back: float
    ) -> tuple[int, float, float | None, float]:
        """Deliver the oldest chunk in flight: ``(size, when back, compute, elapsed)``."""
        assert lane is not None
        first, items, sent = inflight.popleft()
        began = max(sent, back)  # queued behind a chunk, it began when that one came back
        try:
            outcomes = lane.receive()
        except WorkerCrashed as crash:
            outcomes = failed_outcomes(crash.with_traceback(None), len(items))
        except Cancelled as error:
            back = _monotonic()
            if self._token.cancelled:  # the run is stopping and reports these itself
                return len(items), back, None, back - began
            outcomes = failed_outcomes(error.with_traceback(None), len(items))
        back = _monotonic()
        compute = sum(seconds for _, _, seconds in outcomes)
        self._deliver(first, *self._remote_results(items, _timed(outcomes, began, back), []))
        return len(items), back, compute, back - began

    def _call(self, item: Any, token: CancelToken) -> Any:
        raise NotImplementedError

    def _success(self, item: Any, value: Any, attempt: int, started: float, end: float) -> Any:
        raise NotImplementedError

    def _failed(self, item: Any, error: Exception, attempt: int, started: float, end: float) -> Any:
        raise NotImplementedError

    def _fatal(self, outcome: Any) -> Exception | None:
        """The error that ends the stream if this outcome is one (it is not emitted then)."""
        return None

    def _describe(self, item: Any) -> str:
        return repr(item)

    # -- emitter ------------------------------------------------------------------------------

    def _deliver(
        self, first: int, outcomes: list[Any], fatal: Exception | None, deferred: bool
    ) -> None:
        """Deliver final outcomes for ``first, first + 1, ...``; ``_DEFERRED`` ones come later.

        Called by slots: while the subscriber is busy with other results, the
        slot waits for it here before it takes more work (backpressure).
        """
        with self._lock:
            self._deliver_locked(first, outcomes, fatal, deferred)
        if self._emitter.pending:
            self._emitter.drain()

    def _deliver_locked(
        self, first: int, outcomes: list[Any], fatal: Exception | None, deferred: bool
    ) -> None:
        """`_deliver`, under ``_lock``."""
        if self._stopped:
            return
        count = len(outcomes)
        if self._count_batch is not None:
            self._count_batch.succeeded += count - outcomes.count(_DEFERRED) if deferred else count
        # Each outcome goes where it waits (the outbox, the reorder map) before
        # it leaves `_pending`: statistics, read without the lock, never find
        # it in neither (see _waiting).
        if deferred:
            delivered = [(first + i, o) for i, o in enumerate(outcomes) if o is not _DEFERRED]
            if self._tracked:
                for seq, _ in delivered:
                    del self._inflight[seq]
            if self._ordered:
                self._reorder.update(delivered)
                self._pending -= len(delivered)
                self._emit_in_order()
            else:
                self._emit_delivered([o for _, o in delivered])
        else:
            if self._tracked:
                for seq in range(first, first + count):
                    del self._inflight[seq]
            if not self._ordered:
                self._emit_delivered(outcomes)
            elif first == self._next_emit:
                self._next_emit = first + count
                self._emit_delivered(outcomes)
                self._emit_in_order()
            else:
                self._reorder.update(zip(range(first, first + count), outcomes, strict=True))
                self._pending -= count
        if fatal is not None:
            if not self._ordered:
                self._fail(fatal)  # as results finish: the error ends the stream now
                return
            # In input order: the items before the failed one come first, then
            # the error. Nothing more is taken meanwhile (see _room).
            at = first + count
            if self._fatal_hold is None or at < self._fatal_hold[0]:
                self._fatal_hold = (at, fatal)
        hold = self._fatal_hold
        if hold is not None:
            if self._next_emit >= hold[0]:
                self._fail(hold[1])
            return
        self._maybe_complete()

    def _emit_delivered(self, outcomes: list[Any]) -> None:
        """Emit outcomes that leave `_pending` now: queued first, then counted out."""
        self._emitter.put_all(outcomes)
        self._pending -= len(outcomes)

    def _emit_in_order(self) -> None:
        """Emit what the reorder map holds from ``_next_emit`` on (under ``_lock``)."""
        reorder = self._reorder
        seq = self._next_emit
        if seq in reorder:
            put = self._emitter.put  # straight there: never in neither (see _waiting)
            while seq in reorder:
                put(reorder.pop(seq))
                seq += 1
            self._next_emit = seq
        if self._window_blocked and not self._stopped:
            self._window_blocked = False
            self._kick()

    def _emit_all(self, values: Iterable[Any]) -> None:
        """Queue values for the observer and drain the queue (under ``_lock``)."""
        self._emitter.put_all(values)

    def _terminate(self, error: Exception | None) -> None:
        """Queue the terminal notification after what is queued (under ``_lock``)."""
        self._emitter.put_terminal(error)

    def _emit(self) -> None:
        """Deliver what the emitter holds; called with no run lock held (see `_RunLock`).

        On a thread that must not run the observer (`_here.handoff`: a token
        cancel, a pool close, the timer thread) a slot delivers instead (#28).
        """
        if _here.handoff:
            if self._drain_queued:
                return  # the slot's drain delivers this too
            self._drain_queued = True
            if self._hand_off():
                return
            self._drain_queued = False  # no slot can: deliver here
        self._emitter.drain(block=False)

    def _hand_off(self) -> bool:
        """Have a slot's thread (or the loop) drain the emitter; False if none can."""
        try:
            if self._loop_slots is not None:
                self._loop_slots.spawn(self._adrain)
            else:
                self._slots.spawn(self._drain_task)
        except Exception:  # the threads or the loop are closing
            return False
        return True

    def _drain_task(self) -> None:
        self._drain_queued = False  # first: what is queued from now on needs a new one
        self._emitter.drain()

    async def _adrain(self) -> None:
        self._drain_task()

    def _subscriber_failed(self, error: Exception, value: Any) -> None:
        """The subscriber's on_next raised (the emitter is closed): cancel the run, report once."""
        with self._lock:
            stopped, self._stopped = self._stopped, True
        self._token.cancel("the subscriber's on_next raised")
        try:
            self._observer.on_error(error)
        except Exception:
            _log.exception("rxpool: on_next raised for %r and on_error raised too", value)
        if stopped:
            self._retire()  # _finish ran already, and left it to the terminal
        else:
            self._finish()

    def _maybe_complete(self) -> None:
        """End the run once the source is done and nothing is pending (under ``_lock``)."""
        if self._stopped or not self._source_done or self._pending or self._queued():
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
            self._emitter.close()
            stopped, self._stopped = self._stopped, True
        if stopped:
            self._retire()  # its terminal notification, if queued, is not delivered now
            return
        self._token.cancel("the subscription was disposed")
        self._finish()

    def stop_intake(self) -> None:
        """Take nothing more from the source; queued items end as `Cancelled` (pool close)."""
        with _handing_off():
            self._stop_intake()

    def _stop_intake(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._source_done = True
            self._cancel_queued(Cancelled("the pool was closed"))
            self._maybe_complete()
        self._source_subscription.dispose()

    def _cancel_queued(self, error: Cancelled) -> None:
        """Give up items not yet started (under ``_lock``)."""
        self._buffer.clear()
        self._retry_queue.clear()
        for _, timer in self._retry_waiting.values():
            timer.cancel()
        self._retry_waiting.clear()

    def _finish(self) -> None:
        """Release what the run holds; called once, after ``_stopped`` is set."""
        with self._lock:
            self._buffer.clear()
            self._reorder.clear()
            self._retry_queue.clear()
            waiting = list(self._retry_waiting.values())
            self._retry_waiting.clear()
            self._space.notify_all()
        for _, timer in waiting:
            timer.cancel()
        self._source_subscription.dispose()
        if self._loop_slots is not None:
            self._loop_slots.cancel()  # slot tasks still awaiting a job or the source
        if _log.isEnabledFor(logging.DEBUG):
            _log.debug(
                "run %x ends: %d items taken, %d without a delivered outcome",
                id(self),
                self._seq,
                self._pending,
            )
        link, self._token_link = self._token_link, None
        if link is not None:
            link.dispose()
        self._token.detach()
        if self._emitter.closed:
            self._retire()
        # else the terminal notification is queued: the emitter retires the run after it

    def _retire(self) -> None:
        """Tell the owner the run is over, once: after its terminal notification, or dispose."""
        with self._lock:
            if self._retired:
                return
            self._retired = True
        if self._progress is not None:
            self._progress.close()  # after the last result was counted
        if self._on_finished is not None:
            self._on_finished(self)


class _Batch:
    """A batch of fast jobs in progress: its outcomes so far, and how many were delivered.

    ``pending`` holds the items not started yet (None: the batch runs on a
    path that cannot give them up). The slot takes them from the left, the
    sweeper takes the last ones from the right for other slots (``stolen``
    counts them): each ``deque`` call is atomic, so each item goes to one.
    """

    __slots__ = ("delivered", "done", "first", "outcomes", "pending", "since", "size", "stolen")

    def __init__(self, first: int, size: int) -> None:
        self.first = first
        self.size = size
        self.outcomes: list[Any] = []
        self.delivered = 0
        self.done = False
        self.since = _perf_counter()  # started, or last flushed
        self.pending: deque[Any] | None = None
        self.stolen = 0


class _Running:
    """The timed attempt a slot is running: what the watchdog needs to report it."""

    __slots__ = ("deadline", "errors", "item", "key", "started", "timeout", "token")

    def __init__(
        self,
        key: tuple[int, int],
        item: Any,
        errors: list[BaseException],
        started: float,
        timeout: float,
        token: CancelToken,
    ) -> None:
        self.key = key
        self.item = item
        self.errors = errors
        self.started = started
        self.timeout = timeout
        self.token = token
        self.deadline = math.inf  # set when armed, on the run's clock (see _Cursor.arm)


class _Cursor:
    """A batch being run by one slot, as the watchdog sees it.

    It holds the running attempt's deadline and one watchdog timer for the
    whole batch: the timer fires at the earliest deadline armed, and then
    expires the attempt running, or re-arms for its later deadline. The
    watchdog may also take back the items not started yet. A job token made
    for the batch's cooperative jobs is reused until a timeout cancels it.
    """

    __slots__ = (
        "_due",
        "_end",
        "_lock",
        "_run",
        "_timer",
        "first",
        "index",
        "items",
        "running",
        "token",
    )

    def __init__(self, run: _Run[Any, Any], first: int, items: list[Any]) -> None:
        self._run = run
        self.first = first
        self.items = items
        self._lock = Lock()
        self._end = len(items)
        self._timer: Timer | None = None
        self._due = 0.0  # when the timer fires, on the run's clock
        self.running: _Running | None = None
        self.token: CancelToken | None = None
        self.index = 0

    def claim(self, index: int) -> bool:
        """The slot is about to start ``items[index]``: False if it was handed away."""
        with self._lock:
            if index >= self._end:
                return False
            self.index = index
            return True

    def job_token(self) -> CancelToken:
        token = self.token
        if token is None or token.cancelled:
            token = self.token = CancelToken(parent=self._run._token)
        return token

    def arm(self, running: _Running) -> None:
        """The slot starts a timed attempt: make sure a timer fires by its deadline.

        The batch's one timer may be set for a batch mate's later deadline: a
        shorter timeout behind a longer one re-arms it (#28), a longer one
        leaves it (`_fire` re-arms for what runs then).
        """
        timeout = running.timeout
        due = running.deadline = self._run._clock_now() + timeout  # one clock with _fire's
        with self._lock:
            self.running = running
            timer = self._timer
            if timer is None or due < self._due:
                if timer is not None:
                    timer.cancel()
                self._timer = call_later(timeout, self._fire, self._run._virtual)
                self._due = due

    def disarm(self) -> None:
        with self._lock:
            self.running = None

    def _fire(self) -> None:
        """The watchdog's callback: expire the running attempt, or wait for its deadline."""
        with self._lock:
            self._timer = None
            running = self.running
            if running is None:
                return
            now = self._run._clock_now()
            if now < running.deadline:
                self._timer = call_later(running.deadline - now, self._fire, self._run._virtual)
                self._due = running.deadline
                return
        self._run._expire(self, running)

    def release(self) -> list[tuple[int, Any]]:
        """Take back the items after the running one: ``(seq, item)`` pairs."""
        with self._lock:
            start = self.index + 1
            rest = [(self.first + i, self.items[i]) for i in range(start, self._end)]
            self._end = start
            return rest

    def close(self) -> None:
        """The batch is over: cancel its timer, let go of its token."""
        with self._lock:
            timer, self._timer = self._timer, None
            self.running = None
        if timer is not None:
            timer.cancel()
        if self.token is not None:
            self.token.detach()


class _Failure:
    """``map_concurrent``: the final error of one item, which ends the stream."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


class MapRun(_Run[_T, _R]):
    """``map_concurrent``: values out; the first final error ends the stream with that error."""

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
        self._fn_async = is_coroutine_function(fn)
        if self._fn_async and self._loop_slots is None:
            self._tracked = True  # thread mode: each call goes through _call

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

    def _execute(
        self, first: int, items: list[Any], retry_state: Any, sink: list[Any]
    ) -> tuple[list[Any], Exception | None, bool]:
        if self._tracked:
            return self._run_careful(first, items, retry_state)
        if self._remote is not None:
            return self._remote_results(items, self._remote_batch(items)[0], sink)
        return self._run_fast(deque(items), sink)

    def _fast(self, items: list[Any]) -> bool:
        return not self._tracked and self._remote is None

    def _run_fast(
        self, pending: deque[Any], sink: list[Any]
    ) -> tuple[list[Any], Exception | None, bool]:
        append = sink.append
        take = pending.popleft
        fn = self._fn
        token = self._token if self._pass_token else None
        try:
            while not self._stopped:
                try:
                    item = take()
                except IndexError:
                    break
                append(fn(item) if token is None else fn(item, token=token))
        except BaseException as raised:
            return sink, job_error(raised), False
        return sink, None, False

    def _remote_results(
        self, items: list[Any], timed: list[tuple[bool, Any, float, float]], sink: list[Any]
    ) -> tuple[list[Any], Exception | None, bool]:
        append = sink.append
        for ok, value, _, _ in timed:
            if not ok:
                return sink, value, False
            append(value)
        return sink, None, False

    def _wants_token(self, item: Any) -> bool:
        return self._pass_token or self._remote is not None  # a timeout cancels the chunk

    def _is_async(self, item: Any) -> bool:
        return self._fn_async

    def _spec(self, item: Any) -> Call:
        if self._pass_token:
            return (_no_token, (self._fn,), {})
        return (self._fn, (item,), {})

    def _call(self, item: Any, token: CancelToken) -> Any:
        if self._remote is not None:
            return self._remote_call(item, token)
        value: Any = self._fn(item, token=token) if self._pass_token else self._fn(item)
        if self._fn_async and self._loop_slots is None:
            return _aio.run_coroutine(value, token, self._loop)  # a worker thread waits
        return value

    def _success(self, item: Any, value: Any, attempt: int, started: float, end: float) -> Any:
        return value

    def _failed(self, item: Any, error: Exception, attempt: int, started: float, end: float) -> Any:
        return _Failure(error)

    def _fatal(self, outcome: Any) -> Exception | None:
        return outcome.error if type(outcome) is _Failure else None


class JobRun(_Run[Job[Any], Result[Any]]):
    """``run_jobs`` / ``WorkerPool.run``: one `Result` per job taken, errors as values."""

    def __init__(self, observer: abc.ObserverBase[Result[Any]], policy: Policy, **kw: Any) -> None:
        super().__init__(observer, policy, **kw)
        self._tracked = True  # every job taken is accounted for, even on cancel

    def _counter(self, tracker: Tracker) -> Callable[[Any], None] | None:
        return tracker.result

    def _admit(self, item: Any) -> Any:
        if type(item) is not Job and not isinstance(item, Job):
            raise TypeError(f"jobs must be rxpool.Job instances, got {type(item).__name__}")
        return item

    def _enqueue(self, item: Any) -> None:
        buffer = self._buffer
        if item.priority and type(buffer) is deque:
            # The first job with a priority turns the FIFO into a priority buffer.
            buffer = self._buffer = PriorityBuffer(buffer)
        buffer.append(item)

    def _submitted(self, count: int) -> None:
        """Count jobs that get a result without a slot taking them (under ``_lock``)."""
        if self.tracker is not None:
            self.tracker.taken += count

    def _drop_locked(self, item: Any) -> None:
        size = self._policy.buffer_size
        now = _monotonic()
        error = Dropped(f"dropped: the buffer of {size} jobs was full")
        self._submitted(1)
        self._emit_all([Result(None, error, item.descriptor, 1, now, now)])

    def _watch_token(self) -> None:
        parent = self._token._parent
        if parent is None:
            return
        if parent.cancelled:
            self._cancel_from_caller()
        else:
            self._token_link = parent.on_cancel(self._cancel_from_caller)

    def _execute(
        self, first: int, items: list[Any], retry_state: Any, sink: list[Any]
    ) -> tuple[list[Any], Exception | None, bool]:
        if retry_state is not None or not self._plain(items):
            return self._run_careful(first, items, retry_state)
        if self._remote is not None:
            return self._remote_results(items, self._remote_batch(items)[0], [])
        return self._run_fast(deque(items), sink)

    def _fast(self, items: list[Any]) -> bool:
        return self._remote is None and self._plain(items)

    def _run_fast(
        self, pending: deque[Any], sink: list[Any]
    ) -> tuple[list[Any], Exception | None, bool]:
        fail_fast = self._policy.fail_fast
        token = self._token
        results = sink
        append = results.append
        take = pending.popleft
        while not self._stopped:
            try:
                job = take()
            except IndexError:
                break
            started = _monotonic()
            try:
                if job.wants_token:
                    value = job.fn(*job.args, token=token, **job.kwargs)
                else:
                    value = job.fn(*job.args, **job.kwargs)
            except BaseException as raised:
                error = job_error(raised)
                if fail_fast:
                    return results, error, False  # errgroup: the error, not its Result
                append(Result(None, error, job.descriptor, 1, started, _monotonic()))
            else:
                append(Result(value, None, job.descriptor, 1, started, _monotonic()))
        return results, None, False

    def _plain(self, items: list[Any]) -> bool:
        policy = self._policy
        if policy.timeout is not None or policy.retry is not None:
            return False
        if self._adaptive is not None or self._breaker is not None:
            return False
        for job in items:  # a loop, not any(): this runs for every batch
            if job.timeout is not None or job.retry is not None or job.is_async:
                return False
        return True

    def _remote_results(
        self, items: list[Any], timed: list[tuple[bool, Any, float, float]], sink: list[Any]
    ) -> tuple[list[Any], Exception | None, bool]:
        fail_fast = self._policy.fail_fast
        append = sink.append
        for job, (ok, value, started, finished) in zip(items, timed, strict=False):
            if ok:
                append(Result(value, None, job.descriptor, 1, started, finished))
            elif fail_fast:
                return sink, value, False
            else:
                append(Result(None, value, job.descriptor, 1, started, finished))
        return sink, None, False

    def _spec(self, item: Any) -> Call:
        if item.wants_token:
            return (_no_token, (item.fn,), {})
        return (item.fn, item.args, item.kwargs)

    def _timeout_of(self, item: Any) -> float | None:
        return item.timeout if item.timeout is not None else self._policy.timeout

    def _retry_of(self, item: Any) -> Retry | None:
        return item.retry if item.retry is not None else self._policy.retry

    def _wants_token(self, item: Any) -> bool:
        return bool(item.wants_token) or self._remote is not None  # a timeout cancels the chunk

    def _is_async(self, item: Any) -> bool:
        return bool(item.is_async)

    def _call(self, item: Any, token: CancelToken) -> Any:
        if self._remote is not None:
            return self._remote_call(item, token)
        if item.wants_token:
            value = item.fn(*item.args, token=token, **item.kwargs)
        else:
            value = item.fn(*item.args, **item.kwargs)
        if item.is_async and self._loop_slots is None:
            return _aio.run_coroutine(value, token, self._loop)  # a worker thread waits
        return value

    def _success(self, item: Any, value: Any, attempt: int, started: float, end: float) -> Any:
        return Result(value, None, item.descriptor, attempt, started, end)

    def _failed(self, item: Any, error: Exception, attempt: int, started: float, end: float) -> Any:
        return Result(None, error, item.descriptor, attempt, started, end)

    def _fatal(self, outcome: Any) -> Exception | None:
        if self._policy.fail_fast and outcome.error is not None:
            return outcome.error  # type: ignore[no-any-return]
        return None

    def _describe(self, item: Any) -> str:
        return repr(item.descriptor.id)

    def _cancel_queued(self, error: Cancelled) -> None:
        now = _monotonic()

        def cancelled(job: Job[Any]) -> Result[Any]:
            return Result(None, copy_of(error), job.descriptor, 1, now, now)

        fresh = [cancelled(job) for job in self._buffer]
        self._submitted(len(fresh))
        waiting = [seq for seq, *_ in self._retry_queue] + list(self._retry_waiting)
        numbered = {seq: cancelled(self._inflight.pop(seq)) for seq in waiting}
        self._pending -= len(numbered)
        super()._cancel_queued(error)
        if self._ordered:
            self._reorder.update(numbered)
            self._emit_in_order()
        else:
            self._emit_all(numbered[seq] for seq in sorted(numbered))
        self._emit_all(fresh)

    def withdraw(self, job: Job[Any], error: Cancelled) -> bool:
        """Give a job still waiting in the buffer a Cancelled result now: it never starts.

        False when it is not waiting here: taken by a slot already, or the run has ended.
        """
        with self._lock:
            buffer = self._buffer
            if self._stopped or type(buffer) is not deque:
                return False  # a priority buffer holds no submitted job
            for index, waiting in enumerate(buffer):
                if waiting is job:
                    del buffer[index]
                    break
            else:
                return False
            now = _monotonic()
            self._submitted(1)
            self._emit_all([Result(None, error, job.descriptor, 1, now, now)])
            self._maybe_complete()
        return True

    def _taken_while_stopping(self, items: list[Any]) -> None:
        parent = self._token._parent
        assert parent is not None
        now = _monotonic()
        self._submitted(len(items))
        self._emitter.put_all(
            Result(None, parent.new_error(), job.descriptor, 1, now, now) for job in items
        )
        super()._taken_while_stopping(items)

    def _cancel_from_caller(self) -> None:
        """The caller's token was cancelled: every job taken gets a Cancelled result, then done.

        Runs on the cancelling thread, which only queues them: a slot delivers (#28).
        """
        with _handing_off():
            self._cancel_now()

    def _cancel_now(self) -> None:
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

            undelivered = dict(zip(self._inflight, cancelled(self._inflight.values()), strict=True))
            undelivered.update(self._reorder)
            self._emitter.put_all(undelivered[seq] for seq in sorted(undelivered))
            self._submitted(len(self._buffer))
            self._emitter.put_all(cancelled(self._buffer))
            self._inflight.clear()
            if self._pulling:
                # A slot is pulling jobs from the source right now: they are taken
                # too, so it reports them and ends the stream when it returns.
                self._terminal_deferred = True
            else:
                self._terminate(None)
        self._token.cancel(parent.new_error())
        self._finish()


def _no_token(fn: Callable[..., Any]) -> Any:
    """What a remote worker runs for a function that declares ``token``: a clear failure."""
    name = getattr(fn, "__qualname__", repr(fn))
    raise TypeError(
        f"{name} declares a token parameter, but a CancelToken cannot cross into another"
        " process: on the process and Dask backends, use a timeout or hard_cancel instead"
    )


def _timed(
    outcomes: list[Outcome], started: float, finished: float
) -> list[tuple[bool, Any, float, float]]:
    """``(ok, value, started, finished)`` per outcome: the chunk's wall time spread
    over its calls in proportion to their own time (evenly when it is not known)."""
    total = sum(seconds for _, _, seconds in outcomes)
    wall = finished - started
    timed = []
    at = started
    for ok, value, seconds in outcomes:
        share = seconds / total if total > 0 else 1 / len(outcomes)
        end = at + wall * share
        timed.append((ok, value, at, end))
        at = end
    return timed
