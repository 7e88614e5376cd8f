"""What runs on the other side of a process or cluster backend: a chunk of calls.

A *call* is ``(fn, args, kwargs)``; its *outcome* is ``(ok, value_or_error,
seconds)``. Running a chunk never raises: each call's exception is its
outcome, with the worker's traceback attached as a note, so one bad job in a
chunk never hides the others' results.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import pickle
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ._exceptions import Cancelled, NotSendable, copy_of

Call = tuple[Callable[..., Any], tuple[Any, ...], Mapping[str, Any]]
Outcome = tuple[bool, Any, float]


def run_calls(calls: Sequence[Call]) -> list[Outcome]:
    """Run each call in order; an exception is that call's outcome, not the chunk's."""
    outcomes: list[Outcome] = []
    for fn, args, kwargs in calls:
        started = time.perf_counter()
        try:
            value = fn(*args, **kwargs)
            if inspect.iscoroutine(value):
                value = asyncio.run(value)
        except BaseException as error:  # SystemExit in a job must not end the worker
            outcomes.append((False, _portable(error), time.perf_counter() - started))
        else:
            outcomes.append((True, value, time.perf_counter() - started))
    return outcomes


def failed_outcomes(error: Exception, calls: int) -> list[Outcome]:
    """The outcomes of ``calls`` calls that failed together: an exception object each."""
    return [(False, error if index == 0 else copy_of(error), 0.0) for index in range(calls)]


def _portable(error: BaseException) -> BaseException:
    """The error with the worker's traceback as a note, or a stand-in if it cannot be pickled."""
    remote = "".join(traceback.format_exception(error)).rstrip()
    try:
        error.add_note(f"in the worker:\n{remote}")
        pickle.loads(pickle.dumps(error))
    except Exception:
        stand_in = RuntimeError(f"{type(error).__name__}: {error}")
        stand_in.add_note(f"in the worker (the original exception cannot be pickled):\n{remote}")
        return stand_in
    if not isinstance(error, Exception):  # e.g. SystemExit, KeyboardInterrupt in the job
        stand_in = RuntimeError(f"the job raised {type(error).__name__}: {error}")
        stand_in.add_note(f"in the worker:\n{remote}")
        return stand_in
    return error


def dumps_outcomes(outcomes: list[Outcome]) -> bytes:
    """Pickle outcomes; a value that cannot be pickled becomes that call's `NotSendable`."""
    try:
        return pickle.dumps(outcomes, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        checked: list[Outcome] = []
        for ok, value, seconds in outcomes:
            try:
                pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as error:
                what = "result" if ok else "exception"
                value = NotSendable(f"the job's {what} cannot be sent back: {error!r}")
                ok = False
            checked.append((ok, value, seconds))
        return pickle.dumps(checked, protocol=pickle.HIGHEST_PROTOCOL)


def worker_main(conn: Any, mark: Any, at: Any) -> None:
    """A process worker: run chunks from ``conn`` until it closes.

    A chunk comes as ``(seq, [pickled call, ...])``; its calls not started yet
    are skipped (a `Cancelled` outcome each) once the parent sets
    ``mark.value`` to ``seq`` or more. ``at`` (two integers in shared memory)
    holds ``seq`` and the index of the call the worker loads or runs (-1
    before the first), so that if the process dies, the parent knows which
    call it died under: the calls after it never started.

    The objects the process starts with (rxpool, the main module and what it
    imports: tens of thousands in a real program) are frozen first
    (`gc.freeze`): the cyclic garbage collector never walks them again, so a
    job that allocates lists and dicts does not pay for them in every full
    collection, and a process forked from the forkserver does not write to
    the pages it shares with the server when it collects.
    """
    gc.freeze()
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        seq, blobs = pickle.loads(data)
        outcomes: list[Outcome] = []
        at[1] = -1  # first: a kill between the two writes must not blame an old index
        at[0] = seq
        for index, blob in enumerate(blobs):
            at[1] = index
            if mark.value >= seq:
                outcomes.append((False, Cancelled("the job was cancelled before it started"), 0.0))
                continue
            try:
                call = pickle.loads(blob)
            except BaseException as error:  # e.g. a function this process cannot import
                error = NotSendable(f"the job cannot be loaded in the worker: {error!r}")
                outcomes.append((False, error, 0.0))
            else:
                outcomes.extend(run_calls([call]))
        try:
            conn.send_bytes(dumps_outcomes(outcomes))
        except (EOFError, OSError):
            return
