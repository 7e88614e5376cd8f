"""Counting what runs do: per-run trackers, pool statistics, the progress bar.

A `Tracker` belongs to one run and is updated under that run's lock by the
emitter (one call per value emitted) and the intake (one per batch taken),
so counting costs a few attribute updates per job and no lock of its own.
`WorkerPool.statistics` adds up its runs' trackers into a frozen
`Statistics` snapshot.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any, Final

from ._exceptions import Cancelled, Dropped, JobTimeout
from ._timers import call_later

_log: Final = logging.getLogger("rxpool")

# Latency percentiles come from the most recent durations, this many per run.
LATENCY_SAMPLES: Final = 4096


@dataclass(frozen=True)
class Statistics:
    """A snapshot of a pool's work so far (all its runs, finished and live).

    Immutable; `WorkerPool.statistics` builds one from counters the runs keep
    anyway, without stopping them (cheap to poll from any thread), so the
    counts of a live pool are read one after another, not at one instant.

    Attributes:
        submitted: Jobs taken from sources, pulled or pushed (each gets one
            result, unless the run is disposed first).
        queued: Jobs waiting in buffers, for a retry, or at a worker process
            or Dask worker behind the job it runs (chunks sent ahead).
        running: Jobs whose functions run now: at most one per worker slot.
        held: Jobs finished whose results wait to be delivered: for an earlier
            job's result (``ordered=True``), for the rest of their batch, or
            for the subscriber. ``submitted == queued + running + held +
            completed`` when nothing moves (a finished run has delivered
            them all); while jobs move, the counts are read one after
            another, without stopping the run, and may be off by a few.
        succeeded / failed / timed_out / cancelled / dropped: Results by outcome
            (``failed`` is any other error).
        retried: Attempts scheduled again by a `Retry` policy.
        latency_p50 / latency_p95 / latency_p99: Seconds a job ran (recent jobs).
        jobs_per_second: Results per second since the pool's first job.
        elapsed: Seconds since the pool's first job.
        limit: Jobs each run may run at once now: the pool's worker count,
            or an `rxpool.Adaptive` limit's current value (None where no
            pool counts: a bare tracker).
    """

    submitted: int = 0
    queued: int = 0
    running: int = 0
    held: int = 0
    succeeded: int = 0
    failed: int = 0
    timed_out: int = 0
    cancelled: int = 0
    retried: int = 0
    dropped: int = 0
    latency_p50: float = 0.0
    latency_p95: float = 0.0
    latency_p99: float = 0.0
    jobs_per_second: float = 0.0
    elapsed: float = 0.0
    limit: int | None = None

    @property
    def completed(self) -> int:
        """Results delivered, whatever their outcome."""
        return self.succeeded + self.failed + self.timed_out + self.cancelled + self.dropped


class Tracker:
    """One run's counts; written under the run's lock, read without it (a snapshot).

    ``waiting`` (set by the run) tells what its jobs taken and not counted as
    results do now: queued, running or held (see `Statistics`), and how many
    of the queued ones wait in the buffer, not counted in ``taken`` yet.
    """

    __slots__ = (
        "cancelled",
        "dropped",
        "durations",
        "failed",
        "retried",
        "succeeded",
        "taken",
        "timed_out",
        "waiting",
    )

    def __init__(self) -> None:
        self.taken = 0
        self.succeeded = 0
        self.failed = 0
        self.timed_out = 0
        self.cancelled = 0
        self.dropped = 0
        self.retried = 0
        self.durations: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        # (queued, running, held, buffered) of the jobs not counted as results
        # yet; buffered ones (pushed, not taken yet) are not in ``taken``.
        self.waiting: Callable[[], tuple[int, int, int, int]] = lambda: (0, 0, 0, 0)  # the run's

    def result(self, result: Any) -> None:
        """Count one `Result` emitted."""
        error = result[1]
        if error is None:
            self.succeeded += 1
            self.durations.append(result[5] - result[4])
        elif isinstance(error, Cancelled):
            self.cancelled += 1
        elif isinstance(error, JobTimeout):
            self.timed_out += 1
            self.durations.append(result[5] - result[4])
        elif isinstance(error, Dropped):
            self.dropped += 1
        else:
            self.failed += 1
            self.durations.append(result[5] - result[4])

    @property
    def completed(self) -> int:
        return self.succeeded + self.failed + self.timed_out + self.cancelled + self.dropped


class PoolStats:
    """Adds up a pool's trackers: live ones on demand, finished ones as they end."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: set[Tracker] = set()
        self._done = Tracker()
        self._first: float | None = None

    def open(self, tracker: Tracker) -> None:
        with self._lock:
            self._live.add(tracker)
            if self._first is None:
                self._first = time.monotonic()

    def close(self, tracker: Tracker) -> None:
        with self._lock:
            self._live.discard(tracker)
            done = self._done
            for name in ("taken", "succeeded", "failed", "timed_out", "cancelled", "dropped"):
                setattr(done, name, getattr(done, name) + getattr(tracker, name))
            done.retried += tracker.retried
            done.durations.extend(tracker.durations)

    def snapshot(self, limit: int | None = None) -> Statistics:
        with self._lock:
            trackers = [*self._live, self._done]
            first = self._first
        # Read without the runs' locks, in the order jobs move (taken, then
        # where they wait or run, then results): a job moving on between two
        # reads is counted twice, not missed (see _Run._waiting).
        taken = queued = running = held = 0
        for t in trackers:
            taken += t.taken
            waiting = t.waiting()
            queued += waiting[0]
            running += waiting[1]
            held += waiting[2]
            taken += waiting[3]
        totals = {
            name: sum(getattr(t, name) for t in trackers)
            for name in ("succeeded", "failed", "timed_out", "cancelled", "dropped")
        }
        finished = sum(totals[n] for n in ("succeeded", "failed", "timed_out", "cancelled"))
        durations = sorted(d for t in trackers for d in list(t.durations))
        elapsed = time.monotonic() - first if first is not None else 0.0
        completed = finished + totals["dropped"]
        return Statistics(
            submitted=taken,
            queued=queued,
            running=running,
            held=held,
            succeeded=totals["succeeded"],
            failed=totals["failed"],
            timed_out=totals["timed_out"],
            cancelled=totals["cancelled"],
            retried=sum(t.retried for t in trackers),
            dropped=totals["dropped"],
            latency_p50=_percentile(durations, 0.50),
            latency_p95=_percentile(durations, 0.95),
            latency_p99=_percentile(durations, 0.99),
            jobs_per_second=completed / elapsed if elapsed > 0 else 0.0,
            elapsed=elapsed,
            limit=limit,
        )


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class ProgressBar:
    """A live bar on stderr for one run: done, failed, running, rate, ETA when the total is known.

    Drawn with tqdm (the ``progress`` extra) and refreshed from the timer
    thread ten times a second, never per job. Silent (nothing is drawn, no
    timer runs) when stderr is not a terminal, unless ``force``.
    """

    INTERVAL: Final = 0.1
    # Benchmarks draw into this stream instead of a terminal (None: stderr, if a terminal).
    force_stream: IO[str] | None = None

    def __init__(
        self,
        tracker: Tracker,
        total: int | None,
        running: Callable[[], int],
        force: bool = False,
        limit: Callable[[], int] | None = None,
    ) -> None:
        self._tracker = tracker
        self._running = running
        self._limit = limit  # an adaptive limit's current value, shown beside running
        self._bar: Any = None
        self._timer: Any = None
        self._lock = threading.Lock()
        self._closed = False
        stream = ProgressBar.force_stream or sys.stderr
        if not (force or ProgressBar.force_stream is not None or sys.stderr.isatty()):
            return
        try:
            from tqdm import tqdm
        except ImportError:
            _log.warning("rxpool: progress=True needs tqdm: pip install 'rxpool[progress]'")
            return
        self._bar = tqdm(total=total, unit="job", dynamic_ncols=True, file=stream)
        self._schedule()

    def _schedule(self) -> None:
        self._timer = call_later(self.INTERVAL, self._tick, None)

    def _tick(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._draw()
        self._schedule()

    def _draw(self) -> None:
        t = self._tracker
        bar = self._bar
        failed = t.failed + t.timed_out + t.cancelled + t.dropped
        bar.n = t.completed
        limit = f" limit={self._limit()}" if self._limit is not None else ""
        bar.set_postfix_str(
            f"done={t.succeeded} failed={failed} running={self._running()}{limit}", False
        )
        bar.refresh()

    def close(self) -> None:
        with self._lock:
            if self._closed or self._bar is None:
                self._closed = True
                return
            self._closed = True
            self._draw()
            self._bar.close()
        if self._timer is not None:
            self._timer.cancel()
