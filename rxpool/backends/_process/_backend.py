"""`ProcessBackend`: worker processes for CPU-bound jobs, and the operators' default one."""

from __future__ import annotations

import atexit
import multiprocessing
import os
import threading
from collections.abc import Sequence

from ..._checks import check_bool, check_count
from ..._remote import (
    Call,
    Outcome,
)
from ..._token import CancelToken
from .._protocol import Lane, run_alone
from ._lane import ProcessLane
from ._workers import Processes
from .forkserver import (
    check_main_can_be_imported,
    check_sys_path_for_forkserver,
    preload_in_forkserver,
)

__all__ = ["ProcessBackend", "default_process_backend"]


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
    (rxpool adds ``rxpool._remote`` and ``rxpool.backends._process.preload`` to the
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
        check_main_can_be_imported()
        self.start_method = start_method
        self._context = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            check_sys_path_for_forkserver()
            preload_in_forkserver(self._context)
        self._processes = Processes(self._context, self.processes)
        self.crashes = 0  # processes that died under a chunk and were replaced

    def warm(self) -> None:
        """Start every process now, instead of on demand, and wait until each is ready."""
        processes = self._processes
        workers = [processes.checkout() for _ in range(self.processes)]
        for worker in workers:  # an empty chunk: its answer says the process is up
            worker.sent += 1
            worker.send(worker.sent, [])
        for worker in workers:
            if worker.read() is not None:
                processes.checkin(worker)
            else:
                processes.discard(worker)  # it died starting: the next checkout starts another

    def open_lane(self, token: CancelToken) -> Lane:
        """A `Lane` for one slot; ``token`` cancels every chunk sent on it."""
        return ProcessLane(self, self._processes, token)

    def run_chunk(self, calls: Sequence[Call], token: CancelToken) -> list[Outcome]:
        return run_alone(ProcessLane(self, self._processes, token), calls)

    def close(self) -> None:
        """Stop the idle processes now, busy ones when their chunk returns. Safe twice."""
        self._processes.close()

    def __repr__(self) -> str:
        return (
            f"ProcessBackend(processes={self.processes}, chunk_size={self.chunk_size},"
            f" hard_cancel={self.hard_cancel}, start_method={self.start_method!r})"
        )


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
