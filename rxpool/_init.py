"""An executor's ``initializer``: run once per worker thread or process before its first job.

On threads the executor's own wrapper checks a thread-local flag. On a
remote backend the job's function travels wrapped in a picklable
`RemoteInit`, which runs the initializer once per worker process (keyed by
the executor, so two executors sharing a backend each get theirs) and
reports a failure as `InitializerFailed`, which the parent turns into a
broken executor.
"""

from __future__ import annotations

import threading
import traceback
import uuid
from collections.abc import Callable
from typing import Any, Final

from ._remote import Call

# In a worker process: the executors whose initializer has run here.
_ready: Final[set[str]] = set()
_ready_lock: Final = threading.Lock()


class InitializerFailed(Exception):
    """An executor's initializer raised in a worker process (its traceback is the message)."""


def _fail(error: BaseException) -> InitializerFailed:
    text = "".join(traceback.format_exception(error)).rstrip()
    return InitializerFailed(f"the initializer raised {error!r}\n{text}")


class RemoteInit:
    """``fn`` preceded, once per process, by ``initializer(*initargs)``: picklable."""

    __slots__ = ("fn", "initargs", "initializer", "key")

    def __init__(
        self,
        key: str,
        initializer: Callable[..., object],
        initargs: tuple[Any, ...],
        fn: Callable[..., Any],
    ) -> None:
        self.key = key
        self.initializer = initializer
        self.initargs = initargs
        self.fn = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.key not in _ready:
            with _ready_lock:
                if self.key not in _ready:
                    try:
                        self.initializer(*self.initargs)
                    except BaseException as error:
                        raise _fail(error) from None
                    _ready.add(self.key)
        return self.fn(*args, **kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        return (RemoteInit, (self.key, self.initializer, self.initargs, self.fn))


Breaker = Callable[[BaseException], BaseException]


class Initialized:
    """One executor's initializer, and where it has run."""

    def __init__(
        self, initializer: Callable[..., object], initargs: tuple[Any, ...], remote: object
    ) -> None:
        self._initializer = initializer
        self._initargs = initargs
        self._remote = remote is not None
        self._key = uuid.uuid4().hex
        self._local = threading.local()

    def here(self, breaker: Breaker) -> None:
        """On a worker thread: run the initializer unless it ran on this thread."""
        local = self._local
        if getattr(local, "ready", False):
            return
        try:
            self._initializer(*self._initargs)
        except BaseException as error:
            raise breaker(error) from error
        local.ready = True

    def call(self, spec: Call) -> Call:
        """A call for a worker process, preceded there by the initializer."""
        fn, args, kwargs = spec
        return (RemoteInit(self._key, self._initializer, self._initargs, fn), args, kwargs)

    def wrap(self, fn: Callable[[Any], Any], breaker: Breaker) -> Callable[[Any], Any]:
        """``fn`` preceded by the initializer, on threads or in worker processes."""
        if self._remote:
            return RemoteInit(self._key, self._initializer, self._initargs, fn)
        here = self.here

        def call(item: Any) -> Any:
            here(breaker)
            return fn(item)

        return call
