"""`AsyncioBackend`: worker slots are tasks on an event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from .._remote import (
    Call,
    Outcome,
    run_calls,
)
from .._token import CancelToken

__all__ = ["AsyncioBackend"]


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
