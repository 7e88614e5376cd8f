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

from .._remote import Call, Outcome
from ._asyncio import AsyncioBackend
from ._dask import DaskBackend  # distributed itself is imported by DaskBackend()
from ._process import ProcessBackend
from ._protocol import Backend, Lane
from ._thread import ThreadBackend

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
