"""Intake helpers: the run policy, the priority buffer and the token-bucket rate limiter."""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final, Literal

from ._adaptive import Adaptive, check_limit
from ._breaker import Breaker
from ._checks import check_bool, check_count
from ._job import check_timeout
from ._retry import Retry

Overflow = Literal["block", "drop_newest", "drop_oldest", "error"]
OVERFLOW_POLICIES: Final = ("block", "drop_newest", "drop_oldest", "error")

DEFAULT_BUFFER: Final = 1024


@dataclass(frozen=True, slots=True)
class Policy:
    """How one run dispatches: checked once, when the operator or run is built."""

    max_concurrent: int
    ordered: bool = False
    window: int = 1024
    buffer_size: int = DEFAULT_BUFFER
    overflow: Overflow = "block"
    rate: float | None = None
    burst: int = 1
    on_drop: Callable[[Any], object] | None = None
    timeout: float | None = None
    retry: Retry | None = None
    fail_fast: bool = False
    progress: bool = False
    total: int | None = None  # jobs the source will give, for the progress bar's ETA
    chunk_size: int | None = None  # jobs per chunk on a remote backend (None: the backend's)
    adaptive: Adaptive | None = None  # a limit that moves (max_concurrent is its max)
    breaker: Breaker | None = None  # run_jobs: a circuit breaker per job kind


def make_policy(
    max_concurrent: object,
    *,
    ordered: object = False,
    buffer_size: object = DEFAULT_BUFFER,
    overflow: object = "block",
    rate: object = None,
    burst: object = 1,
    on_drop: object = None,
    timeout: object = None,
    retry: object = None,
    fail_fast: object = False,
    progress: object = False,
    total: object = None,
    chunk_size: object = None,
    breaker: object = None,
) -> Policy:
    """Check every option, naming the argument and what was expected."""
    n = check_limit("max_concurrent", max_concurrent)
    check_bool("ordered", ordered)
    assert isinstance(ordered, bool)
    size = check_count("buffer_size", buffer_size)
    if overflow not in OVERFLOW_POLICIES:
        raise ValueError(
            f"overflow must be one of {', '.join(OVERFLOW_POLICIES)}; got {overflow!r}"
        )
    if rate is not None:
        if isinstance(rate, bool) or not isinstance(rate, int | float):
            raise TypeError(f"rate must be a number of jobs per second, got {type(rate).__name__}")
        if math.isnan(rate) or rate <= 0 or math.isinf(rate):
            raise ValueError(f"rate must be a finite number > 0, got {rate}")
    bucket = check_count("burst", burst)
    if on_drop is not None and not callable(on_drop):
        raise TypeError(f"on_drop must be callable or None, got {type(on_drop).__name__}")
    if retry is not None and not isinstance(retry, Retry):
        raise TypeError(f"retry must be an rxpool.Retry or None, got {type(retry).__name__}")
    check_bool("fail_fast", fail_fast)
    assert isinstance(fail_fast, bool)
    check_bool("progress", progress)
    assert isinstance(progress, bool)
    if total is not None:
        if isinstance(total, bool) or not isinstance(total, int):
            raise TypeError(f"total must be an int or None, got {type(total).__name__}")
        if total < 0:
            raise ValueError(f"total must be >= 0, got {total}")
    return Policy(
        max_concurrent=n,
        ordered=ordered,
        window=max(1024, 4 * n),
        buffer_size=size,
        overflow=overflow,
        rate=None if rate is None else float(rate),
        burst=bucket,
        on_drop=on_drop,
        timeout=check_timeout(timeout),
        retry=retry,
        fail_fast=fail_fast,
        progress=progress,
        total=total,
        chunk_size=None if chunk_size is None else check_count("chunk_size", chunk_size),
        adaptive=max_concurrent if isinstance(max_concurrent, Adaptive) else None,
        breaker=_check_breaker(breaker),
    )


def _check_breaker(breaker: object) -> Breaker | None:
    if breaker is not None and not isinstance(breaker, Breaker):
        raise TypeError(f"breaker must be an rxpool.Breaker or None, got {type(breaker).__name__}")
    return breaker


class PriorityBuffer:
    """Jobs waiting for a slot: highest ``priority`` first, FIFO among equals.

    One deque per priority level present, so every operation costs O(1) plus
    O(levels) when a level appears or empties.
    """

    __slots__ = ("_len", "_levels", "_order")

    def __init__(self, items: Iterable[Any] = ()) -> None:
        self._levels: dict[float, deque[Any]] = {}
        self._order: list[float] = []  # priorities present, ascending
        self._len = 0
        for item in items:
            self.append(item)

    def append(self, item: Any) -> None:
        priority = item.priority
        level = self._levels.get(priority)
        if level is None:
            level = self._levels[priority] = deque()
            bisect.insort(self._order, priority)
        level.append(item)
        self._len += 1

    def popleft(self) -> Any:
        """The next job to dispatch: the oldest of the highest priority."""
        return self._pop(-1)

    def evict(self) -> Any:
        """The job to give up first: the oldest of the lowest priority."""
        return self._pop(0)

    def _pop(self, index: int) -> Any:
        priority = self._order[index]
        level = self._levels[priority]
        item = level.popleft()
        if not level:
            del self._levels[priority]
            del self._order[index]
        self._len -= 1
        return item

    def __getitem__(self, index: int) -> Any:
        """Only ``[0]``: the next job to dispatch, left in place."""
        if index != 0:
            raise IndexError("a PriorityBuffer only peeks at [0]")
        return self._levels[self._order[-1]][0]

    def clear(self) -> None:
        self._levels.clear()
        self._order.clear()
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[Any]:
        for priority in reversed(self._order):
            yield from self._levels[priority]


def evict(buffer: deque[Any] | PriorityBuffer) -> Any:
    """Remove the job ``drop_oldest`` gives up: the FIFO head, or the lowest priority's."""
    if isinstance(buffer, PriorityBuffer):
        return buffer.evict()
    return buffer.popleft()


class RateLimiter:
    """A token bucket: ``rate`` tokens a second, at most ``burst`` saved up.

    Not thread-safe: the run calls it under its lock.
    """

    __slots__ = ("_burst", "_clock", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now

    def available(self) -> int:
        self._refill()
        return int(self._tokens + 1e-9)

    def take(self, want: int) -> int:
        """Take up to ``want`` tokens now; how many were granted."""
        granted = min(want, self.available())
        self._tokens -= granted
        return granted

    def give_back(self, count: int) -> None:
        self._tokens = min(self._burst, self._tokens + count)

    def delay(self) -> float:
        """Seconds until the next token."""
        return max(0.0, (1.0 - self._tokens) / self._rate)
