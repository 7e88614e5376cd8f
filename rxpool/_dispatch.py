"""Shared argument checks and the choice of where slot loops run."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from reactivex import Observable, abc
from reactivex.scheduler import NewThreadScheduler

from ._engine import JobRun
from ._job import Job, Result
from ._threads import SchedulerSlots, ThreadRunner, can_block
from ._token import CancelToken

# A run's own threads linger this long between bursts of a slow hot source.
RUN_LINGER = 0.05


def check_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def check_callable(name: str, value: object) -> None:
    if not callable(value):
        raise TypeError(f"{name} must be callable, got {type(value).__name__}")


def check_scheduler(scheduler: object) -> None:
    if scheduler is not None and not isinstance(scheduler, abc.SchedulerBase):
        raise TypeError(
            f"scheduler must be a reactivex scheduler or None, got {type(scheduler).__name__}"
        )


def check_token(token: object) -> None:
    if token is not None and not isinstance(token, CancelToken):
        raise TypeError(f"token must be a CancelToken or None, got {type(token).__name__}")


def check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")


def default_window(max_concurrent: int) -> int:
    """The ordered reorder window: room for every slot's largest batch, twice over."""
    return max(1024, 4 * max_concurrent)


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
            "release_slots": False,
            "blocking": can_block(scheduler),
        }
    if shared is not None:
        return {"slots": shared, "release_slots": False, "blocking": True}
    return {"slots": ThreadRunner(RUN_LINGER), "release_slots": True, "blocking": True}


def job_observable(
    source: Observable[Job[Any]] | Iterable[Job[Any]],
    n: int,
    *,
    scheduler: abc.SchedulerBase | None,
    token: CancelToken | None,
    ordered: bool,
    shared: ThreadRunner | None,
    before_subscribe: Callable[[], None] | None = None,
) -> Observable[Result[Any]]:
    window = default_window(n)

    def subscribe(
        observer: abc.ObserverBase[Result[Any]],
        subscribe_scheduler: abc.SchedulerBase | None = None,
    ) -> abc.DisposableBase:
        if before_subscribe is not None:
            before_subscribe()
        run = JobRun(
            observer,
            max_concurrent=n,
            ordered=ordered,
            window=window,
            parent_token=token,
            **choose_slots(scheduler, subscribe_scheduler, shared),
        )
        if isinstance(source, Observable):
            return run.start_observable(source, subscribe_scheduler)
        return run.start_iterator(iter(source))

    return Observable(subscribe)
