"""CancelToken: Go's ``context.Context`` for Python threads."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Final

from reactivex import abc

from ._exceptions import Cancelled, DeadlineExceeded
from ._timers import MAX_SECONDS, check_finite

__all__ = ["CancelToken"]

_log: Final = logging.getLogger("rxpool")


def _check_seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    if math.isnan(value):
        raise ValueError(f"{name} must not be NaN")
    return float(value)


class CancelToken:
    """A thread-safe cancellation signal with an optional deadline.

    A token starts live and is cancelled once, for good: by `cancel`, by its
    deadline passing, or by its parent being cancelled. Children never cancel
    their parent. Every rxpool run owns a child of the token its caller passed,
    and a job function that declares a ``token`` parameter receives the run's
    token, so a long job can stop cooperatively::

        def crawl(url: str, token: CancelToken) -> bytes:
            for chunk in stream(url):
                token.raise_if_cancelled()
                ...

    Deadlines are read on the `time.monotonic` clock. A token with a deadline
    in the future keeps one timer thread until it fires or the token is
    cancelled.

    Args:
        parent: The token whose cancellation cancels this one, if any.
    """

    __slots__ = (
        "__weakref__",
        "_callbacks",
        "_deadline",
        "_error",
        "_event",
        "_lock",
        "_next_key",
        "_parent",
        "_parent_link",
        "_timer",
    )

    def __init__(self, *, parent: CancelToken | None = None) -> None:
        if parent is not None and not isinstance(parent, CancelToken):
            raise TypeError(f"parent must be a CancelToken or None, got {type(parent).__name__}")
        self._lock = threading.Lock()
        self._error: Cancelled | None = None
        self._event: threading.Event | None = None
        self._callbacks: dict[int, Callable[[], object]] | None = None
        self._next_key = 0
        self._deadline: float | None = None
        self._timer: threading.Timer | None = None
        self._parent = parent
        self._parent_link: abc.DisposableBase | None = None
        if parent is not None:
            self._parent_link = parent.on_cancel(self._cancel_from_parent)

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def with_timeout(cls, seconds: float, *, parent: CancelToken | None = None) -> CancelToken:
        """A token cancelled with `DeadlineExceeded` ``seconds`` from now.

        Raises:
            TypeError: ``seconds`` is not a number.
            ValueError: ``seconds`` is NaN, negative, infinite or over
                ``threading.TIMEOUT_MAX`` (for no deadline: ``CancelToken()``).
        """
        seconds = _check_seconds("seconds", seconds)
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds}")
        check_finite("seconds", seconds, "use CancelToken() with no deadline")
        return cls.with_deadline(time.monotonic() + seconds, parent=parent)

    @classmethod
    def with_deadline(cls, deadline: float, *, parent: CancelToken | None = None) -> CancelToken:
        """A token cancelled with `DeadlineExceeded` when `time.monotonic()` reaches ``deadline``.

        Raises:
            TypeError: ``deadline`` is not a number.
            ValueError: ``deadline`` is NaN, or infinitely or over
                ``threading.TIMEOUT_MAX`` seconds away.
        """
        deadline = _check_seconds("deadline", deadline)
        check_finite(
            "deadline - time.monotonic()",
            deadline - time.monotonic(),
            "use CancelToken() with no deadline",
        )
        token = cls(parent=parent)
        token._set_deadline(deadline)
        return token

    def child(self) -> CancelToken:
        """A new token cancelled when this one is (but not the reverse)."""
        return CancelToken(parent=self)

    def _set_deadline(self, deadline: float) -> None:
        self._deadline = deadline
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            self._cancel(DeadlineExceeded("deadline exceeded"))
            return
        timer = threading.Timer(remaining, self._expire)
        timer.daemon = True
        with self._lock:
            if self._error is not None:
                return
            self._timer = timer
        timer.start()

    # -- state --------------------------------------------------------------------------------

    @property
    def cancelled(self) -> bool:
        """True once the token is cancelled (by `cancel`, its deadline or its parent)."""
        deadline = self._deadline
        if self._error is None and deadline is not None and time.monotonic() >= deadline:
            self._expire()
        return self._error is not None

    @property
    def deadline(self) -> float | None:
        """The earliest deadline of this token and its ancestors (`time.monotonic` clock)."""
        own = self._deadline
        inherited = self._parent.deadline if self._parent is not None else None
        if own is None:
            return inherited
        if inherited is None:
            return own
        return min(own, inherited)

    @property
    def fired(self) -> bool:
        """True once the token is cancelled, without reading the clock.

        Unlike `cancelled`, a deadline that has passed but that nobody has
        checked yet does not count, and reading it never runs callbacks:
        safe under a lock that an ``on_cancel`` callback may take.
        """
        return self._error is not None

    @property
    def error(self) -> Cancelled | None:
        """The `Cancelled` (or `DeadlineExceeded`) this token was cancelled with, else None."""
        self.cancelled  # noqa: B018 - a passed deadline cancels on read
        return self._error

    def new_error(self) -> Cancelled:
        """A fresh exception of the token's cancellation, for a job's `Result`."""
        error = self.error
        if error is None:
            return Cancelled("not cancelled")
        return type(error)(*error.args)

    def raise_if_cancelled(self) -> None:
        """Raise `Cancelled` (or `DeadlineExceeded`) if the token is cancelled."""
        if self.cancelled:
            raise self.new_error()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the token is cancelled or ``timeout`` seconds pass.

        Returns:
            True if the token is cancelled.
        """
        if timeout is not None:
            timeout = _check_seconds("timeout", timeout)
        if self.cancelled:
            return True
        with self._lock:
            if self._event is None:
                self._event = threading.Event()
                if self._error is not None:
                    self._event.set()
            event = self._event
        deadline = self._deadline
        if deadline is not None:
            until = deadline - time.monotonic()
            timeout = until if timeout is None else min(timeout, until)
        # Longer than a timed wait takes: as long as it takes (for ever, in practice).
        event.wait(None if timeout is not None and timeout > MAX_SECONDS else timeout)
        return self.cancelled

    # -- cancelling ---------------------------------------------------------------------------

    def cancel(self, reason: str | BaseException | None = None) -> bool:
        """Cancel the token and all its children; safe to call twice, from any thread.

        Args:
            reason: A message, or the `Cancelled` instance to report.

        Returns:
            True if this call cancelled the token, False if it already was.
        """
        if isinstance(reason, Cancelled):
            error = reason
        elif reason is None:
            error = Cancelled("cancelled")
        else:
            error = Cancelled(str(reason))
        return self._cancel(error)

    def on_cancel(self, callback: Callable[[], object]) -> abc.DisposableBase:
        """Call ``callback()`` when the token is cancelled, or at once if it already is.

        Callbacks run on the thread that cancels; an exception from one is logged
        on the ``rxpool`` logger and does not stop the others.

        Returns:
            A disposable that unregisters the callback.
        """
        if not callable(callback):
            raise TypeError(f"callback must be callable, got {type(callback).__name__}")
        with self._lock:
            if self._error is None:
                key = self._next_key
                self._next_key += 1
                if self._callbacks is None:
                    self._callbacks = {}
                self._callbacks[key] = callback
                return _Registration(self, key)
        _run_callback(callback)
        return _Registration(None, 0)

    def _unregister(self, key: int) -> None:
        with self._lock:
            if self._callbacks is not None:
                self._callbacks.pop(key, None)

    def detach(self) -> None:
        """Stop following the parent: frees the parent's reference to this token."""
        link, self._parent_link = self._parent_link, None
        if link is not None:
            link.dispose()

    def _expire(self) -> None:
        self._cancel(DeadlineExceeded("deadline exceeded"))

    def _cancel_from_parent(self) -> None:
        parent = self._parent
        assert parent is not None
        self._cancel(parent.new_error())

    def _cancel(self, error: Cancelled) -> bool:
        with self._lock:
            if self._error is not None:
                return False
            self._error = error
            callbacks, self._callbacks = self._callbacks, None
            timer, self._timer = self._timer, None
            if self._event is not None:
                self._event.set()
        if timer is not None:
            timer.cancel()
        if callbacks:
            for callback in callbacks.values():
                _run_callback(callback)
        return True

    def __repr__(self) -> str:
        state = f"cancelled={self._error!r}" if self.cancelled else "live"
        return f"<CancelToken {state} deadline={self.deadline}>"


class _Registration(abc.DisposableBase):
    """Unregisters an `on_cancel` callback; lighter than a reactivex Disposable."""

    __slots__ = ("_key", "_token")

    def __init__(self, token: CancelToken | None, key: int) -> None:
        self._token = token
        self._key = key

    def dispose(self) -> None:
        token, self._token = self._token, None
        if token is not None:
            token._unregister(self._key)


def _run_callback(callback: Callable[[], object]) -> None:
    try:
        callback()
    except Exception:
        _log.exception("rxpool: a CancelToken callback raised")
