"""The Go worker-pool article's three tests, restated for rxpool."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from rxpool import Cancelled, CancelToken, DeadlineExceeded, Job, Result, WorkerPool

JOBS = 1000
WORKERS = 8


def exec_fn(x: int) -> int:
    return x * 2


def generate() -> Iterator[Job[int]]:
    for i in range(JOBS):
        yield Job(exec_fn, args=(i,), id=i, kind="double", metadata={"n": i})


def collect(pool: WorkerPool, token: CancelToken | None = None) -> tuple[list[Result[int]], bool]:
    results: list[Result[int]] = []
    finished = threading.Event()
    errors: list[Exception] = []
    pool.run(generate(), token=token).subscribe(results.append, errors.append, finished.set)
    assert finished.wait(30), "the run never completed"
    assert errors == []
    return results, True


def test_worker_pool_all_results() -> None:
    with WorkerPool(WORKERS) as pool:
        results, _ = collect(pool)
    assert len(results) == JOBS
    assert sorted(r.id for r in results) == list(range(JOBS))
    for r in results:
        assert r.ok and r.error is None
        assert r.value == 2 * r.descriptor.id
        assert r.descriptor.kind == "double"
        assert r.descriptor.metadata == {"n": r.descriptor.id}


def test_worker_pool_timeout() -> None:
    token = CancelToken.with_timeout(1e-9)
    with WorkerPool(WORKERS) as pool:
        results, completed = collect(pool, token)
    assert completed
    ids = [r.id for r in results]
    assert len(ids) == len(set(ids))
    for r in results:
        assert (r.ok and r.value == 2 * r.id) or isinstance(r.error, DeadlineExceeded)


def test_worker_pool_cancel() -> None:
    token = CancelToken()
    token.cancel()
    with WorkerPool(WORKERS) as pool:
        results, completed = collect(pool, token)
    assert completed
    for r in results:
        assert (r.ok and r.value == 2 * r.id) or isinstance(r.error, Cancelled)


def test_worker_pool_cancel_mid_run() -> None:
    token = CancelToken()
    seen = threading.Event()

    def slow(x: int, token: CancelToken) -> int:
        seen.set()
        token.wait(10)
        return x * 2

    jobs = (Job(slow, args=(i,), id=i) for i in range(JOBS))
    results: list[Result[int]] = []
    done = threading.Event()
    with WorkerPool(WORKERS) as pool:
        pool.run(jobs, token=token).subscribe(results.append, on_completed=done.set)
        assert seen.wait(5)
        token.cancel()
        assert done.wait(5)
    assert 1 <= len(results) <= WORKERS
    assert all(isinstance(r.error, Cancelled) for r in results)
    assert len({r.id for r in results}) == len(results)
