"""Timers for job timeouts and retry backoff: one watchdog thread, or the run's scheduler."""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Final

from reactivex import abc

_log: Final = logging.getLogger("rxpool")
_LINGER: Final = 0.25

# The longest wait the platform's timed waits take (about 292 years on 64-bit
# Linux); a longer one raises OverflowError inside the waiting thread (#28).
MAX_SECONDS: Final = threading.TIMEOUT_MAX


def check_finite(name: str, seconds: float, instead: str = "") -> None:
    """Refuse an infinite or over-long number of seconds (``seconds`` is a number, not NaN).

    Raises:
        ValueError: ``seconds`` is infinite or over `MAX_SECONDS`; ``instead``
            ends the message with what to pass for "never".
    """
    if not -MAX_SECONDS <= seconds <= MAX_SECONDS:
        hint = f"; for no limit, {instead}" if instead else ""
        raise ValueError(
            f"{name} must be a finite number of seconds, at most {MAX_SECONDS:.4g}"
            f" (the longest wait a timer takes), got {seconds}{hint}"
        )


class Timer:
    """A pending call; `cancel` is safe from any thread, before or after it fires."""

    __slots__ = ("_disposable", "callback", "cancelled", "deadline")

    def __init__(self, deadline: float, callback: Callable[[], None]) -> None:
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False
        self._disposable: abc.DisposableBase | None = None

    def cancel(self) -> None:
        if self._disposable is not None:
            self.cancelled = True
            self._disposable.dispose()
        else:
            _WATCHDOG.forget(self)

    def __lt__(self, other: Timer) -> bool:
        return self.deadline < other.deadline


class _Watchdog:
    """One thread that fires timers at their deadlines, started on demand.

    Cancelled timers are removed lazily; the heap is rebuilt when they
    outnumber the live ones, so it stays proportional to the timers pending.
    The thread exits when no timer has been pending for ``_LINGER`` seconds
    (a run of short jobs with timeouts would otherwise start one per job).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, Timer]] = []
        self._counter = itertools.count()
        self._live = 0
        self._thread: threading.Thread | None = None
        self._sleeping_until = math.inf  # the deadline the thread waits for

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        # Checked here, on the caller's thread: a NaN would break the heap's
        # order and an infinite deadline would overflow the thread's wait.
        if math.isnan(delay):
            raise ValueError("delay must not be NaN")
        check_finite("delay", delay)
        timer = Timer(time.monotonic() + delay, callback)
        with self._cond:
            heapq.heappush(self._heap, (timer.deadline, next(self._counter), timer))
            self._live += 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="rxpool-timers", daemon=True
                )
                self._thread.start()
            elif timer.deadline < self._sleeping_until:
                self._cond.notify()  # it must wake earlier than planned
        return timer

    def forget(self, timer: Timer) -> None:
        """Cancel a timer: count it out, and compact the heap when it pays."""
        with self._cond:
            if timer.cancelled:
                return  # fired, or cancelled before
            timer.cancelled = True
            self._live -= 1
            if self._live == 0:
                # Nothing pending: wake the thread, so it lingers and exits
                # instead of sleeping until a cancelled deadline.
                self._heap.clear()
                self._cond.notify()
            elif len(self._heap) > 64 and len(self._heap) > 2 * self._live:
                # Cancelled timers are found when the thread wakes; compact
                # them once they outnumber the live ones.
                self._heap = [entry for entry in self._heap if not entry[2].cancelled]
                heapq.heapify(self._heap)

    def _loop(self) -> None:
        # One thread serves every pool in the process: nothing may end it but
        # lingering with no timer pending (#28).
        while True:
            try:
                timer = self._next_due()
            except BaseException:
                _log.exception("rxpool: the timer thread failed on its next timer; dropped it")
                self._drop_next()
                continue
            if timer is None:
                return
            try:
                timer.callback()
            except BaseException:
                _log.exception("rxpool: a timer callback raised")

    def _drop_next(self) -> None:
        with self._cond:
            if self._heap:
                timer = heapq.heappop(self._heap)[2]
                if not timer.cancelled:
                    timer.cancelled = True
                    self._live -= 1

    def _next_due(self) -> Timer | None:
        """Wait for the next timer due and take it; None: the thread exits (it lingered)."""
        cond = self._cond
        with cond:
            while True:
                heap = self._heap
                while heap and heap[0][2].cancelled:
                    heapq.heappop(heap)
                if not heap:
                    self._sleeping_until = math.inf
                    if not cond.wait(_LINGER) and not self._heap:
                        self._thread = None
                        return None
                    continue
                wait = heap[0][0] - time.monotonic()
                if wait <= 0:
                    timer = heapq.heappop(heap)[2]
                    timer.cancelled = True  # fired: a late cancel() is a no-op
                    self._live -= 1
                    return timer
                self._sleeping_until = heap[0][0]
                cond.wait(min(wait, MAX_SECONDS))


_WATCHDOG: Final = _Watchdog()


def call_later(
    delay: float, callback: Callable[[], None], scheduler: abc.SchedulerBase | None
) -> Timer:
    """Call ``callback()`` after ``delay`` seconds: on the scheduler's clock if given."""
    if scheduler is None:
        return _WATCHDOG.call_later(delay, callback)
    timer = Timer(0.0, callback)

    def action(_scheduler: abc.SchedulerBase, _state: object = None) -> None:
        if not timer.cancelled:
            timer.cancelled = True
            callback()

    timer._disposable = scheduler.schedule_relative(delay, action)
    return timer
