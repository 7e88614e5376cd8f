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

import asyncio
import atexit
import multiprocessing
import os
import pickle
import threading
from collections.abc import Sequence
from multiprocessing.connection import wait
from typing import Any, Protocol, runtime_checkable

from ._checks import check_bool, check_count
from ._exceptions import Cancelled, NotSendable, WorkerCrashed
from ._remote import Call, Outcome, run_calls, worker_main
from ._token import CancelToken

__all__ = [
    "AsyncioBackend",
    "Backend",
    "Call",
    "DaskBackend",
    "Outcome",
    "ProcessBackend",
    "ThreadBackend",
]


@runtime_checkable
class Backend(Protocol):
    """Runs chunks of calls somewhere else while a worker slot (a thread) waits.

    ``run_chunk(calls, token)`` runs each ``(fn, args, kwargs)`` and returns
    one ``(ok, value_or_error, seconds)`` per call, in order; a call's
    exception is its outcome. It raises `WorkerCrashed` when the worker
    running the chunk died (every call in it is then reported crashed), and
    `Cancelled` (``token.new_error()``) when it gave the chunk up because
    ``token`` was cancelled. ``chunk_size``: calls per chunk, or None to let
    rxpool size chunks (four times the round trip's overhead in work, at most
    50 ms of work). Calls with a timeout or a retry policy always go alone.
    """

    chunk_size: int | None

    def run_chunk(self, calls: Sequence[Call], token: CancelToken) -> list[Outcome]: ...

    def close(self) -> None: ...


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


class _Worker:
    __slots__ = ("conn", "process")

    def __init__(self, context: Any) -> None:
        self.conn, child = context.Pipe()
        self.process = context.Process(
            target=worker_main, args=(child,), name="rxpool-process", daemon=True
        )
        self.process.start()
        child.close()

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()

    def stop(self, timeout: float) -> None:
        self.conn.close()  # the worker's recv ends with EOFError: it exits
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout)


class ProcessBackend:
    """Worker processes for CPU-bound pure-Python jobs.

    Each chunk goes to one idle process (started on demand, up to
    ``processes``) and the slot waits for its outcomes. A job or a result
    that cannot be pickled gets a `NotSendable` result at once. A process that
    dies under a chunk (``os._exit``, a segfault, the OOM killer) turns the
    chunk's jobs into `WorkerCrashed` results and is replaced; with a retry
    policy they are retried. Functions must be importable by the worker
    processes (module-level, not lambdas), as with `ProcessPoolExecutor`.

    **Cancellation**: queued jobs never start; a running chunk's results are
    dropped and its process is free again when it returns. With
    ``hard_cancel=True`` a cancelled or timed-out job's process is killed at
    once and replaced instead: the slot is free immediately, at the cost of
    a new process (about 50 ms with ``spawn``) and of anything else that
    process held.

    Args:
        processes: Worker processes at most (default: the CPU count).
        chunk_size: Calls per chunk; None sizes them from the last round trip.
        hard_cancel: Kill the process of a cancelled or timed-out job.
        start_method: ``"spawn"`` (default), ``"forkserver"`` or ``"fork"``.

    Raises:
        TypeError / ValueError: an argument has the wrong type or value.
    """

    def __init__(
        self,
        processes: int | None = None,
        *,
        chunk_size: int | None = None,
        hard_cancel: bool = False,
        start_method: str = "spawn",
    ) -> None:
        self.processes = check_count("processes", processes or os.cpu_count() or 1)
        self.chunk_size = None if chunk_size is None else check_count("chunk_size", chunk_size)
        check_bool("hard_cancel", hard_cancel)
        self.hard_cancel = hard_cancel
        if start_method not in multiprocessing.get_all_start_methods():
            raise ValueError(
                f"start_method must be one of {multiprocessing.get_all_start_methods()},"
                f" got {start_method!r}"
            )
        self._context = multiprocessing.get_context(start_method)
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []
        self._live = 0
        self._closed = False
        self.crashes = 0  # processes that died under a chunk and were replaced

    def warm(self) -> None:
        """Start every process now, instead of on demand."""
        workers = [self._checkout() for _ in range(self.processes)]
        for worker in workers:
            self._checkin(worker)

    def _checkout(self) -> _Worker:
        with self._cond:
            while True:
                if self._closed:
                    raise Cancelled("the process backend is closed")
                if self._idle:
                    return self._idle.pop()
                if self._live < self.processes:
                    self._live += 1
                    break
                self._cond.wait()
        try:
            return _Worker(self._context)
        except BaseException:
            with self._cond:
                self._live -= 1
                self._cond.notify()
            raise

    def _checkin(self, worker: _Worker) -> None:
        with self._cond:
            if not self._closed:
                self._idle.append(worker)
                self._cond.notify()
                return
        worker.stop(1.0)

    def _discard(self, worker: _Worker) -> None:
        worker.kill()
        worker.process.join(1.0)
        worker.conn.close()
        with self._cond:
            self._live -= 1
            self._cond.notify()

    def run_chunk(self, calls: Sequence[Call], token: CancelToken) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(calls)
        blobs: list[bytes] = []
        sent: list[int] = []
        for index, call in enumerate(calls):
            try:
                blobs.append(pickle.dumps(call, protocol=pickle.HIGHEST_PROTOCOL))
                sent.append(index)
            except Exception as error:
                outcomes[index] = (False, _not_sendable(call, error), 0.0)
        if blobs:
            for index, outcome in zip(sent, self._round_trip(blobs, token), strict=True):
                outcomes[index] = outcome
        return outcomes  # type: ignore[return-value]

    def _round_trip(self, blobs: list[bytes], token: CancelToken) -> list[Outcome]:
        worker = self._checkout()
        link = token.on_cancel(worker.kill) if self.hard_cancel else None
        try:
            try:
                worker.conn.send_bytes(pickle.dumps(blobs, protocol=pickle.HIGHEST_PROTOCOL))
                ready = wait([worker.conn, worker.process.sentinel])
                data = worker.conn.recv_bytes() if worker.conn in ready else None
            except (EOFError, OSError):
                data = None
            if data is None:  # the process died under the chunk
                code = _exit_code(worker)
                self._discard(worker)
                if self.hard_cancel and token.cancelled:
                    raise token.new_error()
                self.crashes += 1
                raise WorkerCrashed(
                    f"worker process {worker.process.pid} died (exit code {code})"
                    f" while running {len(blobs)} job(s)"
                )
        finally:
            if link is not None:
                link.dispose()
        outcomes: list[Outcome] = pickle.loads(data)
        self._checkin(worker)
        return outcomes

    def close(self) -> None:
        """Stop the idle processes now, busy ones when their chunk returns. Safe twice."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._live -= len(idle)
            self._cond.notify_all()
        for worker in idle:
            worker.stop(2.0)

    def __repr__(self) -> str:
        return (
            f"ProcessBackend(processes={self.processes}, chunk_size={self.chunk_size},"
            f" hard_cancel={self.hard_cancel})"
        )


def _exit_code(worker: _Worker) -> int | None:
    worker.process.join(1.0)
    code: int | None = worker.process.exitcode
    return code


def _not_sendable(call: Call, error: Exception) -> NotSendable:
    fn = call[0]
    name = getattr(fn, "__qualname__", repr(fn))
    return NotSendable(f"the job {name} cannot be pickled for a worker process: {error!r}")


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
    run's bound keeps at most N tasks in flight on the cluster. Dispose
    cancels the queued and pending futures. A worker lost under a task (Dask
    gives up on it with ``KilledWorker``) gives `WorkerCrashed` results, or
    retries with a `Retry` policy. Functions are sent with cloudpickle, so
    lambdas work.

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

    def run_chunk(self, calls: Sequence[Call], token: CancelToken) -> list[Outcome]:
        from distributed import KilledWorker

        if token.cancelled:
            raise token.new_error()
        done = threading.Event()
        # One plain call goes as itself (as a hand-written client.submit would);
        # a chunk goes as one task that runs its calls and returns their outcomes.
        single = len(calls) == 1 and not calls[0][2]
        if single:
            fn, args, _ = calls[0]
            future: Any = self.client.submit(fn, *args, pure=False)
        else:
            future = self.client.submit(run_calls, list(calls), pure=False)
        future.add_done_callback(lambda _: done.set())
        link = token.on_cancel(future.cancel)
        try:
            done.wait()
            if token.cancelled:
                raise token.new_error()
            try:
                value = future.result()
            except KilledWorker as error:
                raise WorkerCrashed(f"the Dask worker running the job died: {error}") from None
            except Exception as error:  # the job raised, or could not be sent or run
                if future.cancelled():
                    raise token.new_error() from None
                if single:
                    return [(False, error, 0.0)]  # its own time is not known here
                return [(False, error, 0.0)] * len(calls)
            if single:
                return [(True, value, 0.0)]
            outcomes: list[Outcome] = value
            return outcomes
        finally:
            link.dispose()
            if future.status != "finished":
                # Cancelled or failed: let the cluster forget it now. A finished
                # future is released when dropped, as a plain submit's is.
                future.release()

    def close(self) -> None:
        """Nothing to release: the client belongs to the caller."""

    def __repr__(self) -> str:
        return f"DaskBackend({self.client!r}, chunk_size={self.chunk_size})"
