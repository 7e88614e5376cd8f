"""A run with a `Journal`: replay what is recorded, record what finishes, emit once durable.

``journaled(source, ...)`` wraps one run (``run(filtered_source)``, the
engine's Observable of Results) in three steps, per subscription:

1. **Filter** (on the thread that pulls the source): each `Job` is checked
   (an id the caller gave, that can key a record, unique in the run); a job
   whose record can be replayed does not reach the engine, its recorded
   outcome goes to the journal thread as a ``Result(replayed=True)``.
2. **Record** (the run's journal thread): the engine's results are gathered
   for up to ``_LINGER`` seconds (group commit) and written in one
   transaction, durable on return.
3. **Emit** (the same thread, after the commit, outside every lock): the
   batch goes to the subscriber: as it came, or with ``ordered=True`` in
   source order, replayed and run results merged.

A result emitted was recorded first, so a resumed run never runs it again
(exactly-once recording); a job running when the process died has no record
and runs again (at-least-once execution). Cancelled and dropped jobs are
not recorded: they never finished. Lock order: ``_cond`` is a leaf; no
callback runs under it.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from typing import Any

import reactivex.operators as ops
from reactivex import Observable, abc
from reactivex.disposable import Disposable

from ._exceptions import Cancelled, Dropped, JournalError
from ._job import Job, Result
from ._journal import Journal, JournalRecord, JournalWriter, Row, encode_id

__all__ = ["Describe", "check_ids", "journaled", "to_journal"]

_LINGER = 0.01  # seconds a batch waits for more results before its commit
_BATCH = 2048  # ... or until it has this many
_MAX_PENDING = 16384  # results waiting for the journal thread before the engine waits

# Results carry monotonic times; the journal keeps Unix times.
EPOCH = time.time() - time.monotonic()

Describe = Callable[[Job[Any]], tuple[int | None, str | None]]
"""A job's input line (or None) and fingerprint, for its record."""


def to_journal(journal: object) -> Journal | None:
    """``journal=`` as a `Journal` (checked now), or None; TypeError for anything else."""
    if journal is None or isinstance(journal, Journal):
        return journal
    if isinstance(journal, str | os.PathLike):
        return Journal(journal)
    raise TypeError(
        f"journal must be a path, an rxpool.Journal or None, got {type(journal).__name__}"
    )


def check_ids(jobs: Iterable[Job[Any]]) -> None:
    """ValueError at the call for a list of jobs a journal cannot key (ids missing, doubled)."""
    seen: set[str] = set()
    for index, job in enumerate(jobs):
        key = _key(job, f"jobs[{index}]")
        if key in seen:
            raise ValueError(f"jobs[{index}]: {_twice(job)}")
        seen.add(key)


def function_name(job: Job[Any]) -> tuple[int | None, str | None]:
    """The default `Describe`: no line; the job's function as its fingerprint."""
    fn = job.fn
    module = getattr(fn, "__module__", None) or ""
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return None, f"{module}:{name}"


def _key(job: Job[Any], where: str = "a job") -> str:
    if not job.id_given:
        raise ValueError(
            f"{where} has no id: a run with a journal keys its records by Job id,"
            " so every job needs an id= that stays the same from run to run"
        )
    try:
        return encode_id(job.id)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


def _twice(job: Job[Any]) -> str:
    return f"job id {job.id!r} appears twice: a run with a journal needs unique job ids"


def journaled(
    source: Any,
    journal: Journal,
    run: Callable[[Any], Observable[Result[Any]]],
    *,
    ordered: bool,
    replay: bool = True,
    describe: Describe = function_name,
    open_writer: Callable[[], JournalWriter] | None = None,
) -> Observable[Result[Any]]:
    """The Observable of ``run`` over ``source``, recorded in ``journal`` (see the module).

    ``replay=False`` (the command line, which replays and filters the input
    itself) only records and emits. ``open_writer`` gives the writer (the
    command line opens it first, to check its input against the records).
    """

    def subscribe(
        observer: abc.ObserverBase[Result[Any]], scheduler: abc.SchedulerBase | None = None
    ) -> abc.DisposableBase:
        try:
            writer = open_writer() if open_writer is not None else JournalWriter(journal)
        except JournalError as error:
            observer.on_error(error)
            return Disposable()
        state = _JournalRun(observer, writer, ordered=ordered, replay=replay, describe=describe)
        state.start()
        state.attach(run(state.filter(source)).subscribe(state, scheduler=scheduler))
        return Disposable(state.dispose)

    return Observable(subscribe)


class _Cell:
    __slots__ = ("result",)

    def __init__(self, result: Result[Any] | None = None) -> None:
        self.result = result


_OPEN = object()


class _JournalRun(abc.ObserverBase[Result[Any]]):
    """One subscription: the engine's observer, the source filter and the journal thread."""

    def __init__(
        self,
        observer: abc.ObserverBase[Result[Any]],
        writer: JournalWriter,
        *,
        ordered: bool,
        replay: bool,
        describe: Describe,
    ) -> None:
        self._observer = observer
        self._writer = writer
        self._keep_failed = writer.journal.keep_failed
        self._ordered = ordered
        self._replay = replay
        self._describe = describe
        self._cond = threading.Condition(threading.Lock())
        self._pending: list[tuple[Result[Any], Row | None, _Cell | None]] = []
        self._end: object = _OPEN  # None: completed; an Exception: on_error
        self._disposed = False
        self._subscription: abc.DisposableBase | None = None
        # Jobs given to the engine and not yet back, by their descriptor (the
        # object their Result carries): (key, line, fingerprint, cell).
        self._flight: dict[int, tuple[str, int | None, str | None, _Cell | None]] = {}
        self._seen: set[str] = set()
        self._last_fn: object = None
        self._last: tuple[int | None, str | None] = (None, None)
        self._order: deque[_Cell] = deque()  # ordered=True: results in source order
        self._thread = threading.Thread(target=self._loop, name="rxpool-journal", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def attach(self, subscription: abc.DisposableBase) -> None:
        with self._cond:
            self._subscription = subscription
            disposed = self._disposed
        if disposed:
            subscription.dispose()

    def dispose(self) -> None:
        """Emit nothing more; the journal thread commits what it holds and ends (no wait)."""
        self._writer.ending.set()
        with self._cond:
            self._disposed = True
            subscription = self._subscription
            self._cond.notify_all()
        if subscription is not None:
            subscription.dispose()

    # -- the source filter (the thread pulling the source) -------------------------------

    def filter(self, source: Any) -> Any:
        if isinstance(source, Observable):
            return source.pipe(ops.filter(self._admit))
        if isinstance(source, Iterable):
            return self._filtered(source)
        if isinstance(source, AsyncIterable):
            return self._afiltered(source)
        return source  # the engine says what is wrong with it

    def _filtered(self, source: Iterable[Any]) -> Iterator[Any]:
        admit = self._admit
        for item in source:
            if admit(item):
                yield item

    async def _afiltered(self, source: AsyncIterable[Any]) -> AsyncIterator[Any]:
        admit = self._admit
        async for item in source:
            if admit(item):
                yield item

    def _admit(self, job: Any) -> bool:
        """True to run ``job``; False when its recorded result is replayed instead."""
        if not isinstance(job, Job):
            return True  # the engine ends the run with its TypeError
        key = _key(job)
        if job.fn is self._last_fn:  # most runs call one function: describe it once
            line, fingerprint = self._last
        else:
            line, fingerprint = self._last = self._describe(job)
            self._last_fn = job.fn if line is None else None
        record = self._writer.lookup(key) if self._replay else None
        if record is not None and record.fingerprint not in (None, fingerprint):
            raise ValueError(
                f"job id {job.id!r} was recorded in {self._writer.journal.path} for"
                f" {record.fingerprint}, and is now {fingerprint}: job ids must stay"
                " the same from run to run"
            )
        replayed = None
        if record is not None and (record.ok or self._keep_failed) and record.replayable:
            try:
                replayed = _replayed(job, record)
            except Exception:  # its value's class moved: run it again
                replayed = None
        cell = _Cell() if self._ordered else None
        with self._cond:
            if self._replay:
                if key in self._seen:
                    raise ValueError(_twice(job))
                self._seen.add(key)
            if cell is not None:
                self._order.append(cell)
            if replayed is None:
                self._flight[id(job.descriptor)] = (key, line, fingerprint, cell)
                return True
        self._push(replayed, None, cell)
        return False

    # -- the engine's observer (the run's emitting thread) -------------------------------

    def on_next(self, result: Result[Any]) -> None:
        recorded = not isinstance(result.error, Cancelled | Dropped)  # these never finished
        with self._cond:
            flight = self._flight.pop(id(result.descriptor), None)
            cell = flight[3] if flight is not None else None
            self._queue(result, _row(result, flight) if recorded else None, cell)

    def _push(self, result: Result[Any], row: Row | None, cell: _Cell | None) -> None:
        with self._cond:
            self._queue(result, row, cell)

    def _queue(self, result: Result[Any], row: Row | None, cell: _Cell | None) -> None:
        """Hand ``result`` (and its record) to the journal thread (under ``_cond``)."""
        while len(self._pending) >= _MAX_PENDING and not self._disposed:
            self._cond.wait()
        self._pending.append((result, row, cell))
        if len(self._pending) in (1, _BATCH):
            self._cond.notify_all()

    def on_error(self, error: Exception) -> None:
        self._end_with(error)

    def on_completed(self) -> None:
        self._end_with(None)

    def _end_with(self, end: Exception | None) -> None:
        with self._cond:
            if self._end is _OPEN:
                self._end = end
            self._cond.notify_all()

    # -- the journal thread ---------------------------------------------------------------

    def _loop(self) -> None:
        try:
            while self._round():
                pass
        except Exception as error:  # the disk is full, the file went away
            self._stop(JournalError(f"journal {self._writer.journal.path}: cannot record: {error}"))
        finally:
            self._writer.close()

    def _round(self) -> bool:
        """Commit one batch, then emit it; False when the run is over."""
        cond = self._cond
        with cond:
            while not self._pending and self._end is _OPEN and not self._disposed:
                cond.wait()
            if len(self._pending) < _BATCH and self._end is _OPEN and not self._disposed:
                cond.wait(_LINGER)  # group commit: what finishes meanwhile joins this batch
            batch, self._pending = self._pending, []
            end, disposed = self._end, self._disposed
            cond.notify_all()  # an on_next waiting for room
        self._writer.write([row for _, row, _ in batch if row is not None])
        if disposed:
            return False
        if not self._emit(batch):
            return False
        if end is _OPEN:
            return True
        if self._ordered:
            self._emit_order(final=True)
        self._writer.ending.set()
        self._writer.close()  # first: once the run is over, the file is whole and free
        with contextlib.suppress(Exception):  # nothing more to tell the subscriber
            if end is None:
                self._observer.on_completed()
            else:
                self._observer.on_error(end)  # type: ignore[arg-type]
        return False

    def _emit(self, batch: list[tuple[Result[Any], Row | None, _Cell | None]]) -> bool:
        on_next = self._observer.on_next
        for result, _, cell in batch:
            if cell is not None:  # ordered: it waits for the results before it
                cell.result = result
                continue
            if self._disposed:
                return False
            try:
                on_next(result)
            except Exception as error:  # the subscriber's own failure
                self._stop(error)
                return False
        return self._emit_order(final=False) if self._ordered else True

    def _emit_order(self, final: bool) -> bool:
        order = self._order
        while True:
            with self._cond:
                if not order or self._disposed:
                    return not self._disposed
                cell = order[0]
                if cell.result is None:
                    if not final:
                        return True
                    order.popleft()  # a job the engine never took back: nothing to say
                    continue
                order.popleft()
            try:
                self._observer.on_next(cell.result)
            except Exception as error:  # the subscriber's own failure
                self._stop(error)
                return False

    def _stop(self, error: Exception) -> None:
        """End the run with ``error``: stop the engine, tell the subscriber once."""
        self.dispose()
        with contextlib.suppress(Exception):  # nothing more to tell the subscriber
            self._observer.on_error(error)


def _row(
    result: Result[Any], flight: tuple[str, int | None, str | None, _Cell | None] | None
) -> Row:
    key, line, fingerprint = (
        flight[:3] if flight is not None else (encode_id(result.id), None, None)
    )
    error = result.error
    return Row(
        key,
        line,
        fingerprint,
        error is None,
        result.value,
        error,
        result.attempt,
        EPOCH + result.started,
        EPOCH + result.finished,
    )


def _replayed(job: Job[Any], record: JournalRecord) -> Result[Any]:
    """The recorded outcome of ``job`` as a `Result` (``replayed=True``)."""
    value = record.value if record.ok else None
    return Result(
        value,
        record.error,
        job.descriptor,
        record.attempt,
        record.started - EPOCH,
        record.finished - EPOCH,
        True,
    )
