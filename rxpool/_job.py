"""Job, JobDescriptor and Result: the Go pool's ``Job`` and ``Result{Value, Err, Descriptor}``."""

from __future__ import annotations

import functools
import inspect
import itertools
import math
from collections.abc import Callable, Mapping
from typing import Any, Generic, NamedTuple, TypeVar

from ._retry import Retry
from ._timers import check_finite

__all__ = ["Job", "JobDescriptor", "Result"]

_R = TypeVar("_R")

_ids = itertools.count(1)


def check_timeout(timeout: object) -> float | None:
    """None, or a number of seconds > 0."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(
            f"timeout must be a number of seconds or None, got {type(timeout).__name__}"
        )
    if math.isnan(timeout) or timeout <= 0:
        raise ValueError(f"timeout must be a number of seconds > 0, got {timeout}")
    check_finite("timeout", timeout, "pass timeout=None")
    return float(timeout)


class JobDescriptor(NamedTuple):
    """Who a job is: ``id``, ``kind`` and free-form ``metadata``; copied into its `Result`."""

    id: Any
    kind: str | None = None
    metadata: Mapping[str, Any] | None = None


@functools.lru_cache(maxsize=4096)
def _cached_wants_token(fn: Callable[..., object]) -> bool:
    return _inspect_token(fn)


def _inspect_token(fn: Callable[..., object]) -> bool:
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False
    param = parameters.get("token")
    return param is not None and param.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
    )


@functools.lru_cache(maxsize=4096)
def _cached_is_coroutine_function(fn: Callable[..., object]) -> bool:
    return _inspect_coroutine(fn)


def _inspect_coroutine(fn: Callable[..., object]) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    # An object whose __call__ is async def.
    return inspect.iscoroutinefunction(type(fn).__call__)


def is_coroutine_function(fn: Callable[..., object]) -> bool:
    """True if calling ``fn`` gives a coroutine to await (``async def``, also through partial)."""
    try:
        return _cached_is_coroutine_function(fn)
    except TypeError:  # unhashable callable
        return _inspect_coroutine(fn)


def wants_token(fn: Callable[..., object]) -> bool:
    """True if ``fn`` declares a parameter named ``token`` (it then gets the run's CancelToken)."""
    try:
        return _cached_wants_token(fn)
    except TypeError:  # unhashable callable
        return _inspect_token(fn)


class Job(Generic[_R]):
    """One unit of work: ``fn(*args, **kwargs)``, with a descriptor that names it.

    If ``fn`` declares a parameter named ``token``, it is called with the run's
    `CancelToken` as ``token=`` (Go's ``ExecFn(ctx, args)``), unless ``kwargs``
    already has one.

    If ``fn`` is a coroutine function (``async def``), the job is awaited on
    an event loop: with ``backend="asyncio"`` (or a run subscribed from a
    running loop through `rxpool.aiter`) it runs on the loop with no thread of
    its own; on the thread backend a worker waits for it while it runs on the
    loop the run was subscribed from (or on a loop of its own). Cancelling the
    run cancels its task.

    ``id_given`` says whether ``id`` was given (a run with a `Journal` needs
    it: automatic ids differ from one run to the next).

    Args:
        fn: The function to call.
        args: Positional arguments, a tuple (any other sequence is copied into one).
        kwargs: Keyword arguments.
        id: The job's identity, copied into its `Result`; defaults to a unique int.
        kind: A free label (e.g. the job type), copied into the result.
        metadata: Free-form data copied into the result.
        priority: While jobs wait in a run's buffer (a hot Observable source),
            higher priorities are dispatched first, FIFO among equals.
        timeout: Seconds the job may run, finite and at most
            ``threading.TIMEOUT_MAX``; then its result is `JobTimeout` and its
            token is cancelled. Overrides the run's default; None: no limit.
        retry: The job's `Retry` policy; overrides the run's default.

    Raises:
        TypeError: ``fn`` is not callable, or ``args``/``kwargs`` have the wrong type.
        ValueError: ``timeout`` is not > 0, NaN or infinite.
    """

    __slots__ = (
        "args",
        "descriptor",
        "fn",
        "id_given",
        "is_async",
        "kwargs",
        "priority",
        "retry",
        "timeout",
        "wants_token",
    )

    def __init__(
        self,
        fn: Callable[..., _R],
        *,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        id: Any = None,
        kind: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        priority: float = 0,
        timeout: float | None = None,
        retry: Retry | None = None,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        if type(args) is not tuple:
            if isinstance(args, str | bytes) or not isinstance(args, tuple | list):
                raise TypeError(f"args must be a tuple, got {type(args).__name__}")
            args = tuple(args)
        if kwargs is not None and not isinstance(kwargs, Mapping):
            raise TypeError(f"kwargs must be a mapping or None, got {type(kwargs).__name__}")
        if kind is not None and not isinstance(kind, str):
            raise TypeError(f"kind must be a str or None, got {type(kind).__name__}")
        if metadata is not None and not isinstance(metadata, Mapping):
            raise TypeError(f"metadata must be a mapping or None, got {type(metadata).__name__}")
        if isinstance(priority, bool) or not isinstance(priority, int | float):
            raise TypeError(f"priority must be a number, got {type(priority).__name__}")
        if priority != priority:
            raise ValueError("priority must not be NaN")
        self.priority: float = priority
        self.timeout: float | None = check_timeout(timeout)
        if retry is not None and not isinstance(retry, Retry):
            raise TypeError(f"retry must be an rxpool.Retry or None, got {type(retry).__name__}")
        self.retry: Retry | None = retry
        self.fn: Callable[..., _R] = fn
        self.args: tuple[Any, ...] = args
        self.kwargs: Mapping[str, Any] = kwargs if kwargs is not None else {}
        # True when the caller named the job (a journal keys its records by such ids).
        self.id_given: bool = id is not None
        self.descriptor = JobDescriptor(next(_ids) if id is None else id, kind, metadata)
        self.wants_token: bool = "token" not in self.kwargs and wants_token(fn)
        self.is_async: bool = is_coroutine_function(fn)

    @property
    def id(self) -> Any:
        """The job's id (also ``descriptor.id``)."""
        return self.descriptor.id

    @property
    def kind(self) -> str | None:
        """The job's kind (also ``descriptor.kind``)."""
        return self.descriptor.kind

    @property
    def metadata(self) -> Mapping[str, Any] | None:
        """The job's metadata (also ``descriptor.metadata``)."""
        return self.descriptor.metadata

    def __repr__(self) -> str:
        name = getattr(self.fn, "__qualname__", repr(self.fn))
        return f"Job({name}, id={self.descriptor.id!r}, kind={self.descriptor.kind!r})"


class Result(NamedTuple, Generic[_R]):
    """The outcome of one job: a value or an error, and the job's descriptor.

    Immutable. Exactly one `Result` is emitted for every job a run takes. ``error``
    is the job's own exception, unchanged, with its traceback (``__traceback__``),
    or a `Cancelled` / `DeadlineExceeded` when the run was stopped before the job
    finished. ``started`` and ``finished`` are `time.monotonic` readings.
    ``replayed`` is True for a result a run with a `Journal` re-emits from its
    record instead of running the job again (its times are then the recorded
    ones, in this process's monotonic clock, so they lie in the past).
    """

    value: _R | None
    error: BaseException | None
    descriptor: JobDescriptor
    attempt: int = 1
    started: float = 0.0
    finished: float = 0.0
    replayed: bool = False

    @property
    def ok(self) -> bool:
        """True if the job returned a value (``error is None``)."""
        return self.error is None

    @property
    def id(self) -> Any:
        """The job's id (``descriptor.id``)."""
        return self.descriptor.id

    @property
    def duration(self) -> float:
        """Seconds between start and finish (0.0 for a job that never started)."""
        return self.finished - self.started

    def unwrap(self) -> _R:
        """The value, or raise the error (as `concurrent.futures.Future.result` does)."""
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]

    def __repr__(self) -> str:
        outcome = f"value={self.value!r}" if self.error is None else f"error={self.error!r}"
        replayed = ", replayed=True" if self.replayed else ""
        return f"Result(id={self.descriptor.id!r}, {outcome}, attempt={self.attempt}{replayed})"
