"""WorkerPool: the Go article's worker pool, with a lifecycle."""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import os
import sys
import threading
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Iterator, Sized
from typing import Any, TypeVar

import reactivex
from reactivex import Observable, abc
from reactivex import operators as ops
from reactivex.subject import Subject

from ._adaptive import Adaptive, check_limit
from ._aio import cancellable, run_coroutine, running_loop
from ._breaker import Breaker
from ._checks import check_bool, check_callable, check_count, check_scheduler, check_token
from ._dispatch import (
    ADAPTIVE_REMOTE,
    BackendSpec,
    check_backend,
    check_chunking,
    job_observable,
    resolve_backend,
)
from ._engine import Counters, JobRun, _Run
from ._exceptions import Cancelled, PoolClosed
from ._intake import DEFAULT_BUFFER, Overflow, make_policy
from ._job import Job, Result, is_coroutine_function, wants_token
from ._journal import Journal
from ._journaled import check_ids, journaled, to_journal
from ._retry import Retry
from ._stats import PoolStats, Statistics
from ._threads import ThreadRunner
from ._token import CancelToken
from .backends import Backend, ProcessBackend
from .bridges import iterate

__all__ = ["WorkerPool"]

_R = TypeVar("_R")

# Threads beyond ``workers`` (started while a disposed run winds down, or for
# concurrent runs) wait this long for work before they exit.
POOL_LINGER = 1.0


class _State(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


class WorkerPool:
    """N workers that take jobs from one source and fan their results into one stream.

    ``run(jobs)`` returns a cold ``Observable[Result]``: each subscription is an
    independent run in which at most ``workers`` jobs run at once. The pool
    owns its threads: they start on demand, are reused by every run, and exit
    at `close` (as a `ThreadPoolExecutor`'s do at ``shutdown``). Concurrent runs
    each get their own ``workers`` slots, so a run whose source is another
    run's output can never deadlock waiting for threads its upstream holds;
    the pool keeps ``workers`` threads, and extra ones exit after a second
    without work.

    Example:
        >>> with WorkerPool(8) as pool:
        ...     results = pool.run(Job(pow, args=(2, i), id=i) for i in range(100))
        ...     total = results.pipe(ops.map(lambda r: r.value), ops.sum()).run()

    Args:
        workers: Jobs running at once in each run.
        scheduler: A reactivex scheduler to run the worker loops on instead of
            the pool's own threads (the caller keeps ownership of it).
        backend: ``"thread"`` (the default): worker slots are threads, and an
            ``async def`` job runs on the loop the run was subscribed from
            while a worker waits for it. ``"asyncio"``: worker slots are tasks
            on the event loop running where the pool was created (else where
            a run is subscribed, else a private loop thread): ``async def``
            jobs run there with no thread, blocking jobs on the pool's
            threads, and every ``on_next`` comes on the loop thread.
            ``"process"``: ``workers`` worker processes of the pool's own
            (closed with it) for CPU-bound jobs, small jobs sent in chunks.
            Or a backend object from `rxpool.backends` (`ProcessBackend`,
            `DaskBackend`, your own `Backend`), which the caller closes.
        thread_name_prefix: Names the pool's threads ``{prefix}_0``,
            ``{prefix}_1``, ... (as `ThreadPoolExecutor` does); by default
            they are ``rxpool-worker-{n}``.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: ``workers`` < 1, an unknown ``backend``, or a
            ``scheduler`` with ``backend="asyncio"``.
    """

    def __init__(
        self,
        workers: int | Adaptive,
        *,
        scheduler: abc.SchedulerBase | None = None,
        backend: BackendSpec = "thread",
        thread_name_prefix: str = "",
    ) -> None:
        # An Adaptive limit: runs follow it; the pool's threads are sized for its max.
        self._limit: int | Adaptive = workers
        self._workers = check_limit("workers", workers)
        workers = self._workers
        if not isinstance(thread_name_prefix, str):
            raise TypeError(
                f"thread_name_prefix must be a str, got {type(thread_name_prefix).__name__}"
            )
        check_scheduler(scheduler)
        self._backend = check_backend(backend)
        owned: list[Backend] = []

        def own_processes() -> Backend:
            owned.append(ProcessBackend(workers))
            return owned[0]

        self._mode, self._remote, loop = resolve_backend(self._backend, own_processes)
        self._owned_backend = owned[0] if owned else None  # closed with the pool
        if isinstance(self._limit, Adaptive) and self._remote is not None:
            if self._owned_backend is not None:
                self._owned_backend.close()
            raise ValueError(ADAPTIVE_REMOTE)
        if scheduler is not None and self._mode != "thread":
            raise ValueError(f"scheduler works with backend='thread' only, not {backend!r}")
        if self._mode == "asyncio" and loop is None:
            loop = running_loop()
        self._loop = loop
        self._scheduler = scheduler
        self._runner = (
            ThreadRunner(POOL_LINGER, keep=workers, name=thread_name_prefix)
            if scheduler is None
            else None
        )
        self._submit_lock = threading.Lock()
        self._submissions: Subject[Job[Any]] | None = None  # the run behind submit()
        self._submit_subscription: abc.DisposableBase | None = None
        self._submit_policy: object = None  # the policy of the run behind submit()
        self._futures: dict[Any, _JobFuture[Any]] = {}
        self._state = _State.OPEN
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # notified when the last run ends
        self._runs: set[_Run[Any, Any]] = set()
        self.counters = Counters()
        self._stats = PoolStats()

    @property
    def workers(self) -> int:
        """How many jobs run at once in each run (an `Adaptive` limit's ``max``)."""
        return self._workers

    @property
    def backend(self) -> BackendSpec:
        """Where jobs run: the ``backend`` the pool was created with."""
        return self._backend

    @property
    def closed(self) -> bool:
        """True once `close` was called."""
        return self._state is _State.CLOSED

    def run(
        self,
        jobs: Iterable[Job[Any]] | AsyncIterable[Job[Any]] | Observable[Job[Any]],
        *,
        token: CancelToken | None = None,
        ordered: bool = False,
        buffer_size: int = DEFAULT_BUFFER,
        overflow: Overflow = "block",
        rate: float | None = None,
        burst: int = 1,
        timeout: float | None = None,
        retry: Retry | None = None,
        fail_fast: bool = False,
        progress: bool = False,
        total: int | None = None,
        chunk_size: int | None = None,
        journal: str | os.PathLike[str] | Journal | None = None,
        breaker: Breaker | None = None,
    ) -> Observable[Result[Any]]:
        """Run ``jobs``; a cold Observable with one `Result` per job taken.

        An iterable is pulled lazily, one job each time a worker is free, so a
        generator of millions of jobs is never materialised; a list or tuple is
        checked for non-`Job` items here. An async iterable (an async generator,
        say) is pulled the same way, awaited on an event loop (the run is then
        in loop mode, as with ``backend="asyncio"``). An Observable of jobs is buffered:
        ``buffer_size``, ``overflow`` and `Job.priority` work as in
        `rxpool.operators.run_jobs`; ``rate`` / ``burst`` limit how many jobs
        start per second, whatever the source. ``timeout``, ``retry`` and
        ``fail_fast`` are as in `rxpool.operators.run_jobs` (a `Job`'s own
        ``timeout`` / ``retry`` win over these defaults). ``progress=True``
        draws a live bar on stderr (done / failed / running, rate, and an ETA
        when ``total`` is given or ``jobs`` has a length), refreshed ten times
        a second; silent when stderr is not a terminal (``progress`` extra).
        ``chunk_size``: jobs per chunk on a process or Dask backend, for this
        run (None: the backend's own, by default automatic).
        ``journal`` (a path or a `Journal`) makes the run resumable: each
        finished job is recorded in it, durably, before its result is emitted,
        and a job already recorded (a success; a failure too with
        ``Journal(keep_failed=True)``) is not run again: its recorded outcome
        is emitted as a `Result` with ``replayed=True``. Jobs are keyed by
        their ids, which must then be given, unique and the same from run to
        run; ``on_next`` then runs on the run's journal thread (see
        docs/journal.md). ``breaker`` (a `Breaker`) fails a kind's jobs fast
        with `CircuitOpen` once that kind has failed too often in a row.

        **Ordering**: as jobs finish; with ``ordered=True`` in input order.
        **Threading**: ``on_next`` runs on a pool thread, one at a time (on the
        loop thread in loop mode). ``await pool.run(jobs)`` gives the last
        `Result` safely (see `rxpool.last`).
        **Cancellation**: dispose starts no job and emits nothing more; running
        jobs' token is cancelled and their threads return to the pool when the
        functions return. Cancelling ``token`` or its deadline passing gives each
        job taken and unfinished a `Cancelled` / `DeadlineExceeded` result at
        once, then completes. **Cost**: as `rxpool.operators.run_jobs`; memory
        stays constant in the number of jobs of an iterable.

        Raises:
            PoolClosed: the pool is closed (also sent to ``on_error`` when a run
                is subscribed after `close`).
            TypeError: ``jobs`` is not an iterable or Observable of `Job`, or
                another argument has the wrong type.
            ValueError: a count < 1, ``rate`` not > 0, an unknown ``overflow``,
                or ``chunk_size`` on the thread or asyncio backend; with a
                ``journal``, a list of jobs whose ids are missing or repeated
                (from another iterable or an Observable: the run's error).
            JournalError: ``journal`` is damaged or incompatible (at the call),
                or another run writes it (the run's error).
        """
        self._check_open()
        journal = to_journal(journal)
        if not isinstance(jobs, Observable | AsyncIterable):
            if isinstance(jobs, str | bytes) or not isinstance(jobs, Iterable):
                raise TypeError(
                    "jobs must be an iterable, async iterable or Observable of Job,"
                    f" got {type(jobs).__name__}"
                )
            if isinstance(jobs, list | tuple):
                for index, job in enumerate(jobs):
                    if not isinstance(job, Job):
                        raise TypeError(
                            f"jobs[{index}] must be an rxpool.Job, got {type(job).__name__}"
                        )
                if journal is not None:
                    check_ids(jobs)
        check_token(token)
        policy = make_policy(
            self._limit,
            ordered=ordered,
            buffer_size=buffer_size,
            overflow=overflow,
            rate=rate,
            burst=burst,
            timeout=timeout,
            retry=retry,
            fail_fast=fail_fast,
            progress=progress,
            total=total if total is not None else _length(jobs),
            chunk_size=chunk_size,
            breaker=breaker,
        )
        check_chunking(policy, self._remote)

        def run(source: Any) -> Observable[Result[Any]]:
            return job_observable(
                source,
                policy,
                scheduler=self._scheduler,
                token=token,
                shared=self._runner,
                owner=self,
                mode=self._mode,
                remote=self._remote,
                loop=self._loop,
            )

        if journal is None:
            return run(jobs)
        return journaled(jobs, journal, run, ordered=ordered)

    def map(
        self,
        fn: Callable[..., _R],
        *iterables: Iterable[Any],
        ordered: bool = True,
        timeout: float | None = None,
        retry: Retry | None = None,
        token: CancelToken | None = None,
        maxsize: int = 1024,
        progress: bool = False,
        chunk_size: int | None = None,
    ) -> Iterator[_R]:
        """``fn`` over the iterables' items, at most ``workers`` at once: an iterator of values.

        The simplest use, like `concurrent.futures.Executor.map` but lazy: the
        inputs are pulled as workers free up, never materialised. Values come
        in input order (``ordered=False``: as they finish); a failed call's
        error is raised when the iteration reaches it, and leaving the loop
        (that error, ``break``, ``KeyboardInterrupt``) cancels the rest.
        ``fn`` may be ``async def``. ``chunk_size`` is as in `run`. For
        `Result` objects use ``rxpool.iterate(pool.run(...))``.

        Raises:
            PoolClosed: the pool is closed.
            TypeError: ``fn`` is not callable, no iterable is given, or an
                argument has the wrong type.
            ValueError: ``maxsize`` < 1, or an invalid ``timeout``.
        """
        check_callable("fn", fn)
        if not iterables:
            raise TypeError("map() needs at least one iterable of inputs")
        for index, iterable in enumerate(iterables):
            if isinstance(iterable, str | bytes) or not isinstance(iterable, Iterable):
                raise TypeError(
                    f"iterables[{index}] must be an iterable, got {type(iterable).__name__}"
                )
        check_count("maxsize", maxsize)
        jobs = (Job(fn, args=args) for args in zip(*iterables, strict=False))
        # zip stops at the shortest: the run's length when every iterable has one.
        lengths = [n for n in map(_length, iterables) if n is not None]
        total = min(lengths) if len(lengths) == len(iterables) else None
        results = self.run(
            jobs,
            ordered=ordered,
            timeout=timeout,
            retry=retry,
            token=token,
            progress=progress,
            total=total,
            chunk_size=chunk_size,
        )
        return _values(iterate(results, maxsize=maxsize))

    def submit(self, fn: Callable[..., _R], /, *args: Any, **kwargs: Any) -> _JobFuture[_R]:
        """Run ``fn(*args, **kwargs)`` on the pool; a `concurrent.futures.Future` of its value.

        Submitted jobs share one run of ``workers`` slots, in submission order,
        with no bound on how many wait. ``future.cancel()`` cancels the job:
        one not started never starts, a running one has its token cancelled
        (``fn`` gets it as ``token=`` if it declares one) and its value is
        discarded; the future stays pending until then, so ``cancel()``
        succeeds until the job's outcome is set (on the process and Dask
        backends, a job already queued behind the running one, at a
        process or in a Dask slot, still runs; its outcome is discarded).
        An ``async def`` ``fn`` runs on the event loop submit was called
        from (or one of its own).
        `close` lets submitted jobs finish; ``close(cancel_pending=True)``
        cancels those not started.

        Raises:
            PoolClosed: the pool is closed.
            TypeError: ``fn`` is not callable.
        """
        check_callable("fn", fn)
        self._check_open()
        future: _JobFuture[_R] = _JobFuture()
        if self._remote is not None:
            # The call crosses into another process as it is, so the future's
            # token cannot stop it there: a cancel takes it out of the buffer.
            job: Job[Any] = Job(fn, args=args, kwargs=kwargs)
            future.token.on_cancel(lambda: self._withdraw(job, future.token))
        else:
            job = Job(self._submitted(fn, args, kwargs, future))
        with self._submit_lock:
            self._check_open()
            submissions = self._submissions
            if submissions is None:
                submissions = self._submissions = Subject()
                policy = self._submit_policy = make_policy(self._limit, buffer_size=sys.maxsize)
                self._submit_subscription = job_observable(
                    submissions,
                    policy,
                    scheduler=self._scheduler,
                    token=None,
                    shared=self._runner,
                    owner=self,
                    mode=self._mode,
                    remote=self._remote,
                    loop=self._loop,
                ).subscribe(self._settle)
            self._futures[job.id] = future
        submissions.on_next(job)
        return future

    def _withdraw(self, job: Job[Any], token: CancelToken) -> None:
        """A submitted job's future was cancelled: if no slot has taken it yet, it never will.

        Only the submit run is asked (its lock only): a future cancelled from
        another run's ``on_next`` must not take that run's lock and then others'.
        """
        with self._lock:
            runs = [
                run
                for run in self._runs
                if isinstance(run, JobRun) and run._policy is self._submit_policy
            ]
        for run in runs:
            run.withdraw(job, token.new_error())

    def asubmit(self, fn: Callable[..., _R], /, *args: Any, **kwargs: Any) -> Awaitable[_R]:
        """`submit` for asyncio code: an awaitable of the value; cancelling it cancels the job.

        Must be called with an event loop running (it wraps the future for it).

        Raises:
            PoolClosed: the pool is closed.
            TypeError: ``fn`` is not callable.
            RuntimeError: no event loop is running.
        """
        loop = running_loop()
        if loop is None:
            raise RuntimeError("asubmit() needs a running event loop; use submit() outside one")
        return asyncio.wrap_future(self.submit(fn, *args, **kwargs), loop=loop)

    def _submitted(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        future: _JobFuture[Any],
    ) -> Callable[..., Any]:
        """The job's function: it runs ``fn`` under the future's own token."""
        job_token = future.token
        pass_token = "token" not in kwargs and wants_token(fn)
        caller_loop = running_loop()

        def start() -> Callable[[], Any]:
            if job_token.cancelled:
                raise job_token.new_error()
            if pass_token:
                return lambda: fn(*args, token=job_token, **kwargs)
            return lambda: fn(*args, **kwargs)

        def link(token: CancelToken) -> abc.DisposableBase:
            # The run's token (pool closing, the slot's timeout) reaches the job's.
            return token.on_cancel(lambda: job_token.cancel(token.error))

        if is_coroutine_function(fn):
            if self._mode == "asyncio":

                async def call_async(*, token: CancelToken) -> Any:
                    linked = link(token)
                    try:
                        return await cancellable(start()(), job_token)
                    finally:
                        linked.dispose()

                return call_async

            def call_coroutine(*, token: CancelToken) -> Any:
                linked = link(token)
                try:
                    return run_coroutine(start()(), job_token, caller_loop)
                finally:
                    linked.dispose()

            return call_coroutine

        def call(*, token: CancelToken) -> Any:
            linked = link(token)
            try:
                return start()()
            finally:
                linked.dispose()

        return call

    def _settle(self, result: Result[Any]) -> None:
        with self._submit_lock:
            future = self._futures.pop(result.id, None)
        if future is None or future.done():
            return
        try:
            if result.error is None:
                future.set_result(result.value)
            elif isinstance(result.error, Cancelled) and future.token.cancelled:
                future.cancel()
            else:
                future.set_exception(result.error)
        except concurrent.futures.InvalidStateError:
            pass  # cancelled by its owner meanwhile: the outcome is discarded

    @property
    def abandoned(self) -> int:
        """Jobs that timed out and whose functions have not returned yet (each holds a thread)."""
        with self.counters.lock:
            return self.counters.abandoned

    def statistics(self) -> Statistics:
        """A frozen snapshot of the pool's work so far, over all its runs.

        Counts (submitted, queued, running, succeeded, failed, timed out,
        cancelled, retried, dropped), latency percentiles of recent jobs and
        the throughput since the first job. Cheap enough to poll: it adds up
        per-run counters that the runs keep anyway.
        """
        limit = self._limit
        return self._stats.snapshot(limit.limit if isinstance(limit, Adaptive) else limit)

    def statistics_stream(self, interval: float = 1.0) -> Observable[Statistics]:
        """An Observable of `statistics` snapshots every ``interval`` seconds, for dashboards.

        Raises:
            TypeError / ValueError: ``interval`` is not a number > 0.
        """
        if isinstance(interval, bool) or not isinstance(interval, int | float):
            raise TypeError(f"interval must be a number of seconds, got {type(interval).__name__}")
        if not interval > 0:
            raise ValueError(f"interval must be > 0, got {interval}")
        return reactivex.interval(interval).pipe(ops.map(lambda _: self.statistics()))

    def adopt(self, run: _Run[Any, Any]) -> None:
        """Register a run as it subscribes; refuse it once the pool is closed."""
        with self._lock:
            if self._state is _State.CLOSED:
                raise PoolClosed("the WorkerPool is closed")
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
            closed = self._state is _State.CLOSED
        if closed:
            self._release_backend()

    def _release_backend(self) -> None:
        """Once closed and idle: stop the processes the pool owns (``backend="process"``)."""
        owned, self._owned_backend = self._owned_backend, None
        if owned is not None:
            owned.close()

    def _check_open(self) -> None:
        if self._state is _State.CLOSED:
            raise PoolClosed("the WorkerPool is closed")

    def close(self, wait: bool = True, cancel_pending: bool = False) -> None:
        """Refuse new runs, let the runs in progress end, then release the threads.

        Safe to call twice and from any thread. Runs already subscribed go on:
        with ``cancel_pending=False`` they take and finish every job of their
        sources; with ``cancel_pending=True`` they take nothing more, the jobs
        waiting in buffers or for a retry get a `Cancelled` result, and the
        running jobs finish. With ``wait=True`` it blocks until the runs have
        ended and the pool's threads have exited (from a pool thread, e.g. in
        a job or ``on_next``, it does not wait). A ``KeyboardInterrupt`` while
        it waits cancels what is pending and is raised again.
        """
        check_bool("wait", wait)
        check_bool("cancel_pending", cancel_pending)
        with self._lock:
            self._state = _State.CLOSED
            runs = list(self._runs)
        with self._submit_lock:
            submissions, self._submissions = self._submissions, None
            if cancel_pending:
                for future in self._futures.values():
                    future.token.cancel("the pool was closed")
        if cancel_pending:
            for run in runs:
                run.stop_intake()
        if submissions is not None:
            submissions.on_completed()  # the submitted jobs finish, then that run ends
        if self._runner is not None:
            self._runner.close()
        with self._lock:
            idle = not self._runs
        if idle:
            self._release_backend()
        if not wait or self._on_pool_thread() or self._on_own_loop():
            return
        try:
            with self._lock:
                while self._runs:
                    self._idle.wait(0.1)
            if self._runner is not None:
                self._runner.join()
        except KeyboardInterrupt:
            for run in list(self._runs):
                run.stop_intake()
            raise

    def _on_pool_thread(self) -> bool:
        return self._runner is not None and self._runner.owns(threading.current_thread())

    def _on_own_loop(self) -> bool:
        # Waiting here would block the loop the runs need to end: use aclose().
        return self._mode == "asyncio" and running_loop() is not None

    async def aclose(self, cancel_pending: bool = False) -> None:
        """`close` for async code: waits for the runs to end without blocking the loop."""
        check_bool("cancel_pending", cancel_pending)
        self.close(wait=False, cancel_pending=cancel_pending)
        while True:
            with self._lock:
                if not self._runs:
                    break
            await asyncio.sleep(0.005)  # runs end on other threads and tasks: poll
        if self._runner is not None:
            await asyncio.to_thread(self._runner.join)

    async def __aenter__(self) -> WorkerPool:
        return self

    async def __aexit__(self, exc_type: object, *exc_info: object) -> None:
        await self.aclose(cancel_pending=exc_type is not None)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        # Leaving on an exception (or Ctrl-C) gives up the queued work.
        self.close(cancel_pending=exc_type is not None)

    def __repr__(self) -> str:
        return f"<WorkerPool workers={self._workers} {self._state.value}>"


class _JobFuture(concurrent.futures.Future[_R]):
    """A future whose ``cancel()`` cancels the job, also while it runs.

    It stays pending until the job's outcome is set (``running()`` is False),
    so ``cancel()`` succeeds until then.
    """

    def __init__(self) -> None:
        super().__init__()
        self.token = CancelToken()

    def cancel(self) -> bool:
        cancelled = super().cancel()
        if cancelled:
            self.token.cancel("the future was cancelled")
        return cancelled


def _length(jobs: object) -> int | None:
    """How many jobs a source will give, when it says (a list, a range...)."""
    if isinstance(jobs, Sized) and not isinstance(jobs, Observable):
        return len(jobs)
    return None


def _values(results: Iterator[Result[Any]]) -> Iterator[Any]:
    try:
        for result in results:
            if result.error is not None:
                raise result.error
            yield result.value
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()
