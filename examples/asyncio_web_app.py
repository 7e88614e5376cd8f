"""A small aiohttp app that streams a pool run's results to the client as they arrive.

    python examples/asyncio_web_app.py           # start, stream once, hang up once, stop
    python examples/asyncio_web_app.py --serve   # serve on http://127.0.0.1:8080

``GET /squares?n=100`` runs ``n`` blocking jobs on a shared `WorkerPool` and
writes one JSON line per `Result` as soon as it is finished (``ordered=1``
for input order). The handler iterates with `rxpool.aiter`: results come to
the loop thread safely, a slow client slows the workers instead of growing a
buffer, and a client that hangs up cancels the handler's task (aiohttp's
``handler_cancellation``), which ends the ``async for`` and disposes the
run: jobs not started never start, and running ones see their token
cancelled. ``GET /stats`` tells how many jobs ran and were cancelled. Needs
``aiohttp`` (``pip install rxpool[examples]``).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

import rxpool
from rxpool import CancelToken, Job, WorkerPool


@dataclass
class Stats:
    """What the app's jobs did, for ``/stats`` and the tests."""

    started: int = 0
    finished: int = 0
    cancelled: int = 0
    last_cancel: float = 0.0  # time.monotonic() when a stream's run was last cancelled
    cancel_seen: asyncio.Event = field(default_factory=asyncio.Event)

    def run_cancelled(self) -> None:
        """A stream ended before its run did: the run was disposed just now."""
        self.last_cancel = time.monotonic()
        self.cancel_seen.set()


STATS = web.AppKey("stats", Stats)
POOL = web.AppKey("pool", WorkerPool)


def square(n: int, delay: float, stats: Stats, token: CancelToken) -> int:
    """A blocking job that does ``delay`` seconds of cooperative work."""
    stats.started += 1
    if token.wait(delay):  # the run was cancelled: stop early
        stats.cancelled += 1
        token.raise_if_cancelled()
    stats.finished += 1
    return n * n


async def squares(request: web.Request) -> web.StreamResponse:
    try:
        n = int(request.query.get("n", "100"))
        delay = float(request.query.get("delay", "0.01"))
        ordered = request.query.get("ordered", "0") == "1"
    except ValueError:
        raise web.HTTPBadRequest(text="n must be an int and delay a number") from None
    if not 0 <= n <= 100_000 or not 0 <= delay <= 10:
        raise web.HTTPBadRequest(text="n must be in 0..100000 and delay in 0..10")
    pool = request.app[POOL]
    stats = request.app[STATS]
    jobs = (Job(square, args=(i, delay, stats), id=i) for i in range(n))

    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    finished = False
    try:
        async with rxpool.aiter(pool.run(jobs, ordered=ordered), maxsize=64) as results:
            async for result in results:
                line = {"id": result.id, "attempt": result.attempt, "seconds": result.duration}
                if result.ok:
                    line["value"] = result.value
                else:
                    line["error"] = repr(result.error)
                try:
                    await response.write(json.dumps(line).encode() + b"\n")
                except ConnectionResetError:
                    return response  # the client hung up: leaving the loop cancels the run
        finished = True
    finally:
        if not finished:  # hung up (or the handler was cancelled): the run is disposed
            stats.run_cancelled()
    await response.write_eof()
    return response


async def stats_view(request: web.Request) -> web.Response:
    stats = request.app[STATS]
    return web.json_response(
        {"started": stats.started, "finished": stats.finished, "cancelled": stats.cancelled}
    )


def make_app(workers: int = 8) -> web.Application:
    app = web.Application()
    app[STATS] = Stats()

    async def pool_context(app: web.Application) -> AsyncIterator[None]:
        pool = WorkerPool(workers)
        app[POOL] = pool
        yield
        await asyncio.to_thread(pool.close, cancel_pending=True)

    app.cleanup_ctx.append(pool_context)
    app.router.add_get("/squares", squares)
    app.router.add_get("/stats", stats_view)
    return app


async def start(app: web.Application, port: int = 0) -> tuple[web.AppRunner, str]:
    """Serve ``app`` on 127.0.0.1 (a free port by default); returns the runner and base URL."""
    # handler_cancellation: a client that hangs up cancels its handler's task at
    # once, and with it the run its ``async for`` was reading.
    runner = web.AppRunner(app, shutdown_timeout=0.5, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def demo() -> None:
    app = make_app()
    runner, base = await start(app)
    stats = app[STATS]
    try:
        async with aiohttp.ClientSession() as client:
            async with client.get(f"{base}/squares", params={"n": "50", "ordered": "1"}) as r:
                lines = [json.loads(line) async for line in r.content]
            total = sum(line["value"] for line in lines)
            print(f"streamed {len(lines)} results in order, sum of squares {total}")

            async with client.get(f"{base}/squares", params={"n": "10000", "delay": "1"}) as r:
                await r.content.readline()  # the first result...
                hung_up = time.monotonic()
                r.close()  # ...then hang up mid-stream
            await asyncio.wait_for(stats.cancel_seen.wait(), 5)
            print(
                f"client hung up; the run was cancelled {1000 * (stats.last_cancel - hung_up):.1f}"
                f" ms later, after {stats.started - 50} of 10000 jobs had started"
            )
    finally:
        await runner.cleanup()


def main(argv: list[str]) -> None:
    if argv == ["--serve"]:
        web.run_app(make_app(), host="127.0.0.1", port=8080, handler_cancellation=True)
    else:
        asyncio.run(demo())


if __name__ == "__main__":
    main(sys.argv[1:])

# Expected output (times vary):
# streamed 50 results in order, sum of squares 40425
# client hung up; the run was cancelled 1.2 ms later, after 9 of 10000 jobs had started
