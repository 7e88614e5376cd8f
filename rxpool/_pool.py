"""WorkerPool: the Go article's worker pool, with a lifecycle."""

from __future__ import annotations

import enum
import threading
from collections.abc import Iterable
from typing import Any

from reactivex import Observable, abc

from ._checks import check_bool, check_count, check_scheduler, check_token
from ._dispatch import job_observable
from ._engine import Counters, JobRun, _Run
from ._exceptions import PoolClosed
from ._intake import DEFAULT_BUFFER, Overflow, make_policy
from ._job import Job, Result
from ._retry import Retry
from ._threads import ThreadRunner
from ._token import CancelToken

__all__ = ["WorkerPool"]

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

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: ``workers`` < 1.
    """

    def __init__(self, workers: int, *, scheduler: abc.SchedulerBase | None = None) -> None:
        self._workers = check_count("workers", workers)
        check_scheduler(scheduler)
        self._scheduler = scheduler
        self._runner = ThreadRunner(POOL_LINGER, keep=workers) if scheduler is None else None
        self._state = _State.OPEN
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # notified when the last run ends
        self._runs: set[JobRun] = set()
        self.counters = Counters()

    @property
    def workers(self) -> int:
        """How many jobs run at once in each run."""
        return self._workers

    @property
    def closed(self) -> bool:
        """True once `close` was called."""
        return self._state is _State.CLOSED

    def run(
        self,
        jobs: Iterable[Job[Any]] | Observable[Job[Any]],
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
    ) -> Observable[Result[Any]]:
        """Run ``jobs``; a cold Observable with one `Result` per job taken.

        An iterable is pulled lazily, one job each time a worker is free, so a
        generator of millions of jobs is never materialised; a list or tuple is
        checked for non-`Job` items here. An Observable of jobs is buffered:
        ``buffer_size``, ``overflow`` and `Job.priority` work as in
        `rxpool.operators.run_jobs`; ``rate`` / ``burst`` limit how many jobs
        start per second, whatever the source. ``timeout``, ``retry`` and
        ``fail_fast`` are as in `rxpool.operators.run_jobs` (a `Job`'s own
        ``timeout`` / ``retry`` win over these defaults).

        **Ordering**: as jobs finish; with ``ordered=True`` in input order.
        **Threading**: ``on_next`` runs on a pool thread, one at a time.
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
            ValueError: a count < 1, ``rate`` not > 0, or an unknown ``overflow``.
        """
        self._check_open()
        if not isinstance(jobs, Observable):
            if isinstance(jobs, str | bytes) or not isinstance(jobs, Iterable):
                raise TypeError(
                    f"jobs must be an iterable or Observable of Job, got {type(jobs).__name__}"
                )
            if isinstance(jobs, list | tuple):
                for index, job in enumerate(jobs):
                    if not isinstance(job, Job):
                        raise TypeError(
                            f"jobs[{index}] must be an rxpool.Job, got {type(job).__name__}"
                        )
        check_token(token)
        policy = make_policy(
            self._workers,
            ordered=ordered,
            buffer_size=buffer_size,
            overflow=overflow,
            rate=rate,
            burst=burst,
            timeout=timeout,
            retry=retry,
            fail_fast=fail_fast,
        )
        return job_observable(
            jobs,
            policy,
            scheduler=self._scheduler,
            token=token,
            shared=self._runner,
            owner=self,
        )

    @property
    def abandoned(self) -> int:
        """Jobs that timed out and whose functions have not returned yet (each holds a thread)."""
        with self.counters.lock:
            return self.counters.abandoned

    def adopt(self, run: JobRun) -> None:
        """Register a run as it subscribes; refuse it once the pool is closed."""
        with self._lock:
            if self._state is _State.CLOSED:
                raise PoolClosed("the WorkerPool is closed")
            self._runs.add(run)

    def forget(self, run: _Run[Any, Any]) -> None:
        """A run has ended."""
        with self._lock:
            self._runs.discard(run)
            if not self._runs:
                self._idle.notify_all()

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
        if cancel_pending:
            for run in runs:
                run.stop_intake()
        if self._runner is not None:
            self._runner.close()
        if not wait or self._on_pool_thread():
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

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        # Leaving on an exception (or Ctrl-C) gives up the queued work.
        self.close(cancel_pending=exc_type is not None)

    def __repr__(self) -> str:
        return f"<WorkerPool workers={self._workers} {self._state.value}>"
