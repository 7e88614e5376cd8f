"""`ProcessLane`: one slot's chunks on one worker process, the next sent behind the running one."""

from __future__ import annotations

import pickle
import threading
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from ..._exceptions import Cancelled, WorkerCrashed
from ..._remote import (
    Call,
    Outcome,
    failed_outcomes,
    load_outcomes,
)
from ..._token import CancelToken
from .._protocol import merged, not_sendable
from ._workers import Processes, Worker, exit_code

if TYPE_CHECKING:
    from ._backend import ProcessBackend

__all__ = ["ProcessLane"]


# A chunk is sent behind a running one only when it is this small, so sending
# never blocks on a full pipe (the process reads it only after it has sent the
# running chunk's outcomes, which the slot reads only after sending).
_QUEUE_BYTES: Final = 32 * 1024


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
                    self.unsent[index] = (False, not_sendable(call, error), 0.0)
        self.blobs = blobs
        self.size = sum(map(len, blobs))
        self.seq = 0  # its number on the process it was sent to; 0: not sent yet

    def after(self, sent: int) -> _Chunk:
        """The calls sent after the ``sent``-th call sent, as a chunk not sent yet."""
        calls = [call for index, call in enumerate(self.calls) if index not in self.unsent]
        return _Chunk(calls[sent + 1 :], self.blobs[sent + 1 :])


class ProcessLane:
    """A `Lane` on a `ProcessBackend`: one process while chunks are in flight."""

    def __init__(self, backend: ProcessBackend, processes: Processes, token: CancelToken) -> None:
        self._backend = backend  # its hard_cancel, and its count of crashes
        self._processes = processes
        self._token = token
        self._worker: Worker | None = None
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
        processes = self._processes
        ahead = False  # a chunk is in the pipe ahead of this one
        for chunk in self._chunks:
            if not chunk.blobs:
                continue  # nothing in it could be sent
            if not chunk.seq:
                if self._token.cancelled or (
                    ahead and (chunk.size > _QUEUE_BYTES or processes.contended)
                ):
                    return
                if not ahead and self._worker is not None and processes.contended:
                    processes.checkin(self._let_go())
                try:
                    self._transmit(chunk)
                except Cancelled:
                    return  # the backend is closed: receive() says so for each chunk not sent
            ahead = True

    def _transmit(self, chunk: _Chunk) -> None:
        worker = self._worker
        if worker is None:
            worker = self._processes.checkout(chunk.calls)
            with self._guard:
                self._worker = worker
        elif self._processes.closed:
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

    def _let_go(self) -> Worker:
        """Take the process out of the lane (it has one)."""
        with self._guard:
            worker, self._worker = self._worker, None
        assert worker is not None
        return worker

    def receive(self) -> list[Outcome]:
        chunk = self._chunks.popleft()
        if not chunk.blobs:  # nothing in it could be sent
            return merged(len(chunk.calls), chunk.unsent, [])
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
        return merged(len(chunk.calls), chunk.unsent, sent)

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
        code = exit_code(worker)
        under = worker.died_under(chunk.seq)
        saved = worker.saved(chunk.seq)
        self._processes.discard(worker)
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
            self._processes.discard(worker)
        else:
            self._processes.checkin(worker)
