"""rxpool.Executor: a `concurrent.futures.Executor` whose work runs on rxpool's engine.

Two runs serve it. ``submit`` feeds one job run (a `JobRun` over a Subject,
``max_workers`` slots, in submission order); each job's function is a wrapper
on a slot thread that marks its future running (or skips it, cancelled) and
settles it from the job's `Result`. On a process or Dask backend that
wrapper hands its one call to the backend and waits, so a future is running
exactly while a worker has its call, as in `ProcessPoolExecutor`. ``map``
subscribes one value run per call (a `MapRun`, ordered, chunked on remote
backends): no future per item, results handed to the iterating thread
through a deque that wakes it only when it waits.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures.process import BrokenProcessPool
from concurrent.futures.thread import BrokenThreadPool
from typing import Any, Final, ParamSpec, TypeVar

from reactivex import Observable, abc
from reactivex.subject import Subject

from ._adaptive import Adaptive, check_limit
from ._checks import check_callable, check_count
from ._dispatch import (
    ADAPTIVE_REMOTE,
    BackendSpec,
    check_backend,
    job_observable,
    resolve_backend,
    value_observable,
)
from ._engine import Counters, _Run
from ._exceptions import Cancelled
from ._init import Initialized, InitializerFailed
from ._intake import Policy, make_policy
from ._job import Job, Result
from ._remote import Call
from ._retry import Retry
from ._stats import PoolStats, Statistics
from ._threads import ThreadRunner
from ._token import CancelToken
from .backends import Backend, ProcessBackend

__all__ = ["Executor"]

_P = ParamSpec("_P")
_R = TypeVar("_R")
_T = TypeVar("_T")

# Threads beyond ``max_workers`` (while a map run and the submit run overlap)
# wait this long for work before they exit.
_LINGER: Final = 1.0
_numbers = itertools.count()
_DONE: Final = object()


def _default_workers(processes: bool) -> int:
    """What `ThreadPoolExecutor` (``processes``: `ProcessPoolExecutor`) picks."""
    count = getattr(os, "process_cpu_count", os.cpu_count)() or 1
    if processes:
        return min(count, 61) if sys.platform == "win32" else count
    return min(32, count + 4)


class _NotRun(Cancelled):
    """A submitted job whose future was cancelled before a worker took it (it did not run)."""


class Executor(concurrent.futures.Executor):
    """A `concurrent.futures.Executor` on rxpool's engine: a drop-in for `ThreadPoolExecutor`.

    ``submit``, ``map``, ``shutdown`` and the context manager keep the
    standard contract, so the executor works with `concurrent.futures.wait`,
    `~concurrent.futures.as_completed`, ``loop.run_in_executor`` and any
    library that takes an Executor. What rxpool adds: ``map`` is lazy and
    several times faster (no future per item; inputs are pulled as workers
    free up), the same executor runs on processes or a Dask cluster, and the
    options below apply to every job.

    Args:
        max_workers: Jobs running at once. None: as `ThreadPoolExecutor`
            (``min(32, cpus + 4)``), or as `ProcessPoolExecutor` (the CPU
            count) for ``backend="process"`` or a `ProcessBackend`.
        backend: ``"thread"`` (default), ``"asyncio"``, ``"process"`` (worker
            processes of the executor's own, stopped at shutdown) or a backend
            object from `rxpool.backends` (`ProcessBackend`, `DaskBackend`),
            which the caller closes.
        thread_name_prefix: The worker threads are ``{prefix}_0``, ``{prefix}_1``...
        initializer: Called with ``initargs`` once in each worker thread (each
            worker process, on a remote backend) before its first job. If it
            raises, the executor is broken: the pending futures and later
            ``submit`` calls raise `concurrent.futures.BrokenExecutor`
            (`BrokenThreadPool` / `BrokenProcessPool`).
        timeout: Seconds each job may run; then its future raises `JobTimeout`
            (and ``map`` raises it at that item). Not ``map``'s ``timeout``,
            which bounds the whole iteration.
        retry: A `Retry` policy for failed jobs (backoff holds no worker).
        rate: At most this many jobs start per second (a token bucket).
        burst: Jobs that may start at once after a quiet spell.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: ``max_workers`` < 1, or an invalid option.
    """

    def __init__(
        self,
        max_workers: int | Adaptive | None = None,
        *,
        backend: BackendSpec = "thread",
        thread_name_prefix: str = "",
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        timeout: float | None = None,
        retry: Retry | None = None,
        rate: float | None = None,
        burst: int = 1,
    ) -> None:
        self._backend = check_backend(backend)
        if max_workers is None:
            processes = self._backend == "process" or isinstance(self._backend, ProcessBackend)
            max_workers = _default_workers(processes)
        elif isinstance(max_workers, int) and not isinstance(max_workers, bool) and max_workers < 1:
            raise ValueError(f"max_workers must be greater than 0, got {max_workers}")
        self._limit: int | Adaptive = max_workers
        self._workers = check_limit("max_workers", max_workers)
        if not isinstance(thread_name_prefix, str):
            raise TypeError(
                f"thread_name_prefix must be a str, got {type(thread_name_prefix).__name__}"
            )
        if initializer is not None:
            check_callable("initializer", initializer)
        if not isinstance(initargs, tuple):
            raise TypeError(f"initargs must be a tuple, got {type(initargs).__name__}")
        self._options = {"timeout": timeout, "retry": retry, "rate": rate, "burst": burst}
        self._submit_policy = self._policy()  # checks the options here, at the call
        owned: list[Backend] = []

        def own_processes() -> Backend:
            owned.append(ProcessBackend(self._workers))
            return owned[0]

        self._mode, self._remote, self._loop = resolve_backend(self._backend, own_processes)
        self._owned_backend = owned[0] if owned else None
        if isinstance(self._limit, Adaptive) and self._remote is not None:
            if self._owned_backend is not None:
                self._owned_backend.close()
            raise ValueError(ADAPTIVE_REMOTE)
        self._initialized = (
            None if initializer is None else Initialized(initializer, initargs, self._remote)
        )
        name = thread_name_prefix or f"rxpool-executor-{next(_numbers)}"
        self._runner = ThreadRunner(_LINGER, keep=self._workers, name=name)
        self._lock = threading.RLock()  # a job may settle on the submitting thread
        self._idle = threading.Condition(self._lock)  # notified when the last run ends
        self._runs: set[_Run[Any, Any]] = set()
        self._maps: set[_MapResults[Any]] = set()
        self._futures: dict[Any, concurrent.futures.Future[Any]] = {}
        self._submissions: Subject[Job[Any]] | None = None
        self._shutdown = False
        self._broken: BaseException | None = None
        self.counters = Counters()
        self._stats = PoolStats()

    def _policy(self, **more: Any) -> Policy:
        return make_policy(self._limit, buffer_size=sys.maxsize, **self._options, **more)

    @property
    def max_workers(self) -> int:
        """Jobs running at once."""
        return self._workers

    def submit(
        self, fn: Callable[_P, _R], /, *args: _P.args, **kwargs: _P.kwargs
    ) -> concurrent.futures.Future[_R]:
        """Schedule ``fn(*args, **kwargs)``; a `concurrent.futures.Future` of its value.

        Jobs start in submission order, at most ``max_workers`` at once. The
        future is running while a worker runs the call; ``cancel()`` succeeds
        until then. The job's exception (`JobTimeout` with the ``timeout``
        option, `WorkerCrashed` when its worker process died) is the future's.

        Raises:
            RuntimeError: the executor was shut down.
            concurrent.futures.BrokenExecutor: an initializer failed.
            TypeError: ``fn`` is not callable.
        """
        check_callable("fn", fn)
        future: concurrent.futures.Future[_R] = concurrent.futures.Future()
        job = self._job(fn, args, kwargs, future)
        with self._lock:
            self._check_usable()
            submissions = self._submissions
            if submissions is None:
                submissions = self._submissions = Subject()
                job_observable(
                    submissions,
                    self._submit_policy,
                    scheduler=None,
                    token=None,
                    shared=self._runner,
                    owner=self,
                    mode="thread" if self._mode == "remote" else self._mode,
                    loop=self._loop,
                ).subscribe(self._settle)
            self._futures[job.id] = future
            # Under the lock, so that shutdown cannot complete the run between
            # the check and this: a future submitted is always settled.
            submissions.on_next(job)
        return future

    def _job(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        future: concurrent.futures.Future[Any],
    ) -> Job[Any]:
        """The job for one submitted call. Its function is a module function
        (its signature inspected once, cached: a bound method in that cache
        would keep the executor alive), its arguments the executor and the call."""
        if self._remote is None:
            return Job(_call_here, args=(self, future, fn, args, kwargs))
        spec: Call = (fn, args, kwargs)
        if self._initialized is not None:
            spec = self._initialized.call(spec)
        return Job(_call_remote, args=(self, future, spec))

    def begin(self, future: concurrent.futures.Future[Any]) -> None:
        """On the slot, before the call: mark the future running, or skip the call."""
        if self._broken is not None:
            raise self._broken_error()
        # A retried attempt finds its future running already.
        if not future.running() and not future.set_running_or_notify_cancel():
            raise _NotRun

    def initialize_here(self) -> None:
        """On a worker thread: the initializer, unless it ran on this thread."""
        if self._initialized is not None:
            self._initialized.here(self._break)

    def call_remote(self, spec: Call, token: CancelToken) -> Any:
        """Run one call on the remote backend; its value, or raise its error."""
        assert self._remote is not None
        ok, value, _ = self._remote.run_chunk([spec], token)[0]
        if ok:
            return value
        if isinstance(value, InitializerFailed):
            raise self._break(value) from value
        raise value

    def _settle(self, result: Result[Any]) -> None:
        with self._lock:
            future = self._futures.pop(result.id, None)
        error = result.error
        if future is None or type(error) is _NotRun:
            return  # the wrapper found it cancelled and told its waiters
        if future.cancelled() or (isinstance(error, Cancelled) and future.cancel()):
            # Cancelled while in the buffer (shutdown(cancel_futures=True)):
            # its wrapper never ran, so `wait` and `as_completed` learn it here.
            future.set_running_or_notify_cancel()
            return
        try:
            if error is None:
                future.set_result(result.value)
            else:
                future.set_exception(error)
        except concurrent.futures.InvalidStateError:
            pass  # already settled: cannot happen for a running future, but never raise here

    def map(
        self,
        fn: Callable[..., _R],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> Iterator[_R]:
        """``fn`` over the iterables' items, zipped: an iterator of the values in input order.

        The work starts at the call. Items are pulled from the iterables as
        workers free up; with ``buffersize``, at most that many are taken
        before the loop has consumed their results, so a generator of
        millions of inputs is never materialised. An exception from ``fn`` is
        raised when its item is reached, and the items not yet run are
        cancelled, as when the iterator is closed or left early.

        Args:
            timeout: Seconds from this call: ``next()`` raises `TimeoutError`
                if the next value is not ready by then.
            chunksize: On a process or Dask backend, items per chunk sent to
                a worker; 1 (the default) lets rxpool size chunks by the
                measured time per call (slow calls still go one at a time).
                Ignored on threads.
            buffersize: Items taken ahead of the consumer (None: no bound).

        Raises:
            RuntimeError: the executor was shut down.
            TypeError / ValueError: an argument has the wrong type or value.
        """
        check_callable("fn", fn)
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float)
        ):
            raise TypeError(
                f"timeout must be a number of seconds or None, got {type(timeout).__name__}"
            )
        if isinstance(chunksize, bool) or not isinstance(chunksize, int):
            raise TypeError(f"chunksize must be an int, got {type(chunksize).__name__}")
        if chunksize < 1:
            raise ValueError(f"chunksize must be >= 1, got {chunksize}")
        if buffersize is not None:
            check_count("buffersize", buffersize)
        if not iterables:
            raise TypeError("map() needs at least one iterable of inputs")
        deadline = None if timeout is None else time.monotonic() + timeout
        items: Iterator[Any] = (
            iter(iterables[0]) if len(iterables) == 1 else zip(*iterables, strict=False)
        )
        call: Callable[[Any], Any] = fn if len(iterables) == 1 else _Star(fn)
        if self._initialized is not None:
            call = self._initialized.wrap(call, self._break)
        chunk = chunksize if chunksize > 1 and self._remote is not None else None
        results: _MapResults[_R] = _MapResults(self, buffersize)
        observable: Observable[_R] = value_observable(
            results.source(items),
            self._policy(ordered=True, chunk_size=chunk),
            call,
            shared=self._runner,
            owner=self,
            mode=self._mode,
            remote=self._remote,
            loop=self._loop,
        )
        with self._lock:
            self._check_usable()
            self._maps.add(results)
            results.subscription = observable.subscribe(
                results.on_next, results.on_error, results.on_completed
            )
        try:
            results.start()
        except BaseException:
            results.close()  # the input raised at once: map() raises it
            raise
        return results.values(deadline)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Take no more work; with ``wait``, return once every submitted job has ended.

        ``cancel_futures=True`` cancels the futures (and ``map`` items) not
        started yet. Worker threads (and the executor's own processes) are
        gone once it returns with ``wait=True``. Safe to call twice.
        """
        with self._lock:
            self._shutdown = True
            submissions, self._submissions = self._submissions, None
            futures = list(self._futures.values()) if cancel_futures else []
            maps = list(self._maps)
            runs = list(self._runs)
        for future in futures:
            future.cancel()
        for results in maps:
            results.stop(cancel_futures)
        if cancel_futures:
            for run in runs:
                run.stop_intake()
        if submissions is not None:
            submissions.on_completed()  # the submitted jobs end, then that run
        self._runner.close()
        with self._lock:
            idle = not self._runs
        if idle:
            self._release_backend()
        if not wait or self._runner.owns(threading.current_thread()):
            return
        with self._lock:
            while self._runs:
                self._idle.wait()
        self._runner.join()

    def statistics(self) -> Statistics:
        """A snapshot of the executor's work so far (as `WorkerPool.statistics`)."""
        return self._stats.snapshot(
            self._limit.limit if isinstance(self._limit, Adaptive) else self._limit
        )

    # The runs' owner (see _dispatch.RunOwner).

    def adopt(self, run: _Run[Any, Any]) -> None:
        """Register a run as it subscribes (under ``_lock``, taken by submit and map)."""
        with self._lock:
            self._runs.add(run)
        if run.tracker is not None:
            self._stats.open(run.tracker)

    def forget(self, run: _Run[Any, Any]) -> None:
        """A run has ended."""
        if run.tracker is not None:
            self._stats.close(run.tracker)
        with self._lock:
            self._runs.discard(run)
            if self._runs:
                return
            self._idle.notify_all()
            release = self._shutdown
        if release:
            self._release_backend()

    def _release_backend(self) -> None:
        with self._lock:
            owned, self._owned_backend = self._owned_backend, None
        if owned is not None:
            owned.close()

    def _check_usable(self) -> None:
        if self._broken is not None:
            raise self._broken_error()
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")

    def _break(self, cause: BaseException) -> BaseException:
        """An initializer failed: the executor is broken; the error for the job that saw it."""
        with self._lock:
            if self._broken is None:
                self._broken = cause
        return self._broken_error()

    def _broken_error(self) -> BaseException:
        kind = BrokenThreadPool if self._remote is None else BrokenProcessPool
        where = "thread" if self._remote is None else "worker process"
        error = kind(f"an initializer failed in a {where}: the executor is not usable anymore")
        error.__cause__ = self._broken
        return error

    def forget_map(self, results: _MapResults[Any]) -> None:
        with self._lock:
            self._maps.discard(results)

    def __repr__(self) -> str:
        state = "broken" if self._broken else "shut down" if self._shutdown else "open"
        return f"<rxpool.Executor max_workers={self._workers} backend={self._backend!r} {state}>"


def _call_here(
    executor: Executor,
    future: concurrent.futures.Future[Any],
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """What a slot runs for one submitted call on threads."""
    executor.begin(future)
    executor.initialize_here()
    return fn(*args, **kwargs)


def _call_remote(
    executor: Executor, future: concurrent.futures.Future[Any], spec: Call, *, token: CancelToken
) -> Any:
    """On a process or Dask backend: the slot hands the one call over and waits."""
    executor.begin(future)
    return executor.call_remote(spec, token)


class _Star:
    """``fn(*args)`` for one zipped item: picklable when ``fn`` is."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, args: tuple[Any, ...]) -> Any:
        return self.fn(*args)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Star, (self.fn,))


class _MapResults(Iterator[_T]):
    """One ``Executor.map`` call: its input gate, and the values handed to the loop.

    The run's emitter appends to a deque (one notification at a time) and
    wakes the consumer only when it waits; the consumer pops without a lock
    while values are there: the consumer sets its waiting flag under the
    condition before it looks, and the emitter notifies only when it sees
    the flag, so neither takes a lock per value. ``buffersize``: see `source`.
    """

    def __init__(self, executor: Executor, buffersize: int | None) -> None:
        self._executor = executor
        self._size = buffersize
        self._items: Iterator[Any] = iter(())
        self._subject: Subject[Any] = Subject()
        # Reentrant: a value (or the end) may be emitted on the thread that
        # pushes an item or completes the input, which holds it.
        self._cond = threading.Condition(threading.RLock())
        self._values: deque[_T] = deque()
        self._waiting = False  # the consumer waits for a value
        self._end: object = None  # _DONE, or the error
        self._closed = False  # no more input is taken
        self._exhausted = False  # the input ended
        self._shut = False  # shutdown stopped the input
        self._cancelled = False  # shutdown(cancel_futures=True) stopped the input
        self.subscription: abc.DisposableBase | None = None
        self._iterator: Iterator[_T] | None = None

    def source(self, items: Iterator[Any]) -> Iterator[Any] | Observable[Any]:
        """What the run takes its items from.

        Without ``buffersize``, ``items`` itself, pulled by the slots as they
        free up. With it, a Subject this iterator feeds, ``buffersize`` items
        at the start and one more as each value is consumed (on the
        consumer's thread, as `Executor.map` does in the standard library):
        a slot waiting for input room would hold the items of its batch.
        """
        if self._size is None:
            return self._feed(items)
        self._items = items
        self._subject = Subject()
        return self._subject

    def _feed(self, items: Iterator[Any]) -> Iterator[Any]:
        for item in items:
            if self._closed:
                return
            yield item
        self._exhausted = True

    def start(self) -> None:
        """Once subscribed: the first ``buffersize`` items go in."""
        for _ in range(self._size or 0):
            if not self._push():
                return

    def _push(self) -> bool:
        """One more input item into the run; False once there is none to give."""
        with self._cond:  # shutdown completes the Subject under it: never after
            if self._closed or self._exhausted:
                return False
            try:
                item = next(self._items)
            except StopIteration:
                self._exhausted = True
                self._subject.on_completed()
                return False
            self._subject.on_next(item)
        return True

    def on_next(self, value: _T) -> None:
        self._values.append(value)
        if self._waiting:
            with self._cond:
                self._cond.notify_all()

    def on_error(self, error: Exception) -> None:
        end: BaseException = error
        if isinstance(error, InitializerFailed):
            end = self._executor._break(error)
        self._end_with(end)

    def on_completed(self) -> None:
        self._end_with(_DONE)

    def _end_with(self, end: object) -> None:
        with self._cond:
            self._end = end
            self._cond.notify_all()
        self._executor.forget_map(self)  # a map left unconsumed is not held for ever

    def stop(self, cancel: bool) -> None:
        """Shutdown: take no more input (``cancel``: what is not consumed is cancelled)."""
        with self._cond:
            self._closed = self._shut = True
            self._cancelled = self._cancelled or cancel
            self._cond.notify_all()
            if self._size is not None:
                self._subject.on_completed()  # what was pushed runs; nothing more

    def values(self, deadline: float | None) -> Iterator[_T]:
        self._deadline = deadline
        return self

    def __next__(self) -> _T:
        try:
            value = self._values.popleft()
        except IndexError:
            value = self._wait()
        if self._size is not None:
            try:
                self._push()  # as the standard map: the next input before this value
            except BaseException:
                self.close()  # the input raised: that is this call's error
                raise
        return value

    def _wait(self) -> _T:
        values = self._values
        cond = self._cond
        deadline = self._deadline
        with cond:
            self._waiting = True  # before looking: a value appended after it wakes us
            try:
                while not values and self._end is None:
                    if deadline is None:
                        cond.wait()
                        continue
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    cond.wait(remaining)
            finally:
                self._waiting = False
            if values:
                return values.popleft()
            end = self._end
        if end is None:
            self.close()
            raise TimeoutError("Executor.map: the next value was not ready in time")
        self.close()
        if end is not _DONE:
            raise end  # type: ignore[misc]
        if self._cancelled and not self._exhausted:
            raise concurrent.futures.CancelledError("the executor was shut down")
        if self._shut and not self._exhausted:
            raise RuntimeError("cannot schedule new futures after shutdown")
        raise StopIteration

    def close(self) -> None:
        """Leave early: take no more input, cancel the run, let its workers go."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        subscription, self.subscription = self.subscription, None
        if subscription is not None:
            subscription.dispose()
        self._executor.forget_map(self)

    def __del__(self) -> None:
        if self.subscription is not None:
            self.close()
