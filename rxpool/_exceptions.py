"""The exceptions rxpool raises or puts into a `Result`.

Every rxpool exception derives from `RxPoolError`::

    RxPoolError
    ├── Cancelled               the run's token was cancelled
    │   └── DeadlineExceeded    ... because its deadline passed
    └── PoolClosed              work submitted to a closed WorkerPool

A job's own exception is never wrapped: it becomes `Result.error` unchanged
(as `Future.result()` would raise it), or reaches `on_error` unchanged in
`map_concurrent`. Misuse of the API raises `TypeError` / `ValueError`.
"""

from __future__ import annotations

__all__ = ["Cancelled", "DeadlineExceeded", "PoolClosed", "RxPoolError"]


class RxPoolError(Exception):
    """Base class of every exception defined by rxpool."""


class Cancelled(RxPoolError):
    """The run (or the token a job was given) was cancelled before the job finished."""


class DeadlineExceeded(Cancelled):
    """The token's deadline passed; a `Cancelled`, so one `except Cancelled` catches both."""


class PoolClosed(RxPoolError):
    """Work was submitted to a `WorkerPool` after `close()`."""
