"""rxpool: the worker-pool pattern as reactive dataflow.

Run a function over many inputs, N at a time, stream the results as an
``Observable``, and stop cleanly by disposing or cancelling a token.

This module only re-exports the public names; the implementations live in
private modules (``rxpool._*``) so that helpers can be named freely.
"""

from __future__ import annotations

from . import backends, bridges, operators
from ._adaptive import Adaptive
from ._breaker import Breaker
from ._exceptions import (
    BufferOverflow,
    Cancelled,
    CircuitOpen,
    DeadlineExceeded,
    Dropped,
    JobTimeout,
    JournalError,
    NotSendable,
    PoolClosed,
    RxPoolError,
    WorkerCrashed,
)
from ._executor import Executor
from ._job import Job, JobDescriptor, Result
from ._journal import Journal, JournalRecord, RecordedError
from ._pool import WorkerPool
from ._retry import Retry
from ._stats import Statistics
from ._token import CancelToken
from .bridges import aiter, gather, iterate, last

__version__ = "0.1.0"

__all__ = [
    "Adaptive",
    "Breaker",
    "BufferOverflow",
    "CancelToken",
    "Cancelled",
    "CircuitOpen",
    "DeadlineExceeded",
    "Dropped",
    "Executor",
    "Job",
    "JobDescriptor",
    "JobTimeout",
    "Journal",
    "JournalError",
    "JournalRecord",
    "NotSendable",
    "PoolClosed",
    "RecordedError",
    "Result",
    "Retry",
    "RxPoolError",
    "Statistics",
    "WorkerCrashed",
    "WorkerPool",
    "__version__",
    "aiter",
    "backends",
    "bridges",
    "gather",
    "iterate",
    "last",
    "operators",
]
