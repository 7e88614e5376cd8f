"""Retry: how often and how late a failed job is tried again."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable
from typing import Final

from ._checks import check_count
from ._exceptions import Cancelled
from ._timers import check_finite

__all__ = ["Retry"]

RetryOn = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]

_random: Final = random.Random()


def _check_delay(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    if math.isnan(value) or value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    check_finite(name, value)
    return float(value)


class Retry:
    """A retry policy: exponential backoff with jitter, for chosen errors.

    A job is tried at most ``attempts`` times in all. After failed attempt
    ``k`` it waits ``min(max_delay, backoff * multiplier ** (k - 1))`` seconds,
    spread by ``± jitter`` (a fraction), before it is queued again. The wait
    runs on the run's clock (virtual time on a ``TestScheduler``), holds no
    worker slot, and ends early if the run is cancelled. `Cancelled` errors
    are never retried.

    Example:
        >>> Retry(5, backoff=0.2, retry_on=(ConnectionError, TimeoutError))

    Args:
        attempts: Attempts in all, the first included (1 means no retry).
        backoff: Seconds before the second attempt, or ``attempt -> seconds``
            for a schedule of your own (then ``multiplier`` is not used). A
            value it returns that is not a finite number >= 0 becomes that
            job's `Result` error (a ValueError), as does any exception it or
            a ``retry_on`` predicate raises: it never fails the whole run.
        multiplier: Growth of the wait from one attempt to the next.
        max_delay: The longest wait (finite: a delay is a timer's).
        jitter: Each wait is multiplied by a random factor in ``1 ± jitter``.
        retry_on: Exception types to retry, or a predicate ``error -> bool``.

    Raises:
        TypeError / ValueError: an argument has the wrong type or range.
    """

    __slots__ = ("attempts", "backoff", "jitter", "max_delay", "multiplier", "retry_on")

    def __init__(
        self,
        attempts: int = 3,
        *,
        backoff: float | Callable[[int], float] = 0.1,
        multiplier: float = 2.0,
        max_delay: float = 30.0,
        jitter: float = 0.1,
        retry_on: RetryOn = Exception,
    ) -> None:
        self.attempts = check_count("attempts", attempts)
        if not callable(backoff):
            backoff = _check_delay("backoff", backoff)
        self.backoff = backoff
        self.multiplier = _check_delay("multiplier", multiplier)
        self.max_delay = _check_delay("max_delay", max_delay)
        self.jitter = _check_delay("jitter", jitter)
        if self.jitter > 1:
            raise ValueError(f"jitter must be a fraction between 0 and 1, got {jitter}")
        self.retry_on: tuple[type[BaseException], ...] | Callable[[BaseException], bool]
        if isinstance(retry_on, type) and issubclass(retry_on, BaseException):
            self.retry_on = (retry_on,)
        elif isinstance(retry_on, tuple):
            for kind in retry_on:
                if not (isinstance(kind, type) and issubclass(kind, BaseException)):
                    raise TypeError(f"retry_on must hold exception types, got {kind!r}")
            self.retry_on = retry_on
        elif callable(retry_on) and not isinstance(retry_on, type):
            self.retry_on = retry_on
        else:
            raise TypeError(
                "retry_on must be an exception type, a tuple of them, or a predicate; "
                f"got {type(retry_on).__name__}"
            )

    def should_retry(self, error: BaseException, attempt: int) -> bool:
        """True if ``error`` from attempt number ``attempt`` earns another attempt."""
        if attempt >= self.attempts or isinstance(error, Cancelled):
            return False
        retry_on = self.retry_on
        if isinstance(retry_on, tuple):
            return isinstance(error, retry_on)
        return bool(retry_on(error))

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt``."""
        backoff = self.backoff
        if callable(backoff):
            base = _check_delay("backoff(attempt)", backoff(attempt))
        else:
            try:
                base = backoff * self.multiplier ** (attempt - 1)
            except OverflowError:  # a long run of attempts: the cap applies
                base = self.max_delay
        wait = min(self.max_delay, base)
        if self.jitter:
            wait *= 1 + _random.uniform(-self.jitter, self.jitter)
        return max(0.0, wait)

    def __repr__(self) -> str:
        return (
            f"Retry({self.attempts}, backoff={self.backoff!r}, multiplier={self.multiplier}, "
            f"max_delay={self.max_delay}, jitter={self.jitter}, retry_on={self.retry_on!r})"
        )


def chain(errors: list[BaseException]) -> BaseException:
    """The last error, with the earlier attempts' errors chained behind it."""
    last = errors[-1]
    for number, (earlier, later) in enumerate(itertools.pairwise(errors), start=1):
        if later.__context__ is None and later is not earlier:
            later.__context__ = earlier
        earlier.add_note(f"rxpool: attempt {number} of {len(errors)} failed")
    last.add_note(f"rxpool: attempt {len(errors)} of {len(errors)} failed; no attempt left")
    return last
