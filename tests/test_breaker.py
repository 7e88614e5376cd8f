"""The circuit breaker per job kind: real runs on threads, the loop and worker processes."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

import rxpool
from rxpool import Breaker, CircuitOpen, Job, Result, WorkerPool
from rxpool.backends import ProcessBackend

from . import _jobs

pytestmark = pytest.mark.timeout(60)


class Flaky:
    """Fails while ``down`` is set; counts calls per kind."""

    def __init__(self) -> None:
        self.down = threading.Event()
        self.down.set()
        self.calls: dict[str, int] = {}
        self.lock = threading.Lock()

    def __call__(self, kind: str, x: int) -> int:
        with self.lock:
            self.calls[kind] = self.calls.get(kind, 0) + 1
        if kind == "api" and self.down.is_set():
            raise ConnectionError("the api is down")
        return x


def results_of(pool: WorkerPool, jobs: list[Job[Any]], **kw: Any) -> list[Result[Any]]:
    return list(rxpool.iterate(pool.run(jobs, **kw)))


def test_a_kind_that_keeps_failing_fails_fast_and_the_others_run() -> None:
    flaky = Flaky()
    jobs = [
        Job(flaky, args=(kind, i), kind=kind, id=(kind, i))
        for i in range(20)
        for kind in ("api", "db")
    ]
    breaker = Breaker(failures=5, reset=60.0)
    with WorkerPool(1) as pool:  # one at a time: the order of outcomes is the input's
        results = results_of(pool, jobs, breaker=breaker, ordered=True)
    api = [r for r in results if r.descriptor.kind == "api"]
    db = [r for r in results if r.descriptor.kind == "db"]
    assert len(results) == 40  # every job has its result
    assert all(isinstance(r.error, ConnectionError) for r in api[:5])
    assert all(isinstance(r.error, CircuitOpen) for r in api[5:])
    assert "kind 'api' is open after 5 failures" in str(api[5].error)
    assert flaky.calls["api"] == 5  # the open breaker ran none of the rest
    assert all(r.ok for r in db) and flaky.calls["db"] == 20
    assert breaker.state("api") == "open" and breaker.state("db") == "closed"


def test_after_reset_one_trial_runs_and_its_success_closes_the_breaker() -> None:
    flaky = Flaky()
    breaker = Breaker(failures=2, reset=0.2)
    with WorkerPool(1) as pool:
        first = results_of(
            pool, [Job(flaky, args=("api", i), kind="api") for i in range(4)], breaker=breaker
        )
        assert [type(r.error) for r in first] == [ConnectionError] * 2 + [CircuitOpen] * 2
        deadline = time.monotonic() + 5
        while breaker.state("api") != "half-open":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        # The trial fails: open again, at once.
        trial = results_of(pool, [Job(flaky, args=("api", 9), kind="api")], breaker=breaker)
        assert isinstance(trial[0].error, ConnectionError) and breaker.state("api") == "open"
        while breaker.state("api") != "half-open":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        flaky.down.clear()  # the service is back: the next trial closes it
        again = results_of(
            pool, [Job(flaky, args=("api", i), kind="api") for i in range(5)], breaker=breaker
        )
    assert all(r.ok for r in again)
    assert breaker.state("api") == "closed"


def test_only_the_named_errors_count() -> None:
    breaker = Breaker(failures=1, reset=60.0, on=(ConnectionError,))
    with WorkerPool(1) as pool:
        results = results_of(
            pool,
            [Job(_jobs.fail_on, args=(i, frozenset(range(10))), kind="k") for i in range(10)],
            breaker=breaker,
        )
    assert all(isinstance(r.error, ValueError) for r in results)  # never opened
    assert breaker.state("k") == "closed"


def test_the_breaker_works_on_worker_processes() -> None:
    backend = ProcessBackend(2)
    try:
        breaker = Breaker(failures=3, reset=60.0)
        failing = frozenset(range(100))
        with WorkerPool(1, backend=backend) as pool:
            results = results_of(
                pool,
                [Job(_jobs.fail_on, args=(i, failing), kind="cpu", id=i) for i in range(10)],
                breaker=breaker,
                ordered=True,
            )
    finally:
        backend.close()
    assert [type(r.error) for r in results] == [ValueError] * 3 + [CircuitOpen] * 7


def test_the_breaker_on_asyncio_jobs() -> None:
    calls = []

    async def down(x: int) -> int:
        calls.append(x)
        raise ConnectionError("down")

    async def main() -> list[Result[Any]]:
        async with WorkerPool(1, backend="asyncio") as pool:
            jobs = [Job(down, args=(i,), kind="api") for i in range(6)]
            return [r async for r in rxpool.aiter(pool.run(jobs, breaker=Breaker(2, 60.0)))]

    results = asyncio.run(main())
    assert len(results) == 6 and len(calls) == 2
    assert sum(isinstance(r.error, CircuitOpen) for r in results) == 4


def test_run_jobs_takes_a_breaker_and_bad_arguments_are_named() -> None:
    import reactivex as rx

    flaky = Flaky()
    results = (
        rx.from_iterable([Job(flaky, args=("api", i), kind="api") for i in range(8)])
        .pipe(rxpool.operators.run_jobs(1, breaker=Breaker(3, 60.0)), rx.operators.to_list())
        .run()
    )
    assert sum(isinstance(r.error, CircuitOpen) for r in results) == 5
    with pytest.raises(TypeError, match=r"breaker must be an rxpool\.Breaker"):
        rxpool.operators.run_jobs(1, breaker=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="failures must be >= 1"):
        Breaker(0)
    with pytest.raises(ValueError, match="reset must be"):
        Breaker(1, reset=0)
    with pytest.raises(TypeError, match="on must be a tuple"):
        Breaker(on=ValueError)  # type: ignore[arg-type]
