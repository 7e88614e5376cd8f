"""Where a run's slot loops run, and the cold Observable of job runs."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterable, Callable, Generator, Iterable
from typing import Any, Final, Literal, Protocol, TypeVar

from reactivex import Observable, abc
from reactivex.scheduler import NewThreadScheduler
from reactivex.scheduler.eventloop import AsyncIOScheduler

from ._aio import LoopSlots, LoopThread, running_loop
from ._checks import check_count
from ._engine import Counters, JobRun, MapRun, _Run
from ._intake import Policy
from ._job import Job, Result
from ._stats import Tracker
from ._threads import SchedulerSlots, ThreadRunner, can_block
from ._token import CancelToken
from .backends import AsyncioBackend, Backend, ThreadBackend
from .backends._process import default_process_backend
from .backends._protocol import BACKEND_MEMBERS

_T = TypeVar("_T")
_R = TypeVar("_R")

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

    def adopt(self, run: _Run[Any, Any]) -> None: ...

    def forget(self, run: _Run[Any, Any]) -> None: ...


BackendName = Literal["thread", "asyncio", "process"]
BackendSpec = BackendName | ThreadBackend | AsyncioBackend | Backend
BACKENDS: tuple[str, ...] = ("thread", "asyncio", "process")


def check_backend(backend: object) -> BackendSpec:
    """A backend name or object, or a clear error at the call that gave it."""
    if isinstance(backend, str):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS} or a backend, got {backend!r}")
        return backend  # type: ignore[return-value]
    if isinstance(backend, ThreadBackend | AsyncioBackend):
        return backend
    if isinstance(backend, Backend):
        if backend.chunk_size is not None:
            check_count(f"{type(backend).__name__}.chunk_size", backend.chunk_size)
        return backend
    missing = [name for name in BACKEND_MEMBERS if not hasattr(backend, name)]
    if len(missing) < len(BACKEND_MEMBERS):  # a backend of the caller's own, not quite one
        raise TypeError(
            f"backend {type(backend).__name__} lacks {', '.join(missing)}: a Backend has"
            " run_chunk(calls, token), close() and chunk_size (an int, or None to let"
            " rxpool size chunks)"
        )
    raise TypeError(
        f"backend must be one of {BACKENDS} or a backend object (rxpool.backends),"
        f" got {type(backend).__name__}"
    )


def resolve_backend(
    spec: BackendSpec | None, process: Callable[[], Backend]
) -> tuple[str | None, Backend | None, asyncio.AbstractEventLoop | None]:
    """``(mode, remote, loop)``: mode ``"thread"``, ``"asyncio"``, ``"remote"`` or None (auto)."""
    if spec is None:
        return None, None, None
    if spec == "thread" or isinstance(spec, ThreadBackend):
        return "thread", None, None
    if spec == "asyncio":
        return "asyncio", None, None
    if isinstance(spec, AsyncioBackend):
        return "asyncio", None, spec.loop
    if spec == "process":
        return "remote", process(), None
    assert not isinstance(spec, str)
    return "remote", spec, None


def operator_backend(
    backend: object,
) -> tuple[str | None, Backend | None, asyncio.AbstractEventLoop | None]:
    """An operator's ``backend=`` checked and resolved; ``"process"`` is the process-wide one."""
    spec = None if backend is None else check_backend(backend)
    return resolve_backend(spec, default_process_backend)


def check_chunking(policy: Policy, remote: Backend | None) -> None:
    """``chunk_size=`` is for backends that send jobs elsewhere in chunks."""
    if policy.chunk_size is not None and remote is None:
        raise ValueError(
            "chunk_size applies to the process and Dask backends (jobs sent to workers"
            " in chunks), not to threads or the event loop"
        )
    if policy.adaptive is not None and remote is not None:
        raise ValueError(ADAPTIVE_REMOTE)


ADAPTIVE_REMOTE: Final = (
    "an rxpool.Adaptive limit works on the thread and asyncio backends;"
    " give a process or Dask backend a number of workers"
)


def choose_slots(
    explicit: abc.SchedulerBase | None,
    subscribe_time: abc.SchedulerBase | None,
    shared: ThreadRunner | None,
    *,
    mode: str | None = None,
    remote: Backend | None = None,
    loop: asyncio.AbstractEventLoop | None = None,
    needs_loop: bool = False,
) -> dict[str, Any]:
    """Where a run's slot loops go.

    In order: a remote backend (process, Dask: slots are threads that wait
    for it); an explicit scheduler; ``backend="asyncio"`` (tasks on ``loop``,
    else on the loop running here, else on a private loop thread); the
    subscribe-time scheduler; a run that ``needs_loop`` (an ``async def``
    function, an async iterable source) as for ``"asyncio"``; else threads
    (``shared``, the pool's, or the process-wide cache). An `AsyncIOScheduler`,
    explicit or at subscribe time, means tasks on its loop: its ``schedule``
    is not safe from worker threads. A plain `NewThreadScheduler` at
    subscribe time (what ``Observable.run()`` passes) means "other threads":
    rxpool's own reused threads serve that without a thread per burst.
    """
    threads = shared if shared is not None else shared_threads()
    here = running_loop()
    if mode == "remote":
        # Slots are threads that hand chunks to the backend and wait for them.
        return {"slots": threads, "blocking": True, "loop": here, "remote": remote}
    if explicit is not None:
        if isinstance(explicit, AsyncIOScheduler):
            return _on_loop(_scheduler_loop(explicit), threads)
        return _on_scheduler(explicit, here)
    if mode == "asyncio":
        return _on_loop(loop or here, threads)
    if subscribe_time is not None and type(subscribe_time) is not NewThreadScheduler:
        if isinstance(subscribe_time, AsyncIOScheduler):
            return _on_loop(_scheduler_loop(subscribe_time), threads)
        return _on_scheduler(subscribe_time, here)
    if needs_loop:
        return _on_loop(here, threads)
    return {"slots": threads, "blocking": True, "loop": here}


def _on_scheduler(
    scheduler: abc.SchedulerBase, here: asyncio.AbstractEventLoop | None
) -> dict[str, Any]:
    return {
        "slots": SchedulerSlots(scheduler),
        "blocking": can_block(scheduler),
        "scheduler": scheduler,
        "loop": here,
    }


def _on_loop(loop: asyncio.AbstractEventLoop | None, threads: ThreadRunner) -> dict[str, Any]:
    owned = None
    if loop is None or loop.is_closed():
        owned = LoopThread()  # stopped once the run's slots are done
        loop = owned.loop
    # Producers may share the loop's thread: the block policy cannot block it.
    return {"slots": LoopSlots(loop, threads, owned), "blocking": False}


def _scheduler_loop(scheduler: AsyncIOScheduler) -> asyncio.AbstractEventLoop:
    loop: asyncio.AbstractEventLoop = scheduler._loop
    return loop


def job_observable(
    source: Observable[Job[Any]] | Iterable[Job[Any]] | AsyncIterable[Job[Any]],
    policy: Policy,
    *,
    scheduler: abc.SchedulerBase | None,
    token: CancelToken | None,
    shared: ThreadRunner | None,
    owner: RunOwner | None = None,
    mode: str | None = None,
    remote: Backend | None = None,
    loop: asyncio.AbstractEventLoop | None = None,
) -> Observable[Result[Any]]:
    """The cold Observable of one `JobRun` per subscription.

    An async iterable source is awaited by slots on an event loop, so such a
    run is always in loop mode (on ``loop``, the running one, or its own).
    """

    def make(observer: abc.ObserverBase[Result[Any]], **kw: Any) -> JobRun:
        return JobRun(observer, policy, parent_token=token, **kw)

    return _run_observable(source, make, scheduler, shared, owner, mode, remote, loop)


def value_observable(
    source: Iterable[_T] | Observable[_T],
    policy: Policy,
    fn: Callable[[_T], _R],
    *,
    shared: ThreadRunner | None,
    owner: RunOwner | None = None,
    mode: str | None = None,
    remote: Backend | None = None,
    loop: asyncio.AbstractEventLoop | None = None,
) -> Observable[_R]:
    """The cold Observable of one `MapRun` of ``fn`` (no token) per subscription."""

    def make(observer: abc.ObserverBase[_R], **kw: Any) -> MapRun[_T, _R]:
        return MapRun(observer, policy, fn, False, parent_token=None, **kw)

    return _run_observable(source, make, None, shared, owner, mode, remote, loop)


def _run_observable(
    source: Observable[Any] | Iterable[Any] | AsyncIterable[Any],
    make: Callable[..., _Run[Any, _T]],
    scheduler: abc.SchedulerBase | None,
    shared: ThreadRunner | None,
    owner: RunOwner | None,
    mode: str | None,
    remote: Backend | None,
    loop: asyncio.AbstractEventLoop | None,
) -> Observable[_T]:
    is_async_source = not isinstance(source, Observable | Iterable)

    def subscribe(
        observer: abc.ObserverBase[_T],
        subscribe_scheduler: abc.SchedulerBase | None = None,
    ) -> abc.DisposableBase:
        if is_async_source:
            explicit = scheduler if isinstance(scheduler, AsyncIOScheduler) else None
            slots = choose_slots(explicit, None, shared, mode="asyncio", loop=loop)
        else:
            slots = choose_slots(
                scheduler, subscribe_scheduler, shared, mode=mode, remote=remote, loop=loop
            )
        run = make(
            observer,
            tracker=Tracker() if owner is not None else None,
            counters=owner.counters if owner is not None else None,
            on_finished=owner.forget if owner is not None else None,
            **slots,
        )
        if owner is not None:
            owner.adopt(run)  # raises PoolClosed once the pool is closed
        if isinstance(source, Observable):
            return run.start_observable(source, subscribe_scheduler)
        if isinstance(source, Iterable):
            return run.start_iterator(iter(source))
        return run.start_aiterator(aiter(source))

    return RunObservable(subscribe)


class RunObservable(Observable[_T]):
    """An Observable whose ``await`` is safe across threads and cancels the run with the task.

    reactivex's own ``await observable`` resolves an asyncio future from
    whatever thread emits, and a cancelled awaiting task leaves the
    subscription running; this one goes through `rxpool.last`.
    """

    def __await__(self) -> Generator[Any, None, _T]:
        from .bridges import last

        return last(self).__await__()
