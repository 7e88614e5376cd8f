"""Where a run's slot loops run, and the cold Observable of job runs."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from typing import Any, Protocol

from reactivex import Observable, abc
from reactivex.scheduler import NewThreadScheduler

from ._engine import Counters, JobRun, _Run
from ._intake import Policy
from ._job import Job, Result
from ._threads import SchedulerSlots, ThreadRunner, can_block
from ._token import CancelToken

# Idle threads of the process-wide cache that operator runs share exit after this long.
SHARED_LINGER = 1.0
_shared_lock = threading.Lock()
_shared: ThreadRunner | None = None


def shared_threads() -> ThreadRunner:
    """The thread cache that operator runs without a scheduler or pool share.

    Back-to-back runs (a service handling requests, a benchmark) reuse warm
    threads instead of starting N new ones each time; a thread idle for
    `SHARED_LINGER` seconds exits, so an idle process holds none.
    """
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = ThreadRunner(SHARED_LINGER)
        return _shared


def _forget_shared_threads() -> None:
    """In a forked child the parent's threads do not exist: start a new cache."""
    global _shared, _shared_lock
    _shared = None
    _shared_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_shared_threads)


class RunOwner(Protocol):
    """What a WorkerPool gives its runs: shared counters, and a register of live runs."""

    counters: Counters

    def adopt(self, run: JobRun) -> None: ...

    def forget(self, run: _Run[Any, Any]) -> None: ...


def choose_slots(
    explicit: abc.SchedulerBase | None,
    subscribe_time: abc.SchedulerBase | None,
    shared: ThreadRunner | None,
) -> dict[str, Any]:
    """Where a run's slot loops go: the explicit scheduler, the subscribe-time one, or threads.

    A plain `NewThreadScheduler` at subscribe time (what ``Observable.run()``
    passes) means "other threads": rxpool's own reused threads serve that
    without starting a thread per burst.
    """
    scheduler = explicit
    if (
        scheduler is None
        and subscribe_time is not None
        and type(subscribe_time) is not NewThreadScheduler
    ):
        scheduler = subscribe_time
    if scheduler is not None:
        return {
            "slots": SchedulerSlots(scheduler),
            "blocking": can_block(scheduler),
            "scheduler": scheduler,
        }
    if shared is not None:
        return {"slots": shared, "blocking": True}
    return {"slots": shared_threads(), "blocking": True}


def job_observable(
    source: Observable[Job[Any]] | Iterable[Job[Any]],
    policy: Policy,
    *,
    scheduler: abc.SchedulerBase | None,
    token: CancelToken | None,
    shared: ThreadRunner | None,
    owner: RunOwner | None = None,
) -> Observable[Result[Any]]:
    """The cold Observable of one `JobRun` per subscription."""

    def subscribe(
        observer: abc.ObserverBase[Result[Any]],
        subscribe_scheduler: abc.SchedulerBase | None = None,
    ) -> abc.DisposableBase:
        run = JobRun(
            observer,
            policy,
            parent_token=token,
            counters=owner.counters if owner is not None else None,
            on_finished=owner.forget if owner is not None else None,
            **choose_slots(scheduler, subscribe_scheduler, shared),
        )
        if owner is not None:
            owner.adopt(run)  # raises PoolClosed once the pool is closed
        if isinstance(source, Observable):
            return run.start_observable(source, subscribe_scheduler)
        return run.start_iterator(iter(source))

    return Observable(subscribe)
