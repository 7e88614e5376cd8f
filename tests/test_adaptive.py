"""Adaptive concurrency: a limit that finds a simulated service's capacity by itself.

The service (`rxpool.testing.SimulatedService`) is real code on real threads:
it serves 8 calls of 10 ms at once, and past 8 in flight each call takes
proportionally longer (or, in the second shape, a call past 12 in flight is
refused).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import reactivex as rx
from hypothesis import given
from hypothesis import strategies as st

import rxpool
from rxpool import Adaptive, Executor, Job, JobTimeout, WorkerPool
from rxpool import operators as rops
from rxpool.testing import SimulatedService

pytestmark = pytest.mark.timeout(120)

BASE = 0.010
CAPACITY = 8


def make_service(refuse_above: int | None = None) -> SimulatedService:
    return SimulatedService(CAPACITY, BASE, refuse_above=refuse_above)


def run(
    pool: WorkerPool, service: SimulatedService, n: int
) -> tuple[float, list[rxpool.Result[Any]]]:
    started = time.perf_counter()
    results = list(rxpool.iterate(pool.run(Job(service.call, args=(i,), id=i) for i in range(n))))
    return time.perf_counter() - started, results


def test_adaptive_keeps_latency_near_the_base_at_most_of_the_capacity() -> None:
    service = make_service()
    n = 1500
    with WorkerPool(Adaptive(min=1, max=64)) as pool:
        seconds, results = run(pool, service, n)
        limit = pool.statistics().limit
    assert len(results) == n and all(r.ok for r in results)
    mean = service.mean_latency()
    assert mean <= 2 * BASE, f"mean latency {mean * 1000:.1f} ms"
    capacity = CAPACITY / BASE  # 800 calls a second
    assert n / seconds >= 0.7 * capacity, f"{n / seconds:.0f} calls/s"
    assert limit is not None and CAPACITY <= limit <= 2 * CAPACITY


def test_a_fixed_limit_of_64_queues_inside_the_service() -> None:
    """The contrast: 64 at once makes every call 8 times slower."""
    service = make_service()
    with WorkerPool(64) as pool:
        _, results = run(pool, service, 640)
    assert all(r.ok for r in results)
    assert service.mean_latency() > 4 * BASE
    assert pool.statistics().limit == 64


def test_adaptive_backs_off_a_service_that_refuses() -> None:
    service = make_service(refuse_above=12)
    n = 1500
    limit = Adaptive(min=1, max=64, backoff_on=(ConnectionRefusedError,))
    with WorkerPool(limit) as pool:
        seconds, results = run(pool, service, n)
    assert len(results) == n
    refused = sum(isinstance(r.error, ConnectionRefusedError) for r in results)
    assert refused == service.refused
    assert refused <= 0.03 * n, f"{refused} of {n} refused"
    assert (n - refused) / seconds >= 0.6 * CAPACITY / BASE

    fixed = make_service(refuse_above=12)
    with WorkerPool(64) as pool:
        _, results = run(pool, fixed, 640)
    assert sum(not r.ok for r in results) > 0.5 * 640  # most are refused


def test_adaptive_on_asyncio_jobs() -> None:
    service = make_service()

    async def main() -> float:
        async with WorkerPool(Adaptive(max=64), backend="asyncio") as pool:
            jobs = (Job(service.acall, args=(i,), id=i) for i in range(1000))
            results = [r async for r in rxpool.aiter(pool.run(jobs))]
        assert len(results) == 1000 and all(r.ok for r in results)
        return service.mean_latency()

    assert asyncio.run(main()) <= 2 * BASE


def test_map_concurrent_run_jobs_and_executor_take_an_adaptive_limit() -> None:
    service = make_service()
    limit = Adaptive(max=32)
    values = rx.from_iterable(range(200)).pipe(rops.map_concurrent(service.call, limit)).run()
    assert values is not None and service.peak <= 32
    results = (
        rx.from_iterable([Job(service.call, args=(i,)) for i in range(200)])
        .pipe(rops.run_jobs(limit), rx.operators.to_list())
        .run()
    )
    assert len(results) == 200
    with Executor(max_workers=Adaptive(max=16)) as executor:
        assert list(executor.map(service.call, range(100))) == list(range(100))
        assert executor.statistics().limit is not None
    assert service.peak <= 32


def test_the_limit_never_leaves_its_bounds_and_slots_follow_it() -> None:
    service = make_service()
    limit = Adaptive(min=2, max=5, initial=3)
    with WorkerPool(limit) as pool:
        _, results = run(pool, service, 300)
    assert all(r.ok for r in results)
    assert service.peak <= 5
    assert 2 <= limit.limit <= 5


def test_timeouts_cut_the_limit() -> None:
    limit = Adaptive(min=1, max=64, initial=40)
    for _ in range(5):
        limit.report(0.01, JobTimeout("slow"))
    assert limit.limit < 40  # cut once per limit's worth of reports in flight
    aimd = Adaptive(max=10, algorithm="aimd", backoff_on=(ConnectionError,))
    for _ in range(200):
        aimd.report(0.5, None)  # latency does not matter to AIMD
    assert aimd.limit == 10
    aimd.report(0.01, ValueError("not an overload"))
    assert aimd.limit == 10
    aimd.report(0.01, ConnectionResetError("overloaded"))
    assert aimd.limit == 9


@given(
    reports=st.lists(
        st.tuples(st.floats(1e-4, 1.0), st.booleans()),
        max_size=300,
    ),
    bounds=st.tuples(st.integers(1, 10), st.integers(0, 50)),
    algorithm=st.sampled_from(["gradient", "aimd"]),
)
def test_property_the_limit_stays_within_min_and_max(
    reports: list[tuple[float, bool]], bounds: tuple[int, int], algorithm: Any
) -> None:
    low, extra = bounds
    limit = Adaptive(min=low, max=low + extra, algorithm=algorithm)
    for seconds, failed in reports:
        got = limit.report(seconds, ConnectionError() if failed else None)
        assert low <= got <= low + extra


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"min": 0}, ValueError, "min must be >= 1"),
        ({"min": 5, "max": 4}, ValueError, "max must be >= min"),
        ({"initial": 100}, ValueError, "initial must be between"),
        ({"algorithm": "vegas"}, ValueError, "algorithm must be one of"),
        ({"max": 2.5}, TypeError, "max must be an int"),
        ({"backoff_on": ValueError}, TypeError, "backoff_on must be a tuple"),
        ({"backoff": 1.5}, ValueError, "backoff must be between 0 and 1"),
    ],
)
def test_bad_arguments_are_named(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        Adaptive(**kwargs)


def test_the_command_line_takes_workers_auto(tmp_path: Any) -> None:
    import subprocess
    import sys

    (tmp_path / "work.py").write_text("def double(x):\n    return 2 * x\n")
    (tmp_path / "in.txt").write_text("".join(f"{i}\n" for i in range(50)))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "rxpool", "map", "work:double", "in.txt", *args],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=60,
        )

    for workers in ("auto", "auto:2-10", "auto:16"):
        done = cli("--workers", workers)
        assert done.returncode == 0, done.stderr
        assert len(done.stdout.splitlines()) == 50
    for workers, message in [
        ("auto:9-3", "expected auto:MIN-MAX"),
        ("autox", "expected a positive integer, auto or auto:MIN-MAX"),
        ("auto:0-4", "min must be >= 1"),
    ]:
        refused = cli("--workers", workers)
        assert refused.returncode == 2 and message in refused.stderr
    process = cli("--workers", "auto", "--backend", "process")
    assert process.returncode == 2 and "needs --backend thread or asyncio" in process.stderr


def test_statistics_and_their_stream_show_the_limit() -> None:
    service = make_service()
    limit = Adaptive(max=64)
    with WorkerPool(limit) as pool:
        seen: list[int | None] = []
        stream = pool.statistics_stream(0.02).subscribe(lambda s: seen.append(s.limit))
        try:
            run(pool, service, 600)
        finally:
            stream.dispose()
        assert pool.statistics().limit == limit.limit
    assert len(set(seen)) > 1  # the subscriber saw it move
    assert limit.changes > 0


def test_an_adaptive_limit_on_a_remote_backend_is_refused_at_the_call() -> None:
    with pytest.raises(ValueError, match="works on the thread and asyncio backends"):
        WorkerPool(Adaptive(), backend="process")
    with pytest.raises(ValueError, match="works on the thread and asyncio backends"):
        Executor(max_workers=Adaptive(), backend="process")
    with pytest.raises(ValueError, match="works on the thread and asyncio backends"):
        rops.map_concurrent(abs, Adaptive(), backend="process")
