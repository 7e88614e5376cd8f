"""`ThreadBackend`: worker slots are threads."""

from __future__ import annotations

from collections.abc import Sequence

from .._remote import (
    Call,
    Outcome,
    run_calls,
)
from .._token import CancelToken

__all__ = ["ThreadBackend"]


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
