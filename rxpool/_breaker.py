"""`Breaker`: a circuit breaker per job kind: after a run of failures, fail fast for a while.

State per kind (the jobs' ``Job.kind``; jobs without one share the kind
None), under the breaker's own lock (a leaf: it calls nothing back):

* **closed**: jobs run; ``failures`` failed jobs in a row open it;
* **open**: jobs of the kind are not run: their result is `CircuitOpen` at
  once, until ``reset`` seconds have passed;
* **half-open**: one job runs as a trial (the others still fail fast): if it
  succeeds the breaker closes, if it fails it opens again for ``reset``.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Final, Literal

from ._checks import check_count, check_error_types
from ._exceptions import CircuitOpen

__all__ = ["Breaker"]

State = Literal["closed", "open", "half-open"]


class _Kind:
    __slots__ = ("failures", "opened", "trial")

    def __init__(self) -> None:
        self.failures = 0  # failed in a row
        self.opened: float | None = None  # when it opened (monotonic), None while closed
        self.trial = False  # a half-open trial is running


class Breaker:
    """A circuit breaker per job kind, for `WorkerPool.run` / `run_jobs` (``breaker=``).

    Once ``failures`` jobs of a kind have failed in a row, the breaker for
    that kind opens: its jobs get a `CircuitOpen` result at once, without
    running, so a service that is down is not hammered and the run does not
    wait on it. After ``reset`` seconds one job of the kind runs as a trial:
    its success closes the breaker, its failure opens it again. Other kinds
    are not affected. Works on every backend (the decision is made where the
    pool runs, before a job is sent anywhere); jobs of a run with a breaker
    take the careful path (one at a time, each watched).

    Args:
        failures: Failed jobs in a row that open the breaker of their kind.
        reset: Seconds the breaker stays open before a trial.
        on: Error types that count as failures (default: every error;
            `CircuitOpen` itself never counts).

    Raises:
        TypeError / ValueError: an argument has the wrong type or value.
    """

    def __init__(
        self,
        failures: int = 5,
        reset: float = 30.0,
        *,
        on: tuple[type[BaseException], ...] | None = None,
    ) -> None:
        check_count("failures", failures)
        if isinstance(reset, bool) or not isinstance(reset, int | float):
            raise TypeError(f"reset must be a number of seconds, got {type(reset).__name__}")
        if not 0 < reset < math.inf:
            raise ValueError(f"reset must be a finite number of seconds > 0, got {reset}")
        check_error_types("on", on)
        self.failures = failures
        self.reset = float(reset)
        self.on = on
        self._lock = threading.Lock()
        self._kinds: dict[str | None, _Kind] = {}

    def __repr__(self) -> str:
        return f"Breaker(failures={self.failures}, reset={self.reset:g})"

    def state(self, kind: str | None = None) -> State:
        """``"closed"``, ``"open"`` or ``"half-open"`` (a trial may run now) for ``kind``."""
        with self._lock:
            entry = self._kinds.get(kind)
            if entry is None or entry.opened is None:
                return "closed"
            return "half-open" if _now() - entry.opened >= self.reset else "open"

    def enter(self, kind: str | None) -> bool:
        """Before a job of ``kind`` runs: True if it is a trial; `CircuitOpen` if it may not run."""
        with self._lock:
            entry = self._kinds.get(kind)
            if entry is None or entry.opened is None:
                return False
            waited = _now() - entry.opened
            if waited >= self.reset and not entry.trial:
                entry.trial = True
                return True
        left = max(0.0, self.reset - waited)
        raise CircuitOpen(
            f"the breaker for jobs of kind {kind!r} is open after {self.failures} failures"
            f" in a row; " + (f"a trial in {left:.1f}s" if left else "a trial is running")
        )

    def leave(self, kind: str | None, error: BaseException | None, trial: bool) -> None:
        """After a job of ``kind`` ran (``error``: how it failed)."""
        failed = (
            error is not None
            and not isinstance(error, CircuitOpen)
            and (self.on is None or isinstance(error, self.on))
        )
        with self._lock:
            entry = self._kinds.get(kind)
            if entry is None:
                if not failed:
                    return
                entry = self._kinds[kind] = _Kind()
            if trial:
                entry.trial = False
            if not failed:
                entry.failures = 0
                if trial or entry.opened is None:
                    entry.opened = None
                return
            entry.failures += 1
            if trial or (entry.opened is None and entry.failures >= self.failures):
                entry.opened = _now()


_now: Final = time.monotonic
