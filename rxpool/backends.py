"""Where jobs run: threads, the asyncio loop, processes, or a Dask cluster.

Every backend gives the same results, ordering options, timeouts, retries,
accounting and cancellation semantics; only speed and placement differ.

* `ThreadBackend` (``"thread"``, the default): worker slots are threads that
  drain jobs in adaptive batches. For blocking I/O and anything that releases
  the GIL.
* `AsyncioBackend` (``"asyncio"``): worker slots are tasks on an event loop;
  ``async def`` jobs run there with no thread each.
* `ProcessBackend` (``"process"``): jobs are pickled to worker processes, in
  chunks when they are small. For pure-Python CPU-bound work.
* `DaskBackend(client)`: jobs go to a Dask cluster through ``client.submit``.

Process and Dask backends implement the `Backend` protocol: a worker slot (a
thread) hands a chunk of calls to `Backend.run_chunk` and waits for their
outcomes. Write your own by implementing it.
"""

from __future__ import annotations

import ast
import asyncio
import atexit
import contextlib
import json
import multiprocessing
import os
import pickle
import select
import sys
import tempfile
import threading
import uuid
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from multiprocessing import util as multiprocessing_util
from multiprocessing.connection import wait
from typing import Any, Final, Protocol, runtime_checkable

from ._checks import check_bool, check_count
from ._exceptions import Cancelled, NotSendable, WorkerCrashed
from ._remote import (
    SPILL_MAX,
    Call,
    Outcome,
    failed_outcomes,
    load_outcomes,
    read_spill,
    run_calls,
    run_calls_sent,
    run_one,
    worker_main,
)
from ._token import CancelToken

__all__ = [
    "AsyncioBackend",
    "Backend",
    "Call",
    "DaskBackend",
    "Lane",
    "Outcome",
    "ProcessBackend",
    "ThreadBackend",
]


@runtime_checkable
class Backend(Protocol):
    """Runs chunks of calls somewhere else while a worker slot (a thread) waits.

    ``run_chunk(calls, token)`` runs each ``(fn, args, kwargs)`` and returns
    one ``(ok, value_or_error, seconds)`` per call, in order; a call's
    exception is its outcome. When the worker running the chunk died, it
    raises `WorkerCrashed` (every call in it is then reported crashed), or,
    if it knows which call the worker died under, gives that call a
    `WorkerCrashed` outcome and the others theirs (`ProcessBackend` does); and
    `Cancelled` (``token.new_error()``) when it gave the chunk up because
    ``token`` was cancelled. ``chunk_size``: calls per chunk, or None to let
    rxpool size chunks (four times the round trip's overhead in work, at most
    50 ms of work; on a `Lane`, see docs/backends.md). Calls with a timeout
    or a retry policy always go alone.
    """

    chunk_size: int | None

    def run_chunk(self, calls: Sequence[Call], token: CancelToken) -> list[Outcome]: ...

    def close(self) -> None: ...


# The members of `Backend`, to name the ones an object lacks (a runtime check
# of the Protocol only says yes or no).
_BACKEND_MEMBERS: Final = ("run_chunk", "close", "chunk_size")


class ThreadBackend:
    """Worker slots are threads (reactivex schedulers, or rxpool's own reused threads).

    ``run_chunk`` runs the calls on the calling thread; pools and operators
    use their batched drain loops instead.
    """

    chunk_size: int | None = None

    def run_chunk(self, calls: Sequence[Call], token: CancelToken) -> list[Outcome]:
        return run_calls(calls)

    def close(self) -> None:
        """Nothing to release."""

    def __repr__(self) -> str:
        return "ThreadBackend()"


class AsyncioBackend:
    """Worker slots are tasks on ``loop`` (default: the loop running where a run starts).

    Raises:
        TypeError: ``loop`` is not an event loop.
    """

    chunk_size: int | None = None

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        if loop is not None and not isinstance(loop, asyncio.AbstractEventLoop):
            raise TypeError(f"loop must be an asyncio event loop, got {type(loop).__name__}")
        self.loop = loop

    def run_chunk(self, calls: Sequence[Call], token: CancelToken) -> list[Outcome]:
        return run_calls(calls)

    def close(self) -> None:
        """Nothing to release: the loop belongs to the caller."""

    def __repr__(self) -> str:
        return f"AsyncioBackend(loop={self.loop!r})"


class Lane(Protocol):
    """One worker held by one slot, with chunks queued behind the running one.

    Optional for backends (`ProcessBackend` has it): a backend with
    ``open_lane(token)`` lets a slot send its next chunk while the worker
    still runs the last one, so the worker never waits for the round trip.
    Chunks run one after the other, in the order sent, so a slot still runs
    one chunk at a time. ``send`` does not raise for the chunk: ``receive``
    returns the outcomes of the oldest chunk not yet received, or raises for
    it as `Backend.run_chunk` does. ``close`` ends the lane (the engine first
    receives every chunk sent).

    Threading: one slot thread calls ``send``, ``receive`` and ``close``; the
    cancel of the lane's token (``open_lane(token)``) may come from any
    thread, and must keep chunks not yet started from starting. Cost: the
    engine keeps at most two chunks in flight, so a lane holds at most one
    chunk's calls beyond the running one.
    """

    def send(self, calls: Sequence[Call]) -> None: ...

    def receive(self) -> list[Outcome]: ...

    def close(self) -> None: ...


class _Worker:
    __slots__ = (
        "__weakref__",
        "_poll",
        "at",
        "conn",
        "mark",
        "process",
        "sent",
        "spill",
        "spill_path",
    )

    def __init__(self, context: Any, calls: Sequence[Call], spilling: bool) -> None:
        if context.get_start_method() == "forkserver":
            _start_forkserver(calls)
        # Where the worker spills the outcomes of a chunk's finished calls
        # (see worker_main); read only when it dies. It unlinks the file.
        # No temporary directory to write to: no spilling (a crash then
        # loses the results of every call its chunk had finished).
        self.spill: int = -1
        self.spill_path: str | None = None
        if spilling:
            self._make_spill()
        try:
            self.conn, child = context.Pipe()
            # Chunks numbered up to ``mark`` are cancelled: the worker skips their
            # calls not yet started (set from the parent, read before each call).
            self.mark = context.RawValue("q", 0)
            # The chunk and the index of the call the worker runs (or loads) now.
            self.at = context.RawArray("q", 2)
            self.sent = 0  # the number of the last chunk sent
            self.process = context.Process(
                target=worker_main,
                args=(child, self.mark, self.at, self.spill_path, os.getpid()),
                name="rxpool-process",
                daemon=False,  # so that a job may start processes of its own: see _end_processes
            )
            self.process.start()
        except BaseException:
            self._drop_spill()
            raise
        _track(self)
        child.close()
        # The pipe and the process's sentinel, registered once: a wait for the
        # next outcomes is one poll() call (only the thread holding the worker reads).
        self._poll: Any = None
        if hasattr(select, "poll"):
            self._poll = select.poll()
            self._poll.register(self.conn.fileno(), select.POLLIN)
            self._poll.register(self.process.sentinel, select.POLLIN)

    def send(self, seq: int, blobs: list[bytes]) -> None:
        """Send chunk ``seq`` (its calls, pickled one by one); a dead process: `read` says so."""
        message = pickle.dumps((seq, blobs), protocol=pickle.HIGHEST_PROTOCOL)
        with contextlib.suppress(OSError):
            self.conn.send_bytes(message)

    def read(self) -> bytes | None:
        """The next message from the process, or None if it died first."""
        try:
            if self._poll is not None:
                fileno = self.conn.fileno()
                if not any(fd == fileno for fd, _ in self._poll.poll()):
                    return None  # only the sentinel: the process died
            elif self.conn not in wait([self.conn, self.process.sentinel]):
                return None
            data: bytes = self.conn.recv_bytes()
        except (EOFError, OSError):
            return None
        return data

    def saved(self, seq: int) -> list[Outcome]:
        """The outcomes of chunk ``seq``'s first calls that the dead process spilled."""
        return read_spill(self.spill, seq) if self.spill >= 0 else []

    def release(self) -> None:
        """Close the pipe and the spill file (the process has ended or is ending)."""
        self.conn.close()
        self._drop_spill()

    def _make_spill(self) -> None:
        """Create the spill file, its `SPILL_MAX` bytes taken on disk now.

        Taken, not a sparse file: a write to the worker's map of a page the
        disk has no room for would kill it (SIGBUS). A full disk means no
        spilling instead.
        """
        with contextlib.suppress(OSError):
            self.spill, self.spill_path = tempfile.mkstemp(prefix="rxpool-outcomes-")
        if self.spill_path is None:
            return
        try:
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(self.spill, 0, SPILL_MAX)
            else:  # macOS: write the zeros
                os.write(self.spill, bytes(SPILL_MAX))
        except OSError:
            self._drop_spill()

    def _drop_spill(self) -> None:
        if self.spill_path is not None:
            with contextlib.suppress(OSError):
                os.close(self.spill)
            with contextlib.suppress(OSError):
                os.unlink(self.spill_path)  # the process died before it did
            self.spill, self.spill_path = -1, None

    def died_under(self, seq: int) -> int | None:
        """The index of the call of chunk ``seq`` the dead process ran; None: none had started."""
        index = int(self.at[1])
        return index if self.at[0] == seq and index >= 0 else None

    def started(self) -> bool:
        """Whether the process got as far as `worker_main` (which marks ``at``)."""
        return bool(self.at[0] or self.at[1])

    def cancel_upto(self, seq: int) -> None:
        """Skip the calls not started yet of every chunk numbered up to ``seq``."""
        if self.mark.value < seq:
            self.mark.value = seq

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()

    def ask_to_stop(self) -> None:
        """Tell the (idle) process to exit, and release the pipe.

        An empty message, not only the pipe's end: a process forked from this
        one (a `ProcessPoolExecutor`'s, by default on Linux) holds a copy of
        this end of the pipe, and the worker sees no end of file while it lives.
        """
        with contextlib.suppress(OSError, ValueError):
            self.conn.send_bytes(b"")
        self.release()

    def join_or_kill(self, timeout: float) -> None:
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout)

    def stop(self, timeout: float) -> None:
        self.ask_to_stop()
        self.join_or_kill(timeout)


# This process's backends and worker processes, for _end_processes.
_backends: weakref.WeakSet[ProcessBackend] = weakref.WeakSet()
_workers: weakref.WeakSet[_Worker] = weakref.WeakSet()
_ending_in = 0  # the process whose multiprocessing shutdown runs _end_processes


def _forget_after_fork() -> None:
    global _ending_in
    _backends.clear()
    _workers.clear()
    _ending_in = 0


os.register_at_fork(after_in_child=_forget_after_fork)


def _track(worker: _Worker) -> None:
    global _ending_in
    _workers.add(worker)
    if _ending_in != os.getpid():
        _ending_in = os.getpid()
        multiprocessing_util.Finalize(None, _end_processes, exitpriority=10)


def _end_processes() -> None:
    """At this process's exit: close every `ProcessBackend`, end their processes.

    Worker processes are not daemonic, so that a job can start processes of
    its own (a `ProcessPoolExecutor`, joblib, another `WorkerPool`), as a
    `ProcessPoolExecutor`'s workers can; multiprocessing's shutdown joins
    such processes, so this runs first (a finalizer of multiprocessing's, at
    the exit of the program or of a worker process). Idle processes are told
    to exit; busy ones are terminated, as daemonic ones would be.
    """
    for backend in list(_backends):
        backend.close()
    alive = [worker for worker in list(_workers) if worker.process.is_alive()]
    for worker in alive:
        worker.process.terminate()
    for worker in alive:
        worker.process.join(1.0)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join(1.0)
        worker.release()  # a spill file it had no time to unlink goes too


class ProcessBackend:
    """Worker processes for CPU-bound pure-Python jobs.

    Each slot holds one idle process (started on demand, up to
    ``processes``) while it has chunks to run, and, while every slot has
    work, sends its next chunk while the process still runs the last one, so
    a process never waits for the round trip to the slot. A job or a result
    that cannot be pickled gets a `NotSendable` result at once. A process
    that dies under a job (``os._exit``, a segfault, the OOM killer) is
    replaced; that job gets a `WorkerCrashed` result, the jobs of its chunk
    that had run get theirs (each recorded in a mapped file as it finishes;
    only a result over 1 MiB, and those after it in its chunk, die with the
    process and get a `WorkerCrashed`), and the jobs not started yet (the rest of the
    chunk, the chunk queued behind) go to the new process; with a retry
    policy crashed jobs are retried. Functions must be importable by the
    worker processes (module-level, not lambdas), as with
    `ProcessPoolExecutor`.

    **Cancellation**: queued jobs never start, including those already sent
    to a process (it skips them); a running job's result is dropped and its
    process is free again when it returns. With ``hard_cancel=True`` a
    cancelled or timed-out job's process is killed at once and replaced
    instead: the slot is free immediately, at the cost of a new process
    (about 10 ms with ``forkserver``, 100 ms or more with ``spawn``) and of
    anything else that process held.

    **Starting processes**: by default with ``forkserver`` where the platform
    has it (Linux, macOS), else ``spawn``. A new process is then forked from
    a server process that has imported rxpool and run the main module
    (rxpool adds ``rxpool._remote`` and ``rxpool._forkserver`` to the
    forkserver's preload list before the server starts), so it starts in
    about 10 ms instead of starting Python and importing rxpool and the main
    module's imports again; the server itself starts once per program, with
    the first such backend (its processes see ``os.environ`` as it was then).
    ``fork`` is refused: rxpool always forks from a process with threads
    running.

    Args:
        processes: Worker processes at most (default: the CPU count).
        chunk_size: Calls per chunk; None sizes them from the last round trip.
        hard_cancel: Kill the process of a cancelled or timed-out job.
        start_method: ``"forkserver"`` or ``"spawn"``; None (the default):
            ``"forkserver"`` where available, else ``"spawn"``.

    Raises:
        TypeError / ValueError: an argument has the wrong type or value.
        RuntimeError: the program was read from standard input (``python -``):
            a new process would have to run the main script again, and cannot.
    """

    def __init__(
        self,
        processes: int | None = None,
        *,
        chunk_size: int | None = None,
        hard_cancel: bool = False,
        start_method: str | None = None,
    ) -> None:
        if processes is None:
            processes = os.cpu_count() or 1
        self.processes = check_count("processes", processes)
        self.chunk_size = None if chunk_size is None else check_count("chunk_size", chunk_size)
        check_bool("hard_cancel", hard_cancel)
        self.hard_cancel = hard_cancel
        methods = [m for m in multiprocessing.get_all_start_methods() if m != "fork"]
        if start_method is None:
            start_method = "forkserver" if "forkserver" in methods else "spawn"
        elif start_method == "fork":
            raise ValueError(
                "start_method='fork' is not supported: rxpool forks from a process that runs"
                " threads, so a new process could inherit a lock held by another thread or"
                " another process's pipe (and a crash would go unseen); use 'forkserver'"
                " or 'spawn'"
            )
        elif start_method not in methods:
            raise ValueError(f"start_method must be one of {methods} or None, got {start_method!r}")
        _check_main_can_be_imported()
        self.start_method = start_method
        self._context = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            _check_sys_path_for_forkserver()
            _preload_in_forkserver(self._context)
        self._cond = threading.Condition(threading.RLock())  # _release nests in _checkout
        self._idle: list[_Worker] = []
        self._live = 0  # processes started and not discarded
        # Slots waiting for a process, first come first served: a process
        # checked in goes to the oldest waiter (None: it may start a new one).
        self._waiters: deque[object] = deque()
        self._handed: dict[object, _Worker | None] = {}
        self._closed = False
        self.crashes = 0  # processes that died under a chunk and were replaced
        self._spilling = True  # workers record outcomes as they finish (see worker_main)
        _backends.add(self)

    def warm(self) -> None:
        """Start every process now, instead of on demand, and wait until each is ready."""
        workers = [self._checkout() for _ in range(self.processes)]
        for worker in workers:  # an empty chunk: its answer says the process is up
            worker.sent += 1
            worker.send(worker.sent, [])
        for worker in workers:
            if worker.read() is not None:
                self._checkin(worker)
            else:
                self._discard(worker)  # it died starting: the next checkout starts another

    @property
    def _contended(self) -> bool:
        """Slots are waiting for a process."""
        return bool(self._waiters)

    def _checkout(self, calls: Sequence[Call] = ()) -> _Worker:
        """An idle process, or a new one (``calls``: the chunk it will run first)."""
        with self._cond:
            if self._closed:
                raise Cancelled("the process backend is closed")
            if not self._waiters and self._idle:
                return self._idle.pop()
            if not self._waiters and self._live < self.processes:
                self._live += 1
                worker = None
            else:
                ticket = object()
                self._waiters.append(ticket)
                try:
                    while ticket not in self._handed:
                        if self._closed:
                            raise Cancelled("the process backend is closed")
                        self._cond.wait()
                except BaseException:  # closed, or interrupted while waiting
                    if ticket in self._handed:
                        self._release(self._handed.pop(ticket))  # to the next waiter
                    else:
                        self._waiters.remove(ticket)
                    raise
                worker = self._handed.pop(ticket)
                if worker is not None:
                    return worker
        try:
            return _Worker(self._context, calls, self._spilling)
        except BaseException:
            self._release(None)
            raise

    def _release(self, worker: _Worker | None) -> None:
        """Give a process (or, None, the right to start one) to the oldest waiter."""
        with self._cond:
            if self._waiters and not self._closed:
                self._handed[self._waiters.popleft()] = worker
                self._cond.notify_all()
                return
            if worker is None:
                self._live -= 1
                return
            if not self._closed:
                self._idle.append(worker)
                return
            self._live -= 1
        worker.stop(1.0)

    def _checkin(self, worker: _Worker) -> None:
        self._release(worker)

    def _discard(self, worker: _Worker) -> None:
        worker.kill()
        worker.process.join(1.0)
        worker.release()
        self._release(None)

    def open_lane(self, token: CancelToken) -> Lane:
        """A `Lane` for one slot; ``token`` cancels every chunk sent on it."""
        return _ProcessLane(self, token)

    def run_chunk(self, calls: Sequence[Call], token: CancelToken) -> list[Outcome]:
        return _run_alone(_ProcessLane(self, token), calls)

    def close(self) -> None:
        """Stop the idle processes now, busy ones when their chunk returns. Safe twice."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._live -= len(idle)
            self._cond.notify_all()
        for worker in idle:
            worker.ask_to_stop()  # all first: they exit together
        for worker in idle:
            worker.join_or_kill(2.0)

    def __repr__(self) -> str:
        return (
            f"ProcessBackend(processes={self.processes}, chunk_size={self.chunk_size},"
            f" hard_cancel={self.hard_cancel}, start_method={self.start_method!r})"
        )


def _run_alone(lane: Lane, calls: Sequence[Call]) -> list[Outcome]:
    """``run_chunk`` on a backend with lanes: the chunk on a lane of its own."""
    try:
        lane.send(calls)
        return lane.receive()
    finally:
        lane.close()


_WORKER_MODULE: Final = "rxpool._remote"
# On the forkserver's preload list after the worker module: it runs the main
# module in the server and imports the first jobs' modules (see
# rxpool._forkserver), told what by the parent through this environment
# variable: these keys of `multiprocessing.spawn.get_preparation_data`, the
# modules, and the parent's pid.
_PRELOADER: Final = "rxpool._forkserver"
_PRELOAD_ENVIRONMENT_KEY: Final = "RXPOOL_FORKSERVER_PRELOAD"
_PRELOAD_PREPARATION_KEYS: Final = (
    "sys_path",
    "sys_argv",
    "init_main_from_path",
    "init_main_from_name",
)


def _check_main_can_be_imported() -> None:
    """Refuse a main module that new processes would fail to run again.

    ``spawn`` and ``forkserver`` processes run the main script again (as
    ``__mp_main__``) before their first job. A program read from standard
    input has ``__file__ == "<stdin>"``, a file that does not exist, so every
    worker would die at start and every job would come back `WorkerCrashed`.
    A ``python -c`` program or an interactive session has no ``__file__``,
    and ``python -m`` has a module spec: those are fine.
    """
    from multiprocessing import process

    main = sys.modules.get("__main__")
    if main is None or getattr(main, "__spec__", None) is not None:
        return
    if getattr(sys, "frozen", False):  # a frozen program's processes run it, not a file
        return
    path = getattr(main, "__file__", None)
    if not isinstance(path, str) or os.path.splitext(os.path.basename(path))[0] == "ipython":
        return  # multiprocessing does not run IPython's main again
    started_in = getattr(process, "ORIGINAL_DIR", None)  # where multiprocessing looks
    if not os.path.isabs(path) and started_in is not None:
        path = os.path.join(started_in, path)
    if not os.path.exists(path):
        raise RuntimeError(
            f"worker processes cannot start: each runs the main script again, and"
            f" {main.__file__!r} is not a file (a program read from standard input?);"
            " save the program to a file, or use backend='thread'"
        )


def _forkserver_to_start() -> Any:
    """multiprocessing's forkserver object when its server has not started, else None.

    None too for a multiprocessing whose forkserver this does not know.
    """
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    if server is None or getattr(server, "_forkserver_pid", 0) is not None:
        return None
    return server


def _check_sys_path_for_forkserver() -> None:
    """Refuse a ``sys.path`` entry that would kill a forkserver about to start.

    multiprocessing writes ``sys.path`` into the server's command line with
    ``repr()``: an entry whose repr is not a Python literal (a
    ``pathlib.Path``) makes the server die at start, and every process start
    then fails with ``EOFError: unexpected EOF``. The import system ignores
    entries that are not ``str``, so such an entry never did anything. A
    server already running is not affected.
    """
    if _forkserver_to_start() is None:
        return
    for index, entry in enumerate(list(sys.path)):
        try:
            ast.literal_eval(repr(entry))
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise ValueError(
                f"sys.path[{index}] is {entry!r}: worker processes cannot start with it"
                " (multiprocessing passes sys.path to the forkserver with repr(), which"
                " this entry does not survive); the import system ignores entries that are"
                " not str, so it does nothing there: put its str() there, or remove it"
            ) from None


def _preload_in_forkserver(context: Any) -> None:
    """Have the forkserver import rxpool's worker module once, before it forks workers.

    The preload list only counts before the server starts; the modules already
    on it (``["__main__"]`` unless the program set its own) are kept.
    """
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    preload = list(getattr(server, "_preload_modules", ["__main__"]))
    wanted = [name for name in (_WORKER_MODULE, _PRELOADER) if name not in preload]
    if wanted:
        context.set_forkserver_preload([*preload, *wanted])


_forkserver_lock = threading.Lock()


def _start_forkserver(calls: Sequence[Call] = ()) -> None:
    """Start the forkserver, if it is not running, with what its processes need loaded.

    The server is started with, in an environment variable removed again at
    once, the main module's location (when ``"__main__"`` is on the preload
    list: `rxpool._forkserver` runs it there, which Pythons before 3.13.8
    never do) and the modules of the functions in ``calls`` (the chunk the
    first process will run: `rxpool._forkserver` imports them), so that the
    processes forked from it need not run or import them again. A server
    already running is left as it is.
    """
    from multiprocessing import forkserver, spawn

    if getattr(multiprocessing.current_process(), "_inheriting", False):
        return  # the main module, run by a new process: Process.start says it cannot start one
    server = _forkserver_to_start()
    if server is None:
        return  # running, or a multiprocessing this does not know: it starts as usual
    _check_sys_path_for_forkserver()  # the entry may have come after the backend
    data = spawn.get_preparation_data("rxpool")
    keys: tuple[str, ...] = _PRELOAD_PREPARATION_KEYS
    if "__main__" not in getattr(server, "_preload_modules", ()):
        keys = tuple(key for key in keys if not key.startswith("init_main"))
    load: dict[str, Any] = {key: data[key] for key in keys if key in data}
    load["modules"] = _modules_of(calls)
    if not load["modules"] and not any(key.startswith("init_main") for key in load):
        return  # nothing to load: no main module (python -c, a session), no known jobs
    load["parent"] = os.getpid()
    with _forkserver_lock:
        os.environ[_PRELOAD_ENVIRONMENT_KEY] = json.dumps(load, default=str)  # bytes on sys.path
        try:
            forkserver.ensure_running()
        finally:
            os.environ.pop(_PRELOAD_ENVIRONMENT_KEY, None)


def _modules_of(calls: Sequence[Call]) -> list[str]:
    """The importable modules (not the main one) of the functions in ``calls``."""
    names: list[str] = []
    for fn, _, _ in calls:
        name = getattr(fn, "__module__", None)
        if not isinstance(name, str) or name in names or name in ("__main__", "builtins"):
            continue
        if getattr(sys.modules.get(name), "__spec__", None) is not None:  # imported by name
            names.append(name)
    return names


# A chunk is sent behind a running one only when it is this small, so sending
# never blocks on a full pipe (the process reads it only after it has sent the
# running chunk's outcomes, which the slot reads only after sending).
_QUEUE_BYTES: Final = 32 * 1024


def _merged(count: int, unsent: Mapping[int, Outcome], sent: Sequence[Outcome]) -> list[Outcome]:
    """All ``count`` calls' outcomes in order: ``unsent``'s by index, ``sent``'s for the rest."""
    if len(sent) != count - len(unsent):
        raise RuntimeError(f"{len(sent)} outcomes came back for {count - len(unsent)} calls sent")
    if not unsent:
        return list(sent)
    rest = iter(sent)
    return [unsent[index] if index in unsent else next(rest) for index in range(count)]


class _Chunk:
    __slots__ = ("blobs", "calls", "seq", "size", "unsent")

    def __init__(self, calls: Sequence[Call], blobs: list[bytes] | None = None) -> None:
        """``blobs``: the calls pickled already (then every call is sendable)."""
        self.calls = calls
        self.unsent: dict[int, Outcome] = {}  # by index: calls that could not be pickled
        if blobs is None:
            blobs = []
            for index, call in enumerate(calls):
                try:
                    blobs.append(pickle.dumps(call, protocol=pickle.HIGHEST_PROTOCOL))
                except Exception as error:
                    self.unsent[index] = (False, _not_sendable(call, error), 0.0)
        self.blobs = blobs
        self.size = sum(map(len, blobs))
        self.seq = 0  # its number on the process it was sent to; 0: not sent yet

    def after(self, sent: int) -> _Chunk:
        """The calls sent after the ``sent``-th call sent, as a chunk not sent yet."""
        calls = [call for index, call in enumerate(self.calls) if index not in self.unsent]
        return _Chunk(calls[sent + 1 :], self.blobs[sent + 1 :])


class _ProcessLane:
    """A `Lane` on a `ProcessBackend`: one process while chunks are in flight."""

    def __init__(self, backend: ProcessBackend, token: CancelToken) -> None:
        self._backend = backend
        self._token = token
        self._worker: _Worker | None = None
        # Held while the process leaves the lane and while a cancel acts on it,
        # so a cancel never kills or marks a process another lane has now.
        self._guard = threading.Lock()
        self._chunks: deque[_Chunk] = deque()  # sent and not received, oldest first
        self._last = 0  # the number of the last chunk this lane sent to its process
        self._link = token.on_cancel(self._cancelled)

    def send(self, calls: Sequence[Call]) -> None:
        self._chunks.append(_Chunk(calls))
        self._pump()

    def _pump(self) -> None:
        """Send the chunks not sent yet, in order, as far as the pipe allows.

        While other slots wait for a process, a chunk is not queued behind
        another, and the lane gives its process to the oldest waiter before
        sending the next chunk: processes go round chunk by chunk.
        """
        backend = self._backend
        ahead = False  # a chunk is in the pipe ahead of this one
        for chunk in self._chunks:
            if not chunk.blobs:
                continue  # nothing in it could be sent
            if not chunk.seq:
                if self._token.cancelled or (
                    ahead and (chunk.size > _QUEUE_BYTES or backend._contended)
                ):
                    return
                if not ahead and self._worker is not None and backend._contended:
                    backend._checkin(self._let_go())
                try:
                    self._transmit(chunk)
                except Cancelled:
                    return  # the backend is closed: receive() says so for each chunk not sent
            ahead = True

    def _transmit(self, chunk: _Chunk) -> None:
        worker = self._worker
        if worker is None:
            worker = self._backend._checkout(chunk.calls)
            with self._guard:
                self._worker = worker
        elif self._backend._closed:
            raise Cancelled("the process backend is closed")
        worker.sent += 1
        chunk.seq = self._last = worker.sent
        if self._token.cancelled:  # a cancel that came while the chunk was on its way
            worker.cancel_upto(chunk.seq)
        worker.send(chunk.seq, chunk.blobs)

    def _cancelled(self) -> None:
        with self._guard:
            worker = self._worker
            if worker is not None:
                worker.cancel_upto(self._last)
                if self._backend.hard_cancel:
                    worker.kill()

    def _let_go(self) -> _Worker:
        """Take the process out of the lane (it has one)."""
        with self._guard:
            worker, self._worker = self._worker, None
        assert worker is not None
        return worker

    def receive(self) -> list[Outcome]:
        chunk = self._chunks.popleft()
        if not chunk.blobs:  # nothing in it could be sent
            return _merged(len(chunk.calls), chunk.unsent, [])
        if not chunk.seq:  # held back, or its process died: nothing is ahead of it now
            if self._token.cancelled:
                raise self._token.new_error()  # it never starts
            self._transmit(chunk)
        assert self._worker is not None
        data = self._worker.read()  # None: the process died under the chunk
        if data is None:
            sent = self._crashed(chunk)
        else:
            sent = [o for calls, part in pickle.loads(data) for o in load_outcomes(part, calls)]
            self._pump()
        return _merged(len(chunk.calls), chunk.unsent, sent)

    def _crashed(self, chunk: _Chunk) -> list[Outcome]:
        """The outcomes of the calls sent in ``chunk``, whose process died under it.

        The call the process died under gets a `WorkerCrashed` (unless the
        spill file has its outcome: the process died after it). The calls
        before it ran: their outcomes come from the worker's spill file, and
        those it had not spilled yet get a `WorkerCrashed` (lost with the
        process). The calls after it never started: they run on a new
        process. If the process died before any call of the chunk started,
        which call killed it is unknown: each gets a `WorkerCrashed` (raised
        for the chunk).
        """
        worker = self._let_go()
        code = _exit_code(worker)
        under = worker.died_under(chunk.seq)
        saved = worker.saved(chunk.seq)
        self._backend._discard(worker)
        # The chunks queued behind never started: they go to a new process.
        for queued in self._chunks:
            queued.seq = 0
        if self._backend.hard_cancel and self._token.cancelled:
            raise self._token.new_error()
        self._backend.crashes += 1
        died = f"worker process {worker.process.pid} died (exit code {code})"
        if not worker.started():
            raise WorkerCrashed(
                f"{died} while starting, before its first job: its error went to standard"
                " error (a new process runs the program's main module again first: keep"
                " the program's work under `if __name__ == '__main__':`)"
            )
        if under is None:
            raise WorkerCrashed(f"{died} while running {len(chunk.blobs)} job(s)")
        outcomes = saved[: under + 1]
        if len(outcomes) <= under:  # the call it died under had not finished
            lost = WorkerCrashed(
                f"{died} while running a later job of the same chunk: this job had run,"
                " but its result was lost with the process"
            )
            outcomes += failed_outcomes(lost, under - len(outcomes))
            outcomes.append((False, WorkerCrashed(f"{died} while running this job"), 0.0))
        rest = chunk.after(under)
        if rest.blobs:
            self._chunks.appendleft(rest)
            try:
                outcomes += self.receive()
            except (Cancelled, WorkerCrashed) as error:
                outcomes += failed_outcomes(error.with_traceback(None), len(rest.blobs))
        return outcomes

    def close(self) -> None:
        self._link.dispose()
        if self._worker is None:
            return
        worker = self._let_go()
        if self._chunks:  # left with chunks in flight: nobody will read their outcomes
            self._backend._discard(worker)
        else:
            self._backend._checkin(worker)


def _exit_code(worker: _Worker) -> int | None:
    worker.process.join(1.0)
    code: int | None = worker.process.exitcode
    return code


def _not_sendable(call: Call, error: Exception, to: str = "a worker process") -> NotSendable:
    fn = call[0]
    name = getattr(fn, "__qualname__", repr(fn))
    return NotSendable(f"the job {name} cannot be pickled for {to}: {error!r}")


_default_lock = threading.Lock()
_default: ProcessBackend | None = None


def default_process_backend() -> ProcessBackend:
    """The process-wide backend that ``backend="process"`` means for operators."""
    global _default
    with _default_lock:
        if _default is None:
            _default = ProcessBackend()
            atexit.register(_default.close)
        return _default


class DaskBackend:
    """Jobs go to a Dask cluster through ``client.submit(..., pure=False)``.

    A slot submits a chunk as one task and waits for a done-callback; the
    run's bound keeps at most N tasks in flight on the cluster. A slot's next
    chunk waits in the client and the done-callback of the task before it
    submits it (see `Lane`), so the cluster does not wait for the slot thread. Dispose
    cancels the queued and pending futures. A worker lost under a task (Dask
    gives up on it with ``KilledWorker``) gives a `WorkerCrashed` result, or
    retries with a `Retry` policy; a chunk Dask gave up on runs again one
    call a task, so only a call that kills its worker fails. Functions are
    sent with cloudpickle, so lambdas work.

    Args:
        client: A ``distributed.Client`` (a ``LocalCluster``'s or a deployed one's).
        chunk_size: Calls per task; None sizes them from the last round trip.

    Raises:
        TypeError: ``client`` is not a ``distributed.Client``.
        ValueError: ``chunk_size`` < 1.
    """

    def __init__(self, client: Any, *, chunk_size: int | None = None) -> None:
        try:
            from distributed import Client
        except ImportError as error:  # pragma: no cover - the extra is missing
            raise ImportError("DaskBackend needs the dask extra: pip install rxpool[dask]") from (
                error
            )
        if not isinstance(client, Client):
            raise TypeError(f"client must be a distributed.Client, got {type(client).__name__}")
        self.client = client
        self.chunk_size = None if chunk_size is None else check_count("chunk_size", chunk_size)

    def open_lane(self, token: CancelToken) -> Lane:
        """A `Lane` for one slot; ``token`` cancels every chunk sent on it."""
        return _DaskLane(self.client, token)

    def run_chunk(self, calls: Sequence[Call], token: CancelToken) -> list[Outcome]:
        return _run_alone(_DaskLane(self.client, token), calls)

    def close(self) -> None:
        """Nothing to release: the client belongs to the caller."""

    def __repr__(self) -> str:
        return f"DaskBackend({self.client!r}, chunk_size={self.chunk_size})"


# How often a slot waiting for a Dask task looks at the client: a client that
# closed because it lost its scheduler leaves its futures pending for ever.
_CLIENT_CHECK_EVERY: Final = 0.5


class _DaskTask:
    """A chunk on a `_DaskLane`: its future once submitted, set ``done`` when it is over."""

    __slots__ = ("calls", "done", "error", "future", "single", "size", "unsent")

    def __init__(self, calls: Sequence[Call]) -> None:
        self.calls = list(calls)  # the calls to submit
        self.size = len(self.calls)
        # One plain call goes with its arguments (as a hand-written client.submit
        # sends it), run by `run_one`; a chunk goes as one task that runs its
        # calls (`run_calls_sent`). Either returns its outcomes pickled.
        self.single = self.size == 1 and not self.calls[0][2]
        self.unsent: dict[int, Outcome] = {}  # by index: calls that could not be pickled
        self.future: Any = None
        self.error: Exception | None = None  # the submit itself failed
        self.done = threading.Event()

    def drop_unsendable(self) -> bool:
        """After a failed submit: take out the calls that cannot be pickled; any?"""
        import cloudpickle

        kept: list[Call] = []
        for index, call in enumerate(self.calls):
            try:
                cloudpickle.dumps(call)
                kept.append(call)
            except Exception as error:
                self.unsent[index] = (False, _not_sendable(call, error, "a Dask worker"), 0.0)
        self.calls = kept
        self.single = False
        return bool(self.unsent)

    def outcomes(self, sent: list[Outcome]) -> list[Outcome]:
        """Every call's outcome, in order: ``sent`` for the calls submitted."""
        return _merged(self.size, self.unsent, sent)


def _task_key(calls: Sequence[Call]) -> str:
    """A new Dask key named as ``client.submit(fn, ..., pure=False)`` names it.

    So the dashboard groups a run's tasks by their job function (``double``),
    not by rxpool's wrapper; a chunk of several functions is ``rxpool-chunk``.
    """
    from dask.utils import funcname

    first = calls[0][0]
    name = "rxpool-chunk"
    if all(fn is first for fn, _, _ in calls):
        with contextlib.suppress(Exception):  # a callable object whose str() raises
            name = funcname(first)
    return f"{name}-{uuid.uuid4()}"


class _DaskLane:
    """A `Lane` on a `DaskBackend`: one task on the cluster, the next held here.

    The done-callback of the running task (on Dask's callback thread, not the
    client's event loop) submits the held one, as a hand-written pool with
    callbacks does, then wakes the slot. The lane never has two tasks on the
    cluster, so a run's N slots keep at most N tasks in flight.
    """

    def __init__(self, client: Any, token: CancelToken) -> None:
        self._client = client
        self._token = token
        self._lock = threading.Lock()
        self._tasks: deque[_DaskTask] = deque()  # sent and not received, oldest first
        self._held: deque[_DaskTask] = deque()  # waiting for the running task to end
        self._running: _DaskTask | None = None
        self._link = token.on_cancel(self._cancelled)

    def send(self, calls: Sequence[Call]) -> None:
        task = _DaskTask(calls)
        with self._lock:
            self._tasks.append(task)
            if self._running is not None:
                self._held.append(task)
                return
            self._running = task
        self._start(task)

    def _start(self, task: _DaskTask | None) -> None:
        """Submit ``task`` (the running one), or end it and go on to the next one held."""
        while task is not None:
            if not self._token.cancelled and task.calls:
                try:
                    key = _task_key(task.calls)
                    if task.single:
                        fn, args, _ = task.calls[0]
                        task.future = self._client.submit(run_one, fn, *args, key=key)
                    else:
                        task.future = self._client.submit(run_calls_sent, task.calls, key=key)
                    if self._token.cancelled:  # the cancel came while it was submitted
                        task.future.cancel()
                    task.future.add_done_callback(lambda _, task=task: self._ended(task))
                    return
                except Exception as error:  # a call cannot be pickled, or the client is closed
                    task.future = None
                    if not task.unsent and task.drop_unsendable():
                        continue  # the other calls go without them
                    task.error = error
            task = self._next(task)

    def _ended(self, task: _DaskTask) -> None:
        self._start(self._next(task))

    def _next(self, task: _DaskTask) -> _DaskTask | None:
        """``task`` is over: wake its receiver; the held task that runs next, if any."""
        with self._lock:
            following = self._held.popleft() if self._held else None
            self._running = following
        task.done.set()
        return following

    def _cancelled(self) -> None:
        with self._lock:
            held, self._held = self._held, deque()
            running = self._running
        for task in held:
            task.done.set()  # never submitted: receive() raises for it
        if running is not None and running.future is not None:
            running.future.cancel()

    def receive(self) -> list[Outcome]:
        from distributed import KilledWorker

        task = self._tasks.popleft()
        while not task.done.wait(_CLIENT_CHECK_EVERY):
            if self._client.status == "closed" or self._token.cancelled:
                break  # a client that lost its scheduler may never end the future
        future = task.future
        try:
            if self._token.cancelled:
                raise self._token.new_error()
            if not task.done.is_set():
                raise Cancelled(
                    "the Dask client closed before the task ended (did it lose its scheduler?)"
                )
            if task.error is not None:  # it could not be submitted
                return task.outcomes(failed_outcomes(task.error, len(task.calls)))
            if future is None:  # no call in it could be pickled
                return task.outcomes([])
            try:
                value = future.result()
            except KilledWorker as error:
                if len(task.calls) > 1:
                    return task.outcomes(self._one_by_one(task.calls))
                raise WorkerCrashed(f"the Dask worker running the job died: {error}") from None
            except Exception as error:  # the job raised, or could not be sent or run
                if future.cancelled():
                    if self._token.cancelled:
                        raise self._token.new_error() from None
                    raise Cancelled(
                        "the Dask task was cancelled outside the run (was its client closed?)"
                    ) from None
                # Its own time is not known.
                return task.outcomes(failed_outcomes(error, len(task.calls)))
            return task.outcomes(load_outcomes(value, len(task.calls)))
        finally:
            if future is not None and future.status != "finished":
                # Cancelled or failed: let the cluster forget it now. A finished
                # future is released when dropped, as a plain submit's is.
                future.release()

    def _one_by_one(self, calls: Sequence[Call]) -> list[Outcome]:
        """The outcomes of a chunk that killed its workers, its calls run again one a task.

        Dask ran the chunk again on other workers (``allowed-failures``), so its
        calls may have run more than once already; alone, only a call that
        kills its worker gets a `WorkerCrashed`, and a chunk too big for a
        worker's memory may fit call by call. One task at a time on this
        slot (the task held behind the chunk may be running too).
        """
        outcomes: list[Outcome] = []
        for index, call in enumerate(calls):
            if self._token.cancelled:
                outcomes += failed_outcomes(self._token.new_error(), len(calls) - index)
                break
            try:
                outcomes += _run_alone(_DaskLane(self._client, self._token), [call])
            except (Cancelled, WorkerCrashed) as error:
                outcomes += failed_outcomes(error.with_traceback(None), 1)
        return outcomes

    def close(self) -> None:
        """End the lane; chunks sent and not received (only after an error) are cancelled."""
        self._link.dispose()
        if self._tasks:
            with self._lock:
                self._held.clear()
            for task in self._tasks:
                if task.future is not None:
                    task.future.cancel()
            self._tasks.clear()
