"""The asyncio examples against real servers on loopback, with a real HTTP client."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp

from rxpool import JobTimeout

from ._helpers import wait_until

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


crawler = load("asyncio_crawler")
web_app = load("asyncio_web_app")


def run(coro: Any, timeout: float = 30.0) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def test_crawler_fetches_200_pages_20_in_flight_with_timeouts() -> None:
    async def main() -> tuple[Any, Any]:
        site = crawler.Site(pages=200, slow=frozenset({13, 77, 150}))
        runner, start = await site.serve()
        try:
            report = await crawler.crawl(start, in_flight=20, timeout=0.3)
        finally:
            await runner.cleanup()
        return report, site

    report, site = run(main())
    assert len(report.results) == 200
    assert sorted(r.id.rsplit("/", 1)[1] for r in report.results) == sorted(
        str(i) for i in range(200)
    )
    timed_out = {r.id.rsplit("/", 1)[1] for r in report.results if r.error is not None}
    assert timed_out == {"13", "77", "150"}
    assert all(isinstance(r.error, JobTimeout) for r in report.results if not r.ok)
    assert site.most_in_flight <= 20
    assert site.most_in_flight >= 10  # the bound is used, not just respected
    assert site.in_flight == 0  # timed-out requests were cancelled, not left hanging


async def _serve() -> tuple[Any, str, Any]:
    app = web_app.make_app(workers=8)
    runner, base = await web_app.start(app)
    return runner, base, app[web_app.STATS]


def test_web_app_streams_every_result_as_json_lines() -> None:
    async def main() -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
        runner, base, _ = await _serve()
        try:
            async with aiohttp.ClientSession() as client:
                params = {"n": "100", "ordered": "1", "delay": "0.001"}
                async with client.get(f"{base}/squares", params=params) as r:
                    assert r.headers["Content-Type"] == "application/x-ndjson"
                    ordered = [json.loads(line) async for line in r.content]
                params = {"n": "100", "delay": "0"}
                async with client.get(f"{base}/squares", params=params) as r:
                    unordered = [json.loads(line) async for line in r.content]
                async with client.get(f"{base}/squares", params={"n": "lots"}) as r:
                    bad = r.status
        finally:
            await runner.cleanup()
        return ordered, unordered, bad

    ordered, unordered, bad = run(main())
    assert [line["id"] for line in ordered] == list(range(100))
    assert [line["value"] for line in ordered] == [i * i for i in range(100)]
    assert sorted(line["value"] for line in unordered) == [i * i for i in range(100)]
    assert bad == 400


def test_client_disconnect_mid_stream_cancels_the_run() -> None:
    async def main() -> tuple[float, Any]:
        runner, base, stats = await _serve()
        try:
            async with aiohttp.ClientSession() as client:
                params = {"n": "10000", "delay": "0.5"}
                async with client.get(f"{base}/squares", params=params) as r:
                    first = json.loads(await r.content.readline())
                    assert first["value"] == first["id"] ** 2
                    hung_up = time.monotonic()
                    r.close()
            await asyncio.wait_for(stats.cancel_seen.wait(), 5)
            latency = stats.last_cancel - hung_up
            # Every job that started ends (finished or cancelled): none is left running.
            await asyncio.to_thread(
                wait_until, lambda: stats.finished + stats.cancelled == stats.started
            )
        finally:
            await runner.cleanup()
        return latency, stats

    latency, stats = run(main())
    assert latency < 0.25  # the run was disposed well before its jobs' 0.5 s of work ends
    assert stats.started <= 3 * 8  # nothing was started after the hang-up
