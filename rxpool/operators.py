"""Pipeable operators in reactivex style: ``source.pipe(map_concurrent(fn, 8))``.

Each operator returns a ``Callable[[Observable[T]], Observable[R]]`` and checks
its arguments when it is built, not at the first item. The implementations
live in private modules; this module only documents and delegates.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any, TypeVar

from reactivex import Observable, abc

from ._adaptive import Adaptive
from ._breaker import Breaker
from ._checks import check_callable, check_scheduler, check_token
from ._dispatch import (
    BackendSpec,
    check_chunking,
    choose_slots,
    job_observable,
    operator_backend,
)
from ._engine import MapRun
from ._flat_map import flat_map as _flat_map
from ._intake import DEFAULT_BUFFER, Overflow, make_policy
from ._job import Job, Result, is_coroutine_function, wants_token
from ._journal import Journal
from ._journaled import journaled, to_journal
from ._retry import Retry
from ._token import CancelToken

__all__ = ["flat_map", "map_concurrent", "run_jobs"]

_T = TypeVar("_T")
_R = TypeVar("_R")


def flat_map(
    mapper: Callable[[_T], Observable[_R] | Future[_R] | Iterable[_R]],
    max_concurrent: int | None = None,
    scheduler: abc.SchedulerBase | None = None,
) -> Callable[[Observable[_T]], Observable[_R]]:
    """Map each item to an inner sequence and merge them, at most ``max_concurrent`` at once.

    reactivex's ``flat_map`` with the bound of ``merge(max_concurrent=k)``; on
    the same input it produces exactly their messages, errors and subscription
    times. The mapper may return an Observable, a Future or an iterable.

    ::

        source:  --a-----b--c---|
        inner a:   1-1|
        inner b:         2---2|
        inner c:  (k=1, waits for b) 3|
        result:  ---1-1---2---23|

    **Ordering**: items of one inner sequence in order; inner sequences
    interleave as they emit. **Threading**: no threads of its own; items
    arrive on the inner sequences' threads, serialised by a lock.
    **Cancellation**: dispose unsubscribes the source, the running inner
    sequences and drops the waiting ones. **Cost**: O(1) per waiting inner
    sequence (a deque, where reactivex pops the front of a list).

    Args:
        mapper: ``item -> Observable | Future | Iterable``.
        max_concurrent: How many inner sequences are subscribed at once; None for no bound.
        scheduler: Scheduler for the items of iterable results; defaults to the
            subscribe-time scheduler, as in reactivex.

    Raises:
        TypeError: ``mapper`` is not callable or ``max_concurrent`` is not an int.
        ValueError: ``max_concurrent`` < 1.
    """
    return _flat_map(mapper, max_concurrent, scheduler)


def map_concurrent(
    fn: Callable[..., _R],
    max_concurrent: int | Adaptive,
    *,
    scheduler: abc.SchedulerBase | None = None,
    ordered: bool = False,
    buffer_size: int = DEFAULT_BUFFER,
    overflow: Overflow = "block",
    on_drop: Callable[[_T], object] | None = None,
    rate: float | None = None,
    burst: int = 1,
    timeout: float | None = None,
    retry: Retry | None = None,
    backend: BackendSpec | None = None,
    progress: bool = False,
    total: int | None = None,
    chunk_size: int | None = None,
) -> Callable[[Observable[_T]], Observable[_R]]:
    """Call ``fn(item)`` on worker threads, at most ``max_concurrent`` at once.

    The parallel ``ops.map``: an exception from ``fn`` ends the stream with that
    exception, unchanged, and cancels the rest (with ``ordered=True``, after
    the results of every earlier item, as ``ops.map`` would). If ``fn`` declares a ``token``
    parameter it is called as ``fn(item, token=run_token)``. If ``fn`` is
    ``async def``, its calls are tasks on an event loop (the one running at
    subscribe time, else a private one), no thread each; dispose cancels them.

    ::

        source:  -1-2-3-4-|
        fn:      x * 10, max_concurrent=2
        result:  ---10--30-20--40|     (ordered=True: 10 20 30 40)

    **Ordering**: as results finish; with ``ordered=True`` in input order,
    through a bounded reorder window (a full window pauses the intake).
    **Threading**: ``fn`` and ``on_next`` run on worker threads, one
    notification at a time. **Cancellation**: dispose stops the intake, emits
    nothing more and cancels the run's token; running calls finish on their
    threads, which then exit. **Backpressure**: items wait in a buffer of
    ``buffer_size``; when the source pushes faster than the workers, the
    ``overflow`` policy decides: ``"block"`` the producer's thread (default),
    ``"drop_newest"`` / ``"drop_oldest"`` (each dropped item is passed to
    ``on_drop``), or ``"error"`` (the stream ends with `BufferOverflow`).
    **Cost**: no per-item future, closure or scheduled action: each worker is
    one loop that takes items in batches while they are fast.

    Args:
        fn: ``item -> result``.
        max_concurrent: Maximum calls running at once.
        scheduler: Where the worker loops run. Default: the subscribe-time
            scheduler if any, else rxpool's thread cache (threads idle for a
            second exit); an ``AsyncIOScheduler`` means tasks on its loop.
            On a scheduler that shares the producer's thread (e.g. a
            ``TestScheduler``) ``"block"`` cannot wait, and the buffer grows.
        ordered: Emit results in input order.
        buffer_size: Items waiting for a worker before ``overflow`` applies.
        overflow: ``"block"``, ``"drop_newest"``, ``"drop_oldest"`` or ``"error"``.
        on_drop: Called with each dropped item, on the producer's thread.
        rate: At most this many calls start per second (a token bucket).
        burst: Calls that may start at once after a quiet spell (the bucket's size).
        timeout: Seconds a call may run; then the stream ends with `JobTimeout`
            (after any retries) and the call's token is cancelled.
        retry: A `Retry` policy for failed calls; only the last failure ends
            the stream, with the earlier ones chained to it.
        backend: ``"thread"``; ``"asyncio"`` (slots are tasks on the running
            loop, else a private one; blocking calls go to threads and their
            results come back to the loop thread); ``"process"`` (rxpool's
            process-wide `ProcessBackend`, one process per CPU, stopped at
            exit); or a backend object from `rxpool.backends`. Default:
            ``"asyncio"`` for an ``async def`` ``fn``, else ``"thread"``.
        progress: Draw a live progress bar on stderr (silent when stderr is
            not a terminal; needs the ``progress`` extra).
        total: How many items the source will give, for the bar's ETA.
        chunk_size: Items per chunk sent to a process or Dask backend in this
            run (None: the backend's ``chunk_size``, by default sized
            automatically); ``ValueError`` on the thread and asyncio backends.

    Raises:
        TypeError: ``fn`` is not callable, or an argument has the wrong type.
        ValueError: ``max_concurrent``, ``buffer_size`` or ``burst`` < 1, ``rate``
            not > 0, or an unknown ``overflow`` policy or ``backend``.
    """
    check_callable("fn", fn)
    check_scheduler(scheduler)
    policy = make_policy(
        max_concurrent,
        ordered=ordered,
        buffer_size=buffer_size,
        overflow=overflow,
        rate=rate,
        burst=burst,
        on_drop=on_drop,
        timeout=timeout,
        retry=retry,
        progress=progress,
        total=total,
        chunk_size=chunk_size,
    )
    pass_token = wants_token(fn)
    mode, remote, loop = operator_backend(backend)
    check_chunking(policy, remote)
    needs_loop = is_coroutine_function(fn) and backend is None

    def operator(source: Observable[_T]) -> Observable[_R]:
        def subscribe(
            observer: abc.ObserverBase[_R], subscribe_scheduler: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            slots = choose_slots(
                scheduler,
                subscribe_scheduler,
                None,
                mode=mode,
                remote=remote,
                loop=loop,
                needs_loop=needs_loop,
            )
            run: MapRun[_T, _R] = MapRun(
                observer, policy, fn, pass_token, parent_token=None, **slots
            )
            return run.start_observable(source, subscribe_scheduler)

        return Observable(subscribe)

    return operator


def run_jobs(
    max_concurrent: int | Adaptive,
    *,
    scheduler: abc.SchedulerBase | None = None,
    token: CancelToken | None = None,
    ordered: bool = False,
    buffer_size: int = DEFAULT_BUFFER,
    overflow: Overflow = "block",
    rate: float | None = None,
    burst: int = 1,
    timeout: float | None = None,
    retry: Retry | None = None,
    fail_fast: bool = False,
    backend: BackendSpec | None = None,
    progress: bool = False,
    total: int | None = None,
    chunk_size: int | None = None,
    journal: str | os.PathLike[str] | Journal | None = None,
    breaker: Breaker | None = None,
) -> Callable[[Observable[Job[Any]]], Observable[Result[Any]]]:
    """Run `Job` s from the source, at most ``max_concurrent`` at once; one `Result` per job.

    Errors are values: a job's exception becomes its ``Result.error``, and the
    stream goes on. Every job taken from the source yields exactly one result.

    **Ordering**: as jobs finish; with ``ordered=True`` in input order.
    **Threading**: jobs and ``on_next`` run on worker threads, one notification
    at a time. **Cancellation**: dispose emits nothing more, starts no job and
    cancels the run's token. Cancelling ``token`` (or its deadline passing)
    gives every job taken and not finished a `Result` with `Cancelled` (or
    `DeadlineExceeded`) at once, then completes; a running job's late return is
    discarded and its worker stays busy until it returns. A source error ends
    the stream after the jobs already taken have their results. A non-`Job`
    item is a source error (`TypeError`). **Backpressure**: jobs wait in a
    buffer of ``buffer_size``, highest `Job.priority` first; on overflow,
    ``"block"`` blocks the producer's thread, ``"drop_newest"`` /
    ``"drop_oldest"`` give the dropped job a `Result` whose error is `Dropped`
    (emitted at once, also when ``ordered=True``), ``"error"`` ends the stream
    with `BufferOverflow`. **Cost**: a few microseconds per job, one `Result`
    each, no per-job future or scheduled action; jobs with a timeout or retry
    policy take a slower path (one watchdog timer per batch of jobs).

    Args:
        max_concurrent: Maximum jobs running at once.
        scheduler: Where the worker loops run (as in `map_concurrent`).
        token: The caller's token; the run owns a child of it.
        ordered: Emit results in input order.
        buffer_size: Jobs waiting for a worker before ``overflow`` applies.
        overflow: ``"block"``, ``"drop_newest"``, ``"drop_oldest"`` or ``"error"``.
        rate: At most this many jobs start per second (a token bucket).
        burst: Jobs that may start at once after a quiet spell.
        timeout: Default seconds a job may run (`Job.timeout` wins): at the
            deadline its result is `JobTimeout`, emitted at once, and its token
            is cancelled; its worker stays busy until the function returns,
            so the bound always holds.
        retry: Default `Retry` policy (`Job.retry` wins). Backoff waits hold no
            worker; `Result.attempt` counts the attempts, and a final error has
            the earlier attempts' errors chained to it.
        fail_fast: End the stream with the first failed job's error (not its
            `Result`) and cancel the rest, as Go's ``errgroup`` does.
        backend: As for `map_concurrent` (default ``"thread"``).
        progress: Draw a live progress bar on stderr (as in `map_concurrent`).
        total: How many jobs the source will give, for the bar's ETA.
        chunk_size: Jobs per chunk sent to a process or Dask backend in this
            run (None: the backend's ``chunk_size``, by default sized
            automatically); ``ValueError`` on the thread and asyncio backends.
        journal: A path or `Journal`: record each finished job durably before
            its result is emitted, and replay (``Result.replayed``) instead of
            running the jobs already recorded, as in `WorkerPool.run`. Jobs
            need ids, unique and stable from run to run (else the stream ends
            with ``ValueError``).
        breaker: A `Breaker`: once a `Job.kind` has failed ``failures`` times in
            a row, that kind's jobs get `CircuitOpen` at once until a trial
            job after ``reset`` seconds succeeds.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: a count < 1, ``rate`` not > 0, or an unknown ``overflow`` policy.
        JournalError: ``journal`` is damaged or written by an incompatible rxpool.
    """
    journal = to_journal(journal)
    check_scheduler(scheduler)
    check_token(token)
    policy = make_policy(
        max_concurrent,
        ordered=ordered,
        buffer_size=buffer_size,
        overflow=overflow,
        rate=rate,
        burst=burst,
        timeout=timeout,
        retry=retry,
        fail_fast=fail_fast,
        progress=progress,
        total=total,
        chunk_size=chunk_size,
        breaker=breaker,
    )
    mode, remote, loop = operator_backend(backend)
    check_chunking(policy, remote)

    def run(source: Any) -> Observable[Result[Any]]:
        return job_observable(
            source,
            policy,
            scheduler=scheduler,
            token=token,
            shared=None,
            mode=mode,
            remote=remote,
            loop=loop,
        )

    if journal is None:
        return run
    journal_ = journal
    return lambda source: journaled(source, journal_, run, ordered=ordered)
