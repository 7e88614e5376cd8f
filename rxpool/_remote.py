"""What runs on the other side of a process or cluster backend: a chunk of calls.

A *call* is ``(fn, args, kwargs)``; its *outcome* is ``(ok, value_or_error,
seconds)``. Running a chunk never raises: each call's exception is its
outcome, with the worker's traceback attached as a note, so one bad job in a
chunk never hides the others' results.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import mmap
import os
import pickle
import select
import struct
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from ._exceptions import Cancelled, NotSendable, copy_of

Call = tuple[Callable[..., Any], tuple[Any, ...], Mapping[str, Any]]
Outcome = tuple[bool, Any, float]

# A record of a spill file: the chunk's number, how many outcomes follow and
# the length of their pickle (see worker_main and `load_outcomes`).
SPILL_HEADER: Final = struct.Struct("<qII")
# The size of a spill file: the records of one chunk, from its start. An
# outcome that does not fit is not spilled (nor, to keep the records in
# order, the rest of its chunk): a job returning large values would copy
# each one twice, and fill a small temporary directory.
SPILL_MAX: Final = 1 << 20
_HEADER_SIZE: Final = SPILL_HEADER.size
_NO_RECORD: Final = bytes(_HEADER_SIZE)  # a header of no chunk: the end of the records
_pack_header: Final = SPILL_HEADER.pack_into
# A chunk's outcomes go back pickled in segments of this many seconds' calls
# (see worker_main).
SEGMENT_EVERY: Final = 0.001


def run_calls(calls: Sequence[Call], *, sent: bool = False) -> list[Outcome]:
    """Run each call in order; an exception is that call's outcome, not the chunk's.

    ``sent``: the outcomes are to be pickled and sent to another process: an
    exception gets the worker's traceback as a note and is made fit to cross
    (`_portable`). Either way, what is not an `Exception` (a job's
    ``sys.exit()``) becomes a `RuntimeError` naming it: it must end neither
    the worker nor the program that gets it.
    """
    outcomes: list[Outcome] = []
    for fn, args, kwargs in calls:
        started = time.perf_counter()
        try:
            value = fn(*args, **kwargs)
            if inspect.iscoroutine(value):
                value = asyncio.run(value)
        except Exception as error:
            failure = _portable(error) if sent else error
            outcomes.append((False, failure, time.perf_counter() - started))
        except BaseException as error:  # SystemExit in a job must not end the worker
            outcomes.append((False, _exit_error(error), time.perf_counter() - started))
        else:
            outcomes.append((True, value, time.perf_counter() - started))
    return outcomes


def failed_outcomes(error: Exception, calls: int) -> list[Outcome]:
    """The outcomes of ``calls`` calls that failed together: an exception object each."""
    return [(False, error if index == 0 else copy_of(error), 0.0) for index in range(calls)]


def _exit_error(error: BaseException) -> RuntimeError:
    """The job's error for what it raised that is not an `Exception` (``SystemExit``...)."""
    stand_in = RuntimeError(f"the job raised {error!r}")  # as `job_error` says it on threads
    stand_in.add_note(f"where it ran:\n{_traceback_of(error)}")
    return stand_in


def _traceback_of(error: BaseException) -> str:
    return "".join(traceback.format_exception(error)).rstrip()


def _portable(error: Exception) -> object:
    """The error, with the worker's traceback as a note, in a form fit to cross back.

    An exception pickle cannot rebuild (its ``__init__`` takes arguments
    besides ``args``, as many libraries' errors do, and loading one calls
    ``type(error)(*error.args)``) crosses as its own type all the same, in a
    `_Carried`, which loads as the exception rebuilt without ``__init__``.
    Only one that cannot cross even so (its class cannot be imported, its
    ``args`` cannot be pickled) becomes a `RuntimeError` naming it.
    """
    remote = _traceback_of(error)
    with contextlib.suppress(Exception):
        error.add_note(f"in the worker:\n{remote}")
        if _crosses(error):
            return error
        carried = _Carried(error)
        if _crosses(carried):
            return carried
    stand_in = RuntimeError(f"{type(error).__name__}: {error}")
    stand_in.add_note(f"in the worker (the original exception cannot be pickled):\n{remote}")
    return stand_in


def _crosses(value: object) -> bool:
    """Whether ``value`` pickles and loads again (here: the program has the same classes)."""
    try:
        pickle.loads(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception:
        return False
    return True


def _sendable_state(error: BaseException) -> dict[str, Any]:
    """``error``'s attributes less those that do not cross, which a note names."""
    state: dict[str, Any] = {}
    left: list[str] = []
    for name, value in vars(error).items():
        if _crosses(value):
            state[name] = value
        else:
            left.append(name)
    if left:
        note = f"not sent back from the worker (they cannot be pickled): {', '.join(left)}"
        state["__notes__"] = [*state.get("__notes__", ()), note]
    return state


class _Carried:
    """An exception on its way back, pickled as `_rebuilt` rebuilds it.

    Not an exception itself: a reducer registered for every exception class
    (``tblib``'s, which Dask installs) would come before the exception's own.
    """

    __slots__ = ("reduced",)

    def __init__(self, error: BaseException) -> None:
        self.reduced = (_rebuilt, (type(error), error.args, _sendable_state(error)))

    def __reduce__(self) -> tuple[Any, ...]:
        return self.reduced


def _rebuilt(cls: type[BaseException], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    """An exception of ``cls`` with these ``args`` and attributes, not calling ``__init__``."""
    error = cls.__new__(cls, *args)
    error.args = args
    vars(error).update(state)
    return error


def run_one(fn: Callable[..., Any], /, *args: Any) -> bytes:
    """A Dask task of one call: ``fn(*args)``, as `run_calls` runs it; its value pickled here.

    Dask catches only `Exception` in a task: a job's ``sys.exit()`` would
    stop an in-process cluster, or kill a worker process. Here it fails the
    job with a `RuntimeError` naming it, as on every other backend. The
    job's own exception is raised for Dask to send back with its traceback,
    less the attributes that cannot be pickled (Dask would send a bare
    `Exception` instead); a coroutine is run to its end, as in a chunk.

    The value comes back pickled as a chunk's outcomes do (one that cannot be
    pickled as its `NotSendable`), its own time not measured
    (`load_outcomes` loads it): the client fetches the values of
    tasks that end together in one message, so a value that Dask itself
    failed to load would fail its neighbours' fetches too.
    """
    try:
        value = fn(*args)
        if inspect.iscoroutine(value):
            value = asyncio.run(value)
    except Exception as error:
        if not _crosses(error):
            with contextlib.suppress(Exception):
                state = _sendable_state(error)
                vars(error).clear()
                vars(error).update(state)
        raise
    except BaseException as error:  # SystemExit, GeneratorExit, KeyboardInterrupt in the job
        raise _exit_error(error) from None
    return dumps_outcomes([(True, value, 0.0)], _cloud_dumps)


def run_calls_sent(calls: Sequence[Call]) -> bytes:
    """`run_calls` for a Dask task: the outcomes come back pickled by the worker.

    So a value that cannot be pickled fails its own call with a `NotSendable`
    (`dumps_outcomes`), not the whole chunk with the cluster's serialization
    error, and a value that cannot be loaded in the program fails the chunk
    it came back with (`load_outcomes`), not the fetch of other tasks. A
    value plain pickle refuses (a lambda, a class defined in a function) goes
    with cloudpickle, as Dask would send it.
    """
    return dumps_outcomes(run_calls(calls, sent=True), _cloud_dumps)


def _dumps(value: object) -> bytes:
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def _cloud_dumps(value: object) -> bytes:
    try:
        return _dumps(value)
    except Exception:
        import cloudpickle  # a dependency of distributed, on every Dask worker

        data: bytes = cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        return data


def dumps_outcomes(outcomes: list[Outcome], dumps: Callable[[object], bytes] = _dumps) -> bytes:
    """Pickle outcomes; a value that cannot be pickled becomes that call's `NotSendable`."""
    try:
        return dumps(outcomes)
    except Exception:
        checked: list[Outcome] = []
        for ok, value, seconds in outcomes:
            try:
                dumps(value)
            except Exception as error:
                what = "result" if ok else "exception"
                value = NotSendable(f"the job's {what} cannot be sent back: {error!r}")
                ok = False
            checked.append((ok, value, seconds))
        return dumps(checked)


def load_outcomes(segment: bytes, calls: int) -> list[Outcome]:
    """The outcomes of ``calls`` calls pickled together, as this process loads them.

    A value that pickles in the worker may still fail to load here (its
    ``__reduce__`` or ``__setstate__`` raises, its class is missing): then
    each of the calls gets a `NotSendable` saying so, instead of the error
    ending the run.
    """
    try:
        outcomes: list[Outcome] = pickle.loads(segment)
    except Exception as error:
        what = "its result" if calls == 1 else f"the results of {calls} jobs sent back together"
        failure = NotSendable(f"{what} cannot be loaded in this process: {error!r}")
        return failed_outcomes(failure, calls)
    return outcomes


def worker_main(conn: Any, mark: Any, at: Any, spill_path: str | None, program: int) -> None:
    """A process worker: run chunks from ``conn`` until it closes or asks it to exit.

    A chunk comes as ``(seq, [pickled call, ...])``; an empty message asks
    the worker to exit. A chunk's calls not started yet
    are skipped (a `Cancelled` outcome each) once the parent sets
    ``mark.value`` to ``seq`` or more. ``at`` (two integers in shared memory)
    holds ``seq`` and the index of the call the worker loads or runs (-1
    before the first), so that if the process dies, the parent knows which
    call it died under: the calls after it never started. Both are 0 until
    the process gets here: one that dies before (running the main module
    again, say) is known to have died starting.

    The outcomes go back as one message a chunk, a list of pickled segments
    (``(calls, pickled outcomes)`` each: see `load_outcomes`), one for the
    calls finished in each `SEGMENT_EVERY` seconds: a value that fails to
    load in the parent fails its segment, not the whole chunk. Each call's
    outcome is also written, as it finishes, to the file at ``spill_path``
    (`SPILL_MAX` bytes the parent made; the worker maps it and unlinks it):
    if the process dies, the parent reads from it the outcome of every call
    the chunk had finished (`read_spill`). The file is mapped, so a record
    costs a pickle and a copy, not a system call, and it outlives a process
    killed outright; it wakes no thread of the parent's.

    Between chunks the worker also watches ``program``, the process that
    started it (a pidfd, where Linux has them), and exits when it ends: the
    end of the pipe is not enough, as a process the program forked (a
    `ProcessPoolExecutor`'s worker) holds a copy of the program's end, and
    a program killed outright would otherwise leave the worker waiting for
    ever.

    The objects the process starts with (rxpool, the main module and what it
    imports: tens of thousands in a real program) are frozen first
    (`gc.freeze`): the cyclic garbage collector never walks them again, so a
    job that allocates lists and dicts does not pay for them in every full
    collection, and a process forked from the forkserver does not write to
    the pages it shares with the server when it collects.
    """
    at[1] = -1  # the process started: it was all zeros (see _Worker.started)
    gc.freeze()
    spill = _Spill.open(spill_path)
    try:
        ended = _ending_of(program, conn.fileno())
    except ProcessLookupError:
        return  # the program has ended already
    while True:
        try:
            if ended is not None and ended():
                return
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        if not data:
            return  # the parent's request to exit (see _Worker.ask_to_stop)
        seq, blobs = pickle.loads(data)
        segments: list[tuple[int, bytes]] = []
        outcomes: list[Outcome] = []  # finished since the last segment
        at[1] = -1  # first: a kill between the two writes must not blame an old index
        at[0] = seq
        if spill is not None:
            spill.start(seq)
        last = time.perf_counter()
        for index, blob in enumerate(blobs):
            at[1] = index
            if mark.value >= seq:
                outcomes.append((False, Cancelled("the job was cancelled before it started"), 0.0))
            else:
                try:
                    call = pickle.loads(blob)
                except BaseException as error:  # e.g. a function this process cannot import
                    error = NotSendable(f"the job cannot be loaded in the worker: {error!r}")
                    outcomes.append((False, error, 0.0))
                else:
                    outcomes.extend(run_calls([call], sent=True))
            if spill is not None:
                spill.write(outcomes[-1])
            if time.perf_counter() - last >= SEGMENT_EVERY:
                segments.append((len(outcomes), dumps_outcomes(outcomes)))
                outcomes = []
                last = time.perf_counter()
        if outcomes or not segments:
            segments.append((len(outcomes), dumps_outcomes(outcomes)))
        try:
            conn.send_bytes(pickle.dumps(segments, protocol=pickle.HIGHEST_PROTOCOL))
        except (EOFError, OSError):
            return


class _Spill:
    """A worker's record of the outcomes of the chunk it runs, in a mapped file.

    The records of one chunk, one a call, start at the file's beginning;
    each is its `SPILL_HEADER` then its pickle, the header written after the
    pickle, so the last record a killed process leaves is whole or is not
    there (`read_spill` stops at the first header of another chunk).
    """

    __slots__ = ("map", "offset", "seq", "spilling")

    def __init__(self, mapped: mmap.mmap) -> None:
        self.map = mapped
        self.offset = 0
        self.seq = 0
        self.spilling = True

    @classmethod
    def open(cls, path: str | None) -> _Spill | None:
        """The spill file at ``path`` mapped, and unlinked (the parent holds it open)."""
        if path is None:
            return None
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            return None
        try:
            mapped = mmap.mmap(fd, SPILL_MAX)
        except (OSError, ValueError):  # not the size the parent made it
            return None
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
        return cls(mapped)

    def start(self, seq: int) -> None:
        """Begin the records of chunk ``seq``: a header of no chunk ends the last one's."""
        self.map[:_HEADER_SIZE] = _NO_RECORD
        self.offset, self.seq, self.spilling = 0, seq, True

    def write(self, outcome: Outcome) -> None:
        """Record the outcome of the chunk's next call (unless an earlier one did not fit)."""
        if not self.spilling:
            return
        try:  # dumps_outcomes' first step, inline: two calls less on every job's path
            data = pickle.dumps([outcome], protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            data = dumps_outcomes([outcome])  # its NotSendable, as through the pipe
        offset = self.offset
        start = offset + _HEADER_SIZE
        end = start + len(data)
        if end + _HEADER_SIZE > SPILL_MAX:
            self.spilling = False  # the rest of this chunk goes with the chunk only
            return
        self.map[start : end + _HEADER_SIZE] = data + _NO_RECORD  # the end, for now
        _pack_header(self.map, offset, self.seq, 1, len(data))
        self.offset = end


def _ending_of(pid: int, fd: int) -> Callable[[], bool] | None:
    """A wait until ``fd`` is readable or process ``pid`` ends: True if it ended.

    None where there are no pidfds (not Linux, or a Linux before 5.3).

    Raises:
        ProcessLookupError: the process has ended already.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        raise
    except (AttributeError, OSError):
        return None
    waiter = select.poll()
    waiter.register(pidfd, select.POLLIN)
    waiter.register(fd, select.POLLIN)

    def ended() -> bool:
        return any(ready == pidfd for ready, _ in waiter.poll())

    return ended


def read_spill(fd: int, seq: int) -> list[Outcome]:
    """The outcomes of chunk ``seq`` in the spill file ``fd``, in order (see worker_main).

    A record that cannot be loaded here gives its calls a `NotSendable` each,
    as the same outcomes sent through the pipe would (`load_outcomes`).
    """
    try:
        data = os.pread(fd, os.fstat(fd).st_size, 0)
    except OSError:
        return []
    outcomes: list[Outcome] = []
    offset = 0
    while offset + SPILL_HEADER.size <= len(data):
        chunk, calls, length = SPILL_HEADER.unpack_from(data, offset)
        offset += SPILL_HEADER.size
        if chunk != seq or offset + length > len(data):
            break  # the end of the chunk's records (or one cut short)
        outcomes.extend(load_outcomes(data[offset : offset + length], calls))
        offset += length
    return outcomes
