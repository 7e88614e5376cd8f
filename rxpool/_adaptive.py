"""`Adaptive`: a concurrency limit that finds the service's capacity by itself.

Every finished attempt reports its latency and whether it failed; the limit
moves after each report, under the object's own lock (a leaf: it calls
nothing back). Two algorithms, after Netflix's concurrency-limits:

* ``"gradient"``: the limit follows ``limit * gradient + sqrt(limit)``, where
  ``gradient = floor / recent`` (at most 1, at least 0.5): *recent* is a
  moving average of latency, *floor* the lowest it went (what the service
  gives unloaded; after 200 reports in a row at twice the floor or more, the
  service is taken to have become slower, and its floor is learned again).
  While latency stays near its floor the limit grows by about its square
  root; as latency rises the limit comes down to where it no longer queues
  inside the service.
* ``"aimd"``: one more after ``limit`` successes in a row, latency ignored.

With either, an error that says the service is overloaded cuts the limit
multiplicatively (``backoff``): a `JobTimeout`, and every other job error
unless ``backoff_on`` names the error types that count.
"""

from __future__ import annotations

import math
import threading
from typing import Final, Literal

from ._checks import check_count, check_error_types
from ._exceptions import JobTimeout

__all__ = ["Adaptive", "Limit", "check_limit"]

ALGORITHMS: Final = ("gradient", "aimd")


class Adaptive:
    """A worker count that adapts: pass it wherever rxpool takes one.

    ``WorkerPool(Adaptive(max=64))``, ``map_concurrent(fn, Adaptive())``,
    ``run_jobs(Adaptive())``, ``Executor(max_workers=Adaptive())``,
    ``rxpool map --workers auto``. The runs that use one object share what it
    learned: make one per service. `limit` is the current limit, also in
    `WorkerPool.statistics` (``limit``), its stream, and the progress bar.

    For threads and the asyncio backend (a process or Dask backend with one
    is a ``ValueError`` at the call). Jobs run by a run with an adaptive limit take
    its careful path (one attempt at a time, each measured): use it for I/O
    against a service, not for microsecond jobs.

    Args:
        min: The lowest limit (at least 1).
        max: The highest limit.
        initial: Where the limit starts (default: ``min``, and it grows).
        algorithm: ``"gradient"`` (latency and errors) or ``"aimd"`` (errors only).
        backoff_on: Error types that mean "overloaded" and cut the limit
            (a `JobTimeout` always does). Default: every job error.
        backoff: The factor a cut multiplies the limit by (0 < backoff < 1).
        tolerance: Gradient: latency up to ``tolerance`` times the floor counts
            as unloaded (>= 1).

    Raises:
        TypeError / ValueError: an argument has the wrong type or value.
    """

    def __init__(
        self,
        min: int = 1,
        max: int = 64,
        initial: int | None = None,
        algorithm: Literal["gradient", "aimd"] = "gradient",
        *,
        backoff_on: tuple[type[BaseException], ...] | None = None,
        backoff: float = 0.9,
        tolerance: float = 1.0,
    ) -> None:
        check_count("min", min)
        if isinstance(max, bool) or not isinstance(max, int):
            raise TypeError(f"max must be an int, got {type(max).__name__}")
        if max < min:
            raise ValueError(f"max must be >= min ({min}), got {max}")
        if initial is None:
            initial = min
        if isinstance(initial, bool) or not isinstance(initial, int):
            raise TypeError(f"initial must be an int or None, got {type(initial).__name__}")
        if not min <= initial <= max:
            raise ValueError(f"initial must be between min and max ({min}..{max}), got {initial}")
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}; got {algorithm!r}")
        check_error_types("backoff_on", backoff_on)
        if isinstance(backoff, bool) or not isinstance(backoff, int | float):
            raise TypeError(f"backoff must be a number, got {type(backoff).__name__}")
        if not 0 < backoff < 1:
            raise ValueError(f"backoff must be between 0 and 1 (exclusive), got {backoff}")
        if isinstance(tolerance, bool) or not isinstance(tolerance, int | float):
            raise TypeError(f"tolerance must be a number, got {type(tolerance).__name__}")
        if not 1 <= tolerance < math.inf:
            raise ValueError(f"tolerance must be a finite number >= 1, got {tolerance}")
        self.min = min
        self.max = max
        self.initial = initial
        self.algorithm = algorithm
        self.backoff_on = backoff_on
        self.backoff = float(backoff)
        self.tolerance = float(tolerance)
        self._lock = threading.Lock()
        self._limit = float(initial)
        self._floor = math.inf  # the lowest recent latency
        self._recent = 0.0  # a moving average of latency
        self._streak = 0  # aimd: successes since the last change
        self._clamped = 0  # gradient: reports in a row at twice the floor or more
        self._cooldown = 0  # reports to ignore after a cut (they were in flight)
        self.changes = 0  # how many times the limit moved (whole numbers)

    def __repr__(self) -> str:
        return (
            f"Adaptive(min={self.min}, max={self.max}, algorithm={self.algorithm!r},"
            f" limit={self.limit})"
        )

    @property
    def limit(self) -> int:
        """The current limit: jobs the runs using this object may run at once."""
        return int(self._limit)

    def overloaded(self, error: BaseException | None) -> bool:
        """Whether ``error`` (None: a success) counts as the service saying "too much"."""
        if error is None:
            return False
        if isinstance(error, JobTimeout):
            return True
        return self.backoff_on is None or isinstance(error, self.backoff_on)

    def report(self, seconds: float, error: BaseException | None) -> int:
        """One attempt finished after ``seconds`` (``error``: how it failed); the new limit."""
        with self._lock:
            before = int(self._limit)
            if self.overloaded(error):
                if self._cooldown <= 0:
                    self._limit = max(float(self.min), self._limit * self.backoff)
                    self._cooldown = before  # what was in flight reports the same overload
                    self._streak = 0
                else:
                    self._cooldown -= 1
            else:
                self._cooldown -= 1
                if self.algorithm == "aimd":
                    self._aimd()
                elif error is None:
                    self._gradient(seconds)
            after = int(self._limit)
            if after != before:
                self.changes += 1
            return after

    def _aimd(self) -> None:
        self._streak += 1
        if self._streak >= self._limit:
            self._streak = 0
            self._limit = min(float(self.max), self._limit + 1)

    def _gradient(self, seconds: float) -> None:
        seconds = max(seconds, 1e-6)
        self._recent = seconds if self._recent == 0.0 else 0.9 * self._recent + 0.1 * seconds
        # The floor is the lowest the *average* went (one fast call is no floor).
        self._floor = min(self._floor, self._recent)
        gradient = self.tolerance * self._floor / self._recent
        if gradient <= 0.5:
            # Latency stayed at twice its floor or more, while the limit kept
            # coming down: the service itself became slower. Learn it again.
            self._clamped += 1
            if self._clamped >= _RELEARN_AFTER:
                self._floor = self._recent
                self._clamped = 0
        else:
            self._clamped = 0
        gradient = min(1.0, max(0.5, gradient))
        limit = self._limit
        target = limit * gradient + math.sqrt(limit)
        # Move a fraction of the way each report: about one limit's worth of
        # reports takes it there, whatever the limit.
        limit += (target - limit) / max(limit, 1.0)
        self._limit = min(float(self.max), max(float(self.min), limit))


_RELEARN_AFTER: Final = 200  # reports at twice the floor before the floor is learned again


Limit = int | Adaptive
"""What rxpool takes as a worker count: a fixed int, or an `Adaptive` limit."""


def check_limit(name: str, value: object) -> int:
    """The most jobs at once ``value`` allows (``max`` for an `Adaptive`); TypeError/ValueError."""
    if isinstance(value, Adaptive):
        return value.max
    return check_count(name, value)
