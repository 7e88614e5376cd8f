"""Helpers for testing code that runs on rxpool.

`SimulatedService` stands in for a service with a fixed capacity (an HTTP
API, a database): real calls on real threads or tasks, whose latency grows
once too many are in flight, or which refuse the excess. Use it to check how
a pool with an `rxpool.Adaptive` limit (or a fixed one) treats a service,
without the service::

    service = SimulatedService(capacity=8, latency=0.010)
    with WorkerPool(Adaptive(max=64)) as pool:
        list(pool.map(service.call, range(1000)))
    assert service.mean_latency() <= 2 * 0.010
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time

__all__ = ["SimulatedService"]


class SimulatedService:
    """A service that serves ``capacity`` calls at once in ``latency`` seconds each.

    Past ``capacity`` calls in flight, each call takes proportionally longer
    (``latency * in_flight / capacity``: the excess queues inside the
    service); past ``refuse_above`` (if given) a call is refused at once with
    `ConnectionRefusedError`. `call` blocks (for threads); `acall` is its
    coroutine (for the asyncio backend). Thread-safe.

    Attributes:
        peak: The most calls that were in flight at once.
        refused: Calls refused.
        latencies: Seconds each served call took, in the order they finished.
        log: ``(time.monotonic() at the end, seconds, calls in flight at the
            start)`` of each served call.
    """

    def __init__(
        self, capacity: int = 8, latency: float = 0.010, *, refuse_above: int | None = None
    ) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be an int >= 1, got {capacity!r}")
        if isinstance(latency, bool) or not isinstance(latency, int | float) or not latency > 0:
            raise ValueError(f"latency must be a number of seconds > 0, got {latency!r}")
        if refuse_above is not None and (
            isinstance(refuse_above, bool) or not isinstance(refuse_above, int) or refuse_above < 1
        ):
            raise ValueError(f"refuse_above must be an int >= 1 or None, got {refuse_above!r}")
        self.capacity = capacity
        self.latency = float(latency)
        self.refuse_above = refuse_above
        self._lock = threading.Lock()
        self.in_flight = 0
        self.peak = 0
        self.refused = 0
        self.latencies: list[float] = []
        self.log: list[tuple[float, float, int]] = []

    def _enter(self) -> int:
        with self._lock:
            self.in_flight += 1
            n = self.in_flight
            self.peak = max(self.peak, n)
            if self.refuse_above is not None and n > self.refuse_above:
                self.refused += 1
                self.in_flight -= 1
                raise ConnectionRefusedError(f"{n} calls in flight: refused")
        return n

    def _leave(self, started: float, n: int) -> None:
        end = time.monotonic()
        with self._lock:
            self.in_flight -= 1
            self.latencies.append(end - started)
            self.log.append((end, end - started, n))

    def _seconds(self, n: int) -> float:
        return self.latency * max(1.0, n / self.capacity)

    def call(self, value: object = None) -> object:
        """Serve one call (blocking); returns ``value``. ConnectionRefusedError past the limit."""
        n = self._enter()
        started = time.monotonic()
        try:
            time.sleep(self._seconds(n))
        finally:
            self._leave(started, n)
        return value

    async def acall(self, value: object = None) -> object:
        """`call` as a coroutine: the wait is an ``asyncio.sleep``."""
        n = self._enter()
        started = time.monotonic()
        try:
            await asyncio.sleep(self._seconds(n))
        finally:
            self._leave(started, n)
        return value

    def mean_latency(self) -> float:
        """The mean seconds of the calls served so far (0.0 before the first)."""
        with self._lock:
            return statistics.mean(self.latencies) if self.latencies else 0.0
