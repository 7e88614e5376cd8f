"""The exceptions rxpool raises or puts into a `Result`.

Every rxpool exception derives from `RxPoolError`::

    RxPoolError
    ├── Cancelled               the run's token was cancelled
    │   └── DeadlineExceeded    ... because its deadline passed
    ├── JobTimeout              one job ran past its timeout (also a TimeoutError)
    ├── Dropped                 a job given up by the drop_newest / drop_oldest policy
    ├── BufferOverflow          the buffer filled under the "error" overflow policy
    ├── PoolClosed              work submitted to a closed WorkerPool
    ├── WorkerCrashed           the process or cluster worker running a job died
    ├── NotSendable             a job (or its result) could not be pickled for another process
    ├── CircuitOpen             a job not run: the breaker of its kind is open
    └── JournalError            a run journal is damaged, incompatible, in use, or does not match

A job's own exception is never wrapped: it becomes `Result.error` unchanged
(as `Future.result()` would raise it), or reaches `on_error` unchanged in
`map_concurrent`. Only what is not an `Exception` (a job calling
``sys.exit()``, raising ``KeyboardInterrupt`` itself) becomes a
``RuntimeError`` naming it, on every backend (see `job_error`). Misuse of
the API raises `TypeError` / `ValueError`.
"""

from __future__ import annotations

import pickle
import threading
from typing import TypeVar

__all__ = [
    "BufferOverflow",
    "Cancelled",
    "CircuitOpen",
    "DeadlineExceeded",
    "Dropped",
    "JobTimeout",
    "JournalError",
    "NotSendable",
    "PoolClosed",
    "RxPoolError",
    "WorkerCrashed",
]


class RxPoolError(Exception):
    """Base class of every exception defined by rxpool."""


class Cancelled(RxPoolError):
    """The run (or the token a job was given) was cancelled before the job finished."""


class DeadlineExceeded(Cancelled):
    """The token's deadline passed; a `Cancelled`, so one `except Cancelled` catches both."""


class PoolClosed(RxPoolError):
    """Work was submitted to a `WorkerPool` after `close()`."""


class Dropped(RxPoolError):
    """The job never ran: a full buffer's overflow policy gave it up (the job's `Result.error`)."""


class BufferOverflow(RxPoolError):
    """A hot source overflowed the buffer under ``overflow="error"``; ends the stream."""


class JobTimeout(RxPoolError, TimeoutError):
    """A job ran past its timeout; its function may still be running (its token is cancelled)."""


class WorkerCrashed(RxPoolError):
    """The worker process (or Dask worker) running the job died under it.

    The backend replaces the process; with a `Retry` policy the job is retried.
    """


class NotSendable(RxPoolError, TypeError):
    """A job, or its result, cannot be pickled to cross into (or out of) another process."""


class CircuitOpen(RxPoolError):
    """The job was not run: the `Breaker` of its kind is open (a run of failures)."""


class JournalError(RxPoolError):
    """A run's `Journal` cannot be used: damaged, incompatible, written by another run now."""


_E = TypeVar("_E", bound=BaseException)


def job_error(raised: BaseException, who: str = "the job") -> Exception:
    """What a job (or ``who``) raised, as its error: a stand-in for what is not an `Exception`.

    ``sys.exit()`` in a job must not end a worker thread, nor the run: the
    job fails, with a ``RuntimeError`` naming what it raised, as on worker
    processes. A ``KeyboardInterrupt`` on the main thread (a job run there by
    a caller's scheduler) is Ctrl-C, not the job's: it is raised again.
    """
    if isinstance(raised, Exception):
        return raised
    if isinstance(raised, KeyboardInterrupt) and threading.current_thread() is (
        threading.main_thread()
    ):
        raise raised
    return RuntimeError(f"{who} raised {raised!r}")


def copy_of(error: _E) -> _E:
    """A fresh exception like ``error``, for one of several results that share one cause.

    Notes, a traceback and a chained cause belong to one exception object: one
    shared by several results would gather what each of their consumers adds
    (a retry's notes, the frames of every ``raise``). The copy is rebuilt as
    pickling rebuilds an exception (its own ``__reduce_ex__``, not a
    ``copyreg`` entry: distributed registers one, through tblib, whose copies
    share the original's ``__dict__``) and keeps the type, args, attributes,
    notes, cause and traceback. An exception that cannot be rebuilt is shared
    after all.
    """
    try:
        reduced = error.__reduce_ex__(pickle.HIGHEST_PROTOCOL)
        if isinstance(reduced, str):
            return error
        fresh: _E = reduced[0](*reduced[1])
        if len(reduced) > 2 and reduced[2]:
            fresh.__setstate__(reduced[2])
    except Exception:
        return error
    if fresh is error or type(fresh) is not type(error):
        return error
    notes = getattr(error, "__notes__", None)
    if isinstance(notes, list):
        fresh.__notes__ = list(notes)
    fresh.__cause__ = error.__cause__
    fresh.__context__ = error.__context__
    fresh.__suppress_context__ = error.__suppress_context__
    fresh.__traceback__ = error.__traceback__
    return fresh
