"""The `Backend` and `Lane` protocols the engine calls, and what remote backends share."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final, Protocol, runtime_checkable

from .._exceptions import NotSendable
from .._remote import (
    Call,
    Outcome,
)
from .._token import CancelToken

__all__ = [
    "BACKEND_MEMBERS",
    "Backend",
    "Lane",
    "LaneBackend",
    "merged",
    "not_sendable",
    "run_alone",
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
BACKEND_MEMBERS: Final = ("run_chunk", "close", "chunk_size")


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


@runtime_checkable
class LaneBackend(Backend, Protocol):
    """A `Backend` with lanes: ``open_lane(token)`` gives one slot its own `Lane`."""

    def open_lane(self, token: CancelToken) -> Lane: ...


def run_alone(lane: Lane, calls: Sequence[Call]) -> list[Outcome]:
    """``run_chunk`` on a backend with lanes: the chunk on a lane of its own."""
    try:
        lane.send(calls)
        return lane.receive()
    finally:
        lane.close()


def merged(count: int, unsent: Mapping[int, Outcome], sent: Sequence[Outcome]) -> list[Outcome]:
    """All ``count`` calls' outcomes in order: ``unsent``'s by index, ``sent``'s for the rest."""
    if len(sent) != count - len(unsent):
        raise RuntimeError(f"{len(sent)} outcomes came back for {count - len(unsent)} calls sent")
    if not unsent:
        return list(sent)
    rest = iter(sent)
    return [unsent[index] if index in unsent else next(rest) for index in range(count)]


def not_sendable(call: Call, error: Exception, to: str = "a worker process") -> NotSendable:
    fn = call[0]
    name = getattr(fn, "__qualname__", repr(fn))
    return NotSendable(f"the job {name} cannot be pickled for {to}: {error!r}")
