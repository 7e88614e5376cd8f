"""Worker processes: one `Worker` (a process, its pipe, its spill file), and `Processes`.

Every process this module starts is ended at the program's exit (see
``_end_processes``), also the busy ones.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import tempfile
import threading
import weakref
from collections import deque
from collections.abc import Sequence
from multiprocessing import util as multiprocessing_util
from multiprocessing.connection import wait
from typing import Any

from ..._exceptions import Cancelled
from ..._remote import (
    SPILL_MAX,
    Call,
    Outcome,
    read_spill,
    worker_main,
)
from .forkserver import start_forkserver

__all__ = ["Processes", "Worker", "exit_code"]


class Worker:
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
            start_forkserver(calls)
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


# This process's sets of worker processes, and the processes, for _end_processes.
_pools: weakref.WeakSet[Processes] = weakref.WeakSet()
_workers: weakref.WeakSet[Worker] = weakref.WeakSet()
_ending_in = 0  # the process whose multiprocessing shutdown runs _end_processes


def _forget_after_fork() -> None:
    global _ending_in
    _pools.clear()
    _workers.clear()
    _ending_in = 0


os.register_at_fork(after_in_child=_forget_after_fork)


def _track(worker: Worker) -> None:
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
    for processes in list(_pools):
        processes.close()
    alive = [worker for worker in list(_workers) if worker.process.is_alive()]
    for worker in alive:
        worker.process.terminate()
    for worker in alive:
        worker.process.join(1.0)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join(1.0)
        worker.release()  # a spill file it had no time to unlink goes too


class Processes:
    """A `ProcessBackend`'s worker processes: the idle ones, and slots waiting for one.

    A slot checks a process out (an idle one, or the right to start one, up
    to ``limit``) and back in; slots waiting are served first come, first
    served. Threading: every method may be called from any slot thread.
    """

    def __init__(self, context: Any, limit: int) -> None:
        self._context = context
        self.limit = limit
        self._cond = threading.Condition(threading.RLock())  # release nests in checkout
        self._idle: list[Worker] = []
        self._live = 0  # processes started and not discarded
        # Slots waiting for a process, first come first served: a process
        # checked in goes to the oldest waiter (None: it may start a new one).
        self._waiters: deque[object] = deque()
        self._handed: dict[object, Worker | None] = {}
        self.closed = False
        self.spilling = True  # workers record outcomes as they finish (see worker_main)
        _pools.add(self)

    @property
    def contended(self) -> bool:
        """Slots are waiting for a process."""
        return bool(self._waiters)

    def checkout(self, calls: Sequence[Call] = ()) -> Worker:
        """An idle process, or a new one (``calls``: the chunk it will run first)."""
        with self._cond:
            if self.closed:
                raise Cancelled("the process backend is closed")
            if not self._waiters and self._idle:
                return self._idle.pop()
            if not self._waiters and self._live < self.limit:
                self._live += 1
                worker = None
            else:
                ticket = object()
                self._waiters.append(ticket)
                try:
                    while ticket not in self._handed:
                        if self.closed:
                            raise Cancelled("the process backend is closed")
                        self._cond.wait()
                except BaseException:  # closed, or interrupted while waiting
                    if ticket in self._handed:
                        self.release(self._handed.pop(ticket))  # to the next waiter
                    else:
                        self._waiters.remove(ticket)
                    raise
                worker = self._handed.pop(ticket)
                if worker is not None:
                    return worker
        try:
            return Worker(self._context, calls, self.spilling)
        except BaseException:
            self.release(None)
            raise

    def release(self, worker: Worker | None) -> None:
        """Give a process (or, None, the right to start one) to the oldest waiter."""
        with self._cond:
            if self._waiters and not self.closed:
                self._handed[self._waiters.popleft()] = worker
                self._cond.notify_all()
                return
            if worker is None:
                self._live -= 1
                return
            if not self.closed:
                self._idle.append(worker)
                return
            self._live -= 1
        worker.stop(1.0)

    def checkin(self, worker: Worker) -> None:
        self.release(worker)

    def discard(self, worker: Worker) -> None:
        worker.kill()
        worker.process.join(1.0)
        worker.release()
        self.release(None)

    def close(self) -> None:
        """Stop the idle processes now, busy ones when they are checked in. Safe twice."""
        with self._cond:
            self.closed = True
            idle, self._idle = self._idle, []
            self._live -= len(idle)
            self._cond.notify_all()
        for worker in idle:
            worker.ask_to_stop()  # all first: they exit together
        for worker in idle:
            worker.join_or_kill(2.0)


def exit_code(worker: Worker) -> int | None:
    worker.process.join(1.0)
    code: int | None = worker.process.exitcode
    return code
