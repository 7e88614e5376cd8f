"""The emitter: the one place a run's notifications reach its observer.

Parts of a run queue notifications with `Emitter.put` / `put_all` /
`put_terminal` while they hold the run's lock (a ``deque`` append is atomic
and keeps their order); `Emitter.drain` then delivers them **with no lock of
the run held**: a slow ``on_next`` holds up neither ``dispose()`` nor
``token.cancel()`` (#23). Rx grammar holds:

* calls never overlap: a drain holds ``_lock``, the emitter's own. A slot
  that finished work blocks on it while another thread delivers, so a slow
  subscriber slows the slots down (backpressure: they take no more jobs)
  instead of letting results pile up;
* a subscriber that re-enters from ``on_next`` (disposes, cancels, or makes
  the run deliver more) only queues: the drain under way delivers it next,
  never inside the call being made;
* nothing after the terminal notification or after `close` (dispose): the
  drainer checks ``closed`` before every call. A call already under way when
  ``close`` comes finishes; ``close`` does not wait for it.

Lock order: the run's lock may be held while calling `put*` and `close`
(they take no lock); ``_lock`` is never taken while the run's lock is held.
A thread that must not wait for the subscriber (one cancelling a token, the
timer thread) has a slot drain instead (see ``_Run._emit``).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Final, Generic, TypeVar

from reactivex import abc

_log: Final = logging.getLogger("rxpool")

_R = TypeVar("_R")


class _Terminal:
    """The terminal notification, queued behind the values before it."""

    __slots__ = ("error",)

    def __init__(self, error: Exception | None) -> None:
        self.error = error


class Emitter(Generic[_R]):
    """Serialised delivery to one observer, outside the run's locks.

    Args:
        observer: Whom the run reports to.
        count: Called with each value just before its ``on_next`` (statistics), or None.
        subscriber_failed: Called (outside the locks) when ``on_next`` raised,
            with the error and the value; the emitter is closed by then.
        ended: Called once the terminal notification was delivered.
    """

    __slots__ = (
        "_count",
        "_draining",
        "_ended",
        "_lock",
        "_observer",
        "_subscriber_failed",
        "closed",
        "outbox",
    )

    def __init__(
        self,
        observer: abc.ObserverBase[_R],
        count: Callable[[Any], None] | None,
        subscriber_failed: Callable[[Exception, Any], None],
        ended: Callable[[], None],
    ) -> None:
        self._observer = observer
        self._count = count
        self._subscriber_failed = subscriber_failed
        self._ended = ended
        self._lock = threading.RLock()  # held while delivering
        self._draining = False  # under _lock: a drain is under way on its owner's thread
        self.closed = False  # the observer must not hear from the run again
        self.outbox: deque[Any] = deque()  # notifications waiting for the observer

    def put(self, value: Any) -> None:
        self.outbox.append(value)

    def put_all(self, values: Iterable[Any]) -> None:
        self.outbox.extend(values)

    def put_terminal(self, error: Exception | None) -> None:
        self.outbox.append(_Terminal(error))

    def close(self) -> None:
        """Deliver nothing more (dispose); a call under way finishes on its own thread."""
        self.closed = True
        self.outbox.clear()

    @property
    def pending(self) -> bool:
        """Notifications wait to be delivered (read without a lock)."""
        return bool(self.outbox) and not self.closed

    def drain(self, block: bool = True) -> None:
        """Deliver what is queued. Never call it under a run lock.

        ``block``: wait while another thread delivers (a slot: backpressure);
        else leave what is queued to that thread, which looks again once it
        lets go, so nothing queued before that look is left behind.
        """
        outbox = self.outbox
        lock = self._lock
        while outbox and not self.closed:
            if not lock.acquire(block):
                return
            try:
                if self._draining:
                    return  # re-entered from a callback: the drain under way delivers it
                self._draining = True
                try:
                    self._deliver()
                finally:
                    self._draining = False
            finally:
                lock.release()

    def _deliver(self) -> bool:
        """Deliver until the outbox is empty; True once the stream has ended."""
        outbox = self.outbox
        observer = self._observer
        count = self._count
        while not self.closed:
            try:
                value = outbox.popleft()
            except IndexError:
                return False
            if type(value) is _Terminal:
                self.close()
                try:
                    if value.error is not None:
                        observer.on_error(value.error)
                    else:
                        observer.on_completed()
                except Exception:
                    _log.exception("rxpool: the subscriber's terminal handler raised")
                self._ended()
                return True
            if count is not None:
                count(value)
            try:
                observer.on_next(value)
            except Exception as error:
                self.close()
                self._subscriber_failed(error, value)
                return True
        return True
