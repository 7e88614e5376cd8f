"""One contract for every backend: the same results, ordering, timeouts, retries,
accounting and cancellation on threads, the asyncio loop, processes and Dask."""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import math
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import reactivex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reactivex import operators as ops

import rxpool
from rxpool import Cancelled, CancelToken, Job, JobTimeout, Result, Retry, WorkerPool
from rxpool import operators as rops
from rxpool.backends import (
    AsyncioBackend,
    Backend,
    DaskBackend,
    ProcessBackend,
    ThreadBackend,
)
from rxpool.backends._protocol import BACKEND_MEMBERS

from . import _jobs
from ._helpers import Recorder, wait_until

BACKENDS = ["thread", "asyncio", "process", "dask"]


def _loopback_cluster(workers: int, threads: int) -> Any:
    """A ``LocalCluster`` in this process, on real sockets on loopback (its dashboard too)."""
    from distributed import LocalCluster

    return LocalCluster(
        n_workers=workers,
        threads_per_worker=threads,
        processes=False,
        protocol="tcp://",  # real sockets on loopback, not the in-process transport
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
    )


@pytest.fixture(scope="module")
def dask_client() -> Iterator[Any]:
    from distributed import Client

    with _loopback_cluster(2, 2) as cluster, Client(cluster) as client:
        yield client


@pytest.fixture(scope="module")
def processes() -> Iterator[ProcessBackend]:
    backend = ProcessBackend(4)
    backend.warm()
    yield backend
    backend.close()


def _backend_named(request: pytest.FixtureRequest) -> Any:
    """The backend ``request.param`` names: the module's processes or Dask cluster."""
    name = request.param
    if name == "process":
        return request.getfixturevalue("processes")
    if name == "dask":
        return DaskBackend(request.getfixturevalue("dask_client"))
    return name


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Any:
    return _backend_named(request)


@pytest.fixture(params=["process", "dask"])
def remote(request: pytest.FixtureRequest) -> Any:
    """A backend whose jobs' results are pickled in a worker and loaded here."""
    return _backend_named(request)


def collect(observable: reactivex.Observable[Any], timeout: float = 30.0) -> Recorder:
    recorder = Recorder()
    observable.subscribe(recorder.on_next, recorder.on_error, recorder.on_completed)
    assert recorder.ended.wait(timeout), "the run never ended"
    return recorder


@pytest.mark.parametrize("ordered", [False, True])
def test_every_job_yields_exactly_one_result(backend: Any, ordered: bool) -> None:
    failing = frozenset(range(0, 300, 7))
    with WorkerPool(3, backend=backend) as pool:
        jobs = (Job(_jobs.fail_on, args=(i, failing), id=i) for i in range(300))
        out = collect(pool.run(jobs, ordered=ordered))
    assert not out.errors
    results: list[Result[int]] = out.values
    ids = [r.id for r in results]
    assert sorted(ids) == list(range(300))
    if ordered:
        assert ids == list(range(300))
    for r in results:
        if r.id in failing:
            assert isinstance(r.error, ValueError) and r.value is None
        else:
            assert r.ok and r.value == r.id
        assert r.started <= r.finished


@pytest.mark.parametrize("source", ["generator", "observable"])
@pytest.mark.parametrize("workers", [2, 3])
def test_as_many_jobs_as_workers_all_run_at_once(
    backend: Any, source: str, workers: int, tmp_path: Path
) -> None:
    # No job waits behind another while a worker is free. Each job waits until
    # every job of the run has started: run one after the other, they time out.
    jobs = [Job(_jobs.meet, args=(str(tmp_path), i, workers, 10.0), id=i) for i in range(workers)]
    source_of_jobs = iter(jobs) if source == "generator" else reactivex.from_iterable(jobs)
    with WorkerPool(workers, backend=backend) as pool:
        out = collect(pool.run(source_of_jobs), timeout=60)
    assert not out.errors
    assert sorted(r.id for r in out.values) == list(range(workers))
    assert [r.value for r in out.values] == [True] * workers


@pytest.mark.parametrize("api", ["run", "map", "map_concurrent"])
@pytest.mark.parametrize("ordered", [False, True])
def test_slow_jobs_taken_in_a_batch_of_fast_ones_still_run_at_once(
    api: str, ordered: bool, tmp_path: Path
) -> None:
    # Threads take fast jobs in batches. The last 4 jobs, taken in such a
    # batch, each wait until all 4 have started: one slot running them one
    # after the other would time out. Their batch gives them up to free slots.
    def fn(x: Any) -> Any:
        return x * 2 if isinstance(x, int) else _jobs.meet(*x)

    inputs: list[Any] = [*range(3000), *((str(tmp_path), i, 4, 10.0) for i in range(4))]
    expected = [x * 2 for x in range(3000)] + [True] * 4
    with WorkerPool(4) as pool:
        if api == "run":
            jobs = (Job(fn, args=(x,)) for x in inputs)
            results = collect(pool.run(jobs, ordered=ordered), timeout=60).values
            assert all(r.ok for r in results)
            values = [r.value for r in results]
        elif api == "map":
            values = list(pool.map(fn, inputs))  # in order
        else:
            operator = rops.map_concurrent(fn, 4, ordered=ordered)
            values = collect(reactivex.from_iterable(inputs).pipe(operator), timeout=60).values
    assert values == expected if ordered or api == "map" else sorted(values) == sorted(expected)


@pytest.mark.parametrize("repeat", range(5))
def test_the_last_jobs_of_a_known_length_go_to_the_worker_that_frees_first(
    remote: Any, tmp_path: Path, repeat: int
) -> None:
    # The first job waits for the two after it. Queued behind it at its
    # worker, the last one would never start: with fewer jobs left than
    # workers, nothing is queued behind a running job. (Without that rule
    # the last one was queued there when the first job's slot looked after
    # the other slot had taken the second: in about 1 run of 6.)
    where = tmp_path / str(repeat)
    where.mkdir()
    jobs = [Job(_jobs.meet, args=(str(where), 0, 3, 10.0), id=0)] + [
        Job(_jobs.touch, args=(str(where / str(i)),), id=i) for i in (1, 2)
    ]
    with WorkerPool(2, backend=remote) as pool:
        out = collect(pool.run(jobs, chunk_size=1), timeout=60)
    assert not out.errors
    assert {r.id: r.ok for r in out.values} == {0: True, 1: True, 2: True}
    assert next(r.value for r in out.values if r.id == 0) is True


def test_a_job_that_exits_or_raises_no_exception_fails_alone(backend: Any) -> None:
    """sys.exit() in a job fails that job on every backend; the run goes on.

    On Dask too, alone in a task or in a chunk: Dask catches only
    `Exception`, and a job's SystemExit would stop an in-process cluster.
    In the source, it ends the run as a source's error does, after the jobs taken.
    """
    remote = not isinstance(backend, str)
    with WorkerPool(2, backend=backend) as pool:
        for chunk_size in (1, 3) if remote else (None,):
            out = collect(
                pool.run(
                    (Job(_jobs.raise_base, args=(i,), id=i) for i in range(5)),
                    chunk_size=chunk_size,
                )
            )
            assert not out.errors
            results = {r.id: r for r in out.values}
            assert [results[i].value for i in (0, 3, 4)] == [0, 3, 4]
            for i, raised in ((1, "SystemExit(3)"), (2, "GeneratorExit()")):
                assert isinstance(results[i].error, RuntimeError)
                assert str(results[i].error) == f"the job raised {raised}"  # the same everywhere
        fast = collect(pool.run((Job(_jobs.raise_base, args=(1,)),), fail_fast=True))
    assert [type(e) for e in fast.errors] == [RuntimeError]  # fail_fast: the run's error

    def source() -> Iterator[Job[Any]]:
        yield from (Job(abs, args=(-i,), id=i) for i in range(3))
        sys.exit(4)

    with WorkerPool(2, backend=backend) as pool:
        ended = collect(pool.run(source()))
    assert sorted(r.value for r in ended.values) == [0, 1, 2]  # the jobs taken have results
    assert [str(e) for e in ended.errors] == ["the source raised SystemExit(4)"]


def test_at_most_n_jobs_at_once(backend: Any) -> None:
    with WorkerPool(3, backend=backend) as pool:
        jobs = (Job(_jobs.stamp, args=(i, 0.05), id=i) for i in range(12))
        results = collect(pool.run(jobs)).values
    spans = [(r.value[1], r.value[2]) for r in results]
    most = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert most <= 3
    assert most >= 2  # the bound is used, not just respected


def test_statistics_never_show_more_jobs_running_than_workers(backend: Any) -> None:
    # On processes and Dask a slot's next chunk waits at its worker behind
    # the one it runs: those jobs are queued, not running.
    remote = not isinstance(backend, str)
    samples: list[rxpool.Statistics] = []
    with WorkerPool(2, backend=backend) as pool:
        for chunk_size in (None, 3) if remote else (None,):
            recorder = Recorder()

            def on_next(result: Result[Any], recorder: Recorder = recorder) -> None:
                samples.append(pool.statistics())
                recorder.on_next(result)

            jobs = [Job(_jobs.sleep_for, args=(0.02,), id=i) for i in range(24)]
            pool.run(jobs, chunk_size=chunk_size).subscribe(
                on_next, recorder.on_error, recorder.on_completed
            )
            deadline = time.monotonic() + 30
            while not recorder.ended.wait(0.005) and time.monotonic() < deadline:
                samples.append(pool.statistics())
            assert recorder.ended.is_set(), "the run never ended"
            assert not recorder.errors and len(recorder.values) == 24
    assert len(samples) >= 24
    assert max(s.running for s in samples) <= 2, [s.running for s in samples]
    assert max(s.running for s in samples) == 2  # the samples saw the run at work
    final = pool.statistics()
    assert (final.running, final.queued, final.succeeded) == (0, 0, 24 * (2 if remote else 1))


def test_timeout_reports_job_timeout_and_the_run_goes_on(backend: Any) -> None:
    with WorkerPool(2, backend=backend) as pool:
        jobs = [Job(_jobs.sleep_for, args=(0.5,), timeout=0.2, id="slow")] + [
            Job(_jobs.double, args=(i,), id=i) for i in range(20)
        ]
        results = collect(pool.run(jobs)).values
    by_id = {r.id: r for r in results}
    assert len(results) == 21
    assert isinstance(by_id["slow"].error, JobTimeout)
    assert all(by_id[i].value == 2 * i for i in range(20))


@pytest.mark.parametrize("mates", [1, 30])
def test_a_short_timeout_behind_longer_ones_fires_at_its_own_deadline(
    backend: Any, mates: int
) -> None:
    """The run's 10 s default arms the batch's timer first; the 0.05 s job still ends at 0.05 s."""
    with WorkerPool(2, backend=backend) as pool:
        jobs = [Job(_jobs.double, args=(i,), id=i) for i in range(mates)]
        # Its function sleeps 0.4 s: the pool's exit waits for it.
        jobs.append(Job(_jobs.sleep_for, args=(0.4,), timeout=0.05, id="short"))
        results = collect(pool.run(jobs, timeout=10.0)).values
    by_id = {r.id: r for r in results}
    assert len(results) == mates + 1
    short = by_id["short"]
    assert isinstance(short.error, JobTimeout)  # it came before the function returned
    assert short.finished - short.started < 0.3, short.finished - short.started
    assert all(by_id[i].value == 2 * i for i in range(mates))


def _raising_predicate(error: BaseException) -> bool:
    raise RuntimeError("the predicate broke")


@pytest.mark.parametrize(
    "retry",
    [
        Retry(3, retry_on=_raising_predicate),
        Retry(3, backoff=lambda attempt: -1.0),
        Retry(3, backoff=lambda attempt: math.nan),
    ],
    ids=["retry_on-raises", "backoff-negative", "backoff-nan"],
)
def test_a_retry_policy_that_fails_becomes_that_jobs_result(backend: Any, retry: Retry) -> None:
    failing = frozenset(range(0, 20, 4))
    with WorkerPool(2, backend=backend) as pool:
        jobs = [Job(_jobs.fail_on, args=(i, failing), id=i, retry=retry) for i in range(20)]
        out = collect(pool.run(jobs))
    assert not out.errors, out.errors  # the stream completed
    by_id = {r.id: r for r in out.values}
    assert sorted(by_id) == list(range(20))
    for i, result in by_id.items():
        if i in failing:
            assert isinstance(result.error, RuntimeError | ValueError), result.error
            assert isinstance(result.error.__context__, ValueError)  # the job's own error
            assert result.attempt == 1
        else:
            assert result.value == i


def test_a_retry_policy_that_fails_ends_map_concurrent_with_that_error(backend: Any) -> None:
    fn = functools.partial(_jobs.fail_on, failing=frozenset({3}))
    stream = reactivex.from_iterable(range(10)).pipe(
        rops.map_concurrent(fn, 2, backend=backend, retry=Retry(3, retry_on=_raising_predicate))
    )
    out = collect(stream)
    assert len(out.errors) == 1 and isinstance(out.errors[0], RuntimeError), out.errors
    assert isinstance(out.errors[0].__context__, ValueError)


def test_retry_until_success(backend: Any, tmp_path: Path) -> None:
    counter = str(tmp_path / "calls")
    with WorkerPool(2, backend=backend) as pool:
        job = Job(_jobs.flaky, args=(counter, 3), retry=Retry(attempts=3, backoff=0.01))
        (result,) = collect(pool.run([job])).values
    assert result.ok and result.value == 3 and result.attempt == 3


def test_fail_fast_ends_the_stream_with_the_error(backend: Any) -> None:
    with WorkerPool(2, backend=backend) as pool:
        jobs = (Job(_jobs.fail_on, args=(i, frozenset({5}))) for i in range(50))
        out = collect(pool.run(jobs, ordered=True, fail_fast=True))
    assert len(out.errors) == 1 and isinstance(out.errors[0], ValueError)
    assert all(r.ok for r in out.values)


def test_dispose_emits_nothing_more(backend: Any) -> None:
    got_one = threading.Event()
    values: list[Any] = []
    lock = threading.Lock()

    def on_next(value: Any) -> None:
        with lock:
            values.append(value)
        got_one.set()

    with WorkerPool(2, backend=backend) as pool:
        jobs = (Job(_jobs.sleep_for, args=(0.02,)) for _ in range(1000))
        subscription = pool.run(jobs).subscribe(on_next)
        assert got_one.wait(20)
        subscription.dispose()
        with lock:
            seen = len(values)
        assert wait_until(lambda: not pool._runs, timeout=20)
    assert len(values) == seen
    assert seen < 1000


def test_token_cancel_gives_every_taken_job_a_cancelled_result(backend: Any) -> None:
    token = CancelToken()
    first = threading.Event()

    with WorkerPool(2, backend=backend) as pool:
        jobs = (Job(_jobs.sleep_for, args=(0.05,), id=i) for i in range(10_000))
        recorder = Recorder()

        def on_next(result: Result[Any]) -> None:
            recorder.on_next(result)
            first.set()

        pool.run(jobs, token=token).subscribe(on_next, recorder.on_error, recorder.on_completed)
        assert first.wait(20)
        token.cancel()
        assert recorder.completed.wait(20)
    results: list[Result[Any]] = recorder.values
    ids = [r.id for r in results]
    assert len(ids) == len(set(ids)) < 10_000
    cancelled = [r for r in results if r.error is not None]
    assert cancelled and all(isinstance(r.error, Cancelled) for r in cancelled)


def test_map_concurrent_on_every_backend(backend: Any) -> None:
    out = reactivex.range(200).pipe(
        rops.map_concurrent(_jobs.double, 3, ordered=True, backend=backend), ops.to_list()
    )
    assert out.run() == [2 * i for i in range(200)]
    with pytest.raises(ValueError, match="job 9 failed"):
        reactivex.range(50).pipe(
            ops.map(lambda x: (x, frozenset({9}))),
            rops.map_concurrent(_star_fail_on, 2, backend=backend),
            ops.to_list(),
        ).run()


def _star_fail_on(pair: tuple[int, frozenset[int]]) -> int:
    return _jobs.fail_on(*pair)


def test_bad_input_is_refused_at_the_call(backend: Any) -> None:
    with WorkerPool(2, backend=backend) as pool:
        with pytest.raises(TypeError, match=r"jobs\[1\]"):
            pool.run([Job(abs, args=(1,)), 42])  # type: ignore[list-item]
        with pytest.raises(TypeError, match="jobs must be"):
            pool.run(42)  # type: ignore[arg-type]


def test_a_submitted_job_cancelled_while_it_waits_never_starts(
    tmp_path: Path, backend: Any
) -> None:
    running, skipped, after = (str(tmp_path / name) for name in ("running", "skipped", "after"))
    with WorkerPool(1, backend=backend) as pool:
        first = pool.submit(_jobs.announce_then_sleep, running, 0.5)
        assert wait_until(lambda: Path(running).exists(), timeout=15)
        waiting = pool.submit(_jobs.touch, skipped)  # behind the running job
        assert waiting.cancel()
        assert waiting.cancelled()
        assert pool.submit(_jobs.touch, after).result(15) == after
        assert first.result(15) == 0.5
    assert not Path(skipped).exists()  # the one slot ran the next job, not the cancelled one
    assert pool.statistics().cancelled == 1


# -- backend selection ------------------------------------------------------------------------


def test_backend_names_and_objects() -> None:
    assert isinstance(ProcessBackend(1), Backend)
    assert isinstance(ThreadBackend(), Backend)
    for spec in ["thread", "asyncio", ThreadBackend(), AsyncioBackend()]:
        with WorkerPool(2, backend=spec) as pool:
            assert pool.backend is spec
            assert collect(pool.run([Job(abs, args=(-3,))])).values[0].value == 3
    with pytest.raises(ValueError, match="backend"):
        WorkerPool(2, backend="gpu")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="backend"):
        WorkerPool(2, backend=object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"distributed\.Client"):
        DaskBackend(object())
    with pytest.raises(ValueError, match="chunk_size"):
        ProcessBackend(2, chunk_size=0)
    with pytest.raises(ValueError, match="processes must be >= 1, got 0"):
        ProcessBackend(0)  # not "the CPU count": None means that
    with pytest.raises(TypeError, match="processes must be an int"):
        ProcessBackend(2.0)  # type: ignore[arg-type]
    assert ProcessBackend().processes == (os.cpu_count() or 1)
    with pytest.raises(ValueError, match="start_method"):
        ProcessBackend(2, start_method="teleport")
    with pytest.raises(ValueError, match="start_method='fork' is not supported"):
        ProcessBackend(2, start_method="fork")


class _Inline:
    """A backend of one's own, as the `Backend` Protocol asks: runs each chunk inline."""

    def __init__(self, chunk_size: Any = None) -> None:
        self.chunk_size = chunk_size
        self.sizes: list[int] = []

    def run_chunk(self, calls: Any, token: CancelToken) -> list[Any]:
        self.sizes.append(len(calls))
        outcomes: list[Any] = []
        for fn, args, kwargs in calls:
            try:
                outcomes.append((True, fn(*args, **kwargs), 0.0))
            except Exception as error:
                outcomes.append((False, error, 0.0))
        return outcomes

    def close(self) -> None:
        pass


def _fail() -> None:
    raise ValueError("this job fails")


class _NoChunkSize:
    def run_chunk(self, calls: Any, token: CancelToken) -> list[Any]:
        return []

    def close(self) -> None:
        pass


def test_a_backend_of_ones_own_runs_jobs_and_a_near_miss_is_told_what_it_lacks() -> None:
    mine = _Inline(chunk_size=3)
    with WorkerPool(2, backend=mine) as pool:
        out = collect(pool.run([Job(abs, args=(-i,), id=i) for i in range(7)] + [Job(_fail)]))
    assert sorted(r.value for r in out.values if r.ok) == list(range(7))
    assert [type(r.error) for r in out.values if not r.ok] == [ValueError]
    assert sum(mine.sizes) == 8 and max(mine.sizes) == 3
    operator = rops.map_concurrent(_jobs.double, 2, backend=_Inline())
    assert sorted(collect(reactivex.from_iterable(range(5)).pipe(operator)).values) == [
        0,
        2,
        4,
        6,
        8,
    ]
    with pytest.raises(TypeError, match=r"backend _NoChunkSize lacks chunk_size: a Backend has"):
        WorkerPool(2, backend=_NoChunkSize())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"backend _NoChunkSize lacks chunk_size"):
        rops.map_concurrent(_jobs.double, 2, backend=_NoChunkSize())
    with pytest.raises(ValueError, match=r"_Inline.chunk_size must be >= 1, got 0"):
        WorkerPool(2, backend=_Inline(chunk_size=0))
    with pytest.raises(TypeError, match=r"_Inline.chunk_size must be an int, got str"):
        WorkerPool(2, backend=_Inline(chunk_size="8"))
    # The names the message gives are the Protocol's: lacking any one, it is no Backend.
    for name in BACKEND_MEMBERS:
        assert not isinstance(
            type("Partial", (), dict.fromkeys(set(BACKEND_MEMBERS) - {name}, _fail))(),
            Backend,
        )
    assert isinstance(type("Whole", (), dict.fromkeys(BACKEND_MEMBERS, _fail))(), Backend)


def test_processes_start_from_a_forkserver_by_default() -> None:
    methods = multiprocessing.get_all_start_methods()
    expected = "forkserver" if "forkserver" in methods else "spawn"
    assert ProcessBackend(1).start_method == expected
    assert f"start_method={expected!r}" in repr(ProcessBackend(1))


@pytest.mark.skipif(
    "forkserver" not in multiprocessing.get_all_start_methods(), reason="no forkserver here"
)
def test_the_forkserver_preload_keeps_the_programs_own_modules() -> None:
    from multiprocessing import forkserver

    server = forkserver._forkserver  # type: ignore[attr-defined]
    saved = list(server._preload_modules)
    try:
        multiprocessing.set_forkserver_preload(["__main__", "json"])
        ProcessBackend(1, start_method="forkserver")
        ours = ["rxpool._remote", "rxpool.backends._process.preload"]
        assert server._preload_modules == ["__main__", "json", *ours]
        ProcessBackend(1)  # added once
        assert server._preload_modules == ["__main__", "json", *ours]
    finally:
        multiprocessing.set_forkserver_preload(saved)


# -- processes --------------------------------------------------------------------------------


def test_a_program_read_from_stdin_is_told_processes_cannot_start() -> None:
    # Worker processes run the main script again; "<stdin>" is no file, so
    # every worker would die at start. The backend says so at once instead.
    program = "from rxpool import WorkerPool\nWorkerPool(2, backend='process')\n"
    done = subprocess.run(
        [sys.executable, "-"], input=program, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "RuntimeError: worker processes cannot start" in done.stderr
    assert "'<stdin>' is not a file" in done.stderr


@pytest.mark.parametrize(
    "start_method", [m for m in multiprocessing.get_all_start_methods() if m != "fork"]
)
def test_a_process_that_dies_starting_says_so(tmp_path: Path, start_method: str) -> None:
    # A script with no `if __name__ == "__main__":` starts a pool at its top
    # level: each new process runs it again and dies there, before its first
    # job. Each job still gets a result, which says where the process died.
    (tmp_path / "unguarded.py").write_text(
        "import rxpool\n"
        "from rxpool import Job, WorkerPool\n"
        "from rxpool.backends import ProcessBackend\n\n\n"
        "def square(x):\n    return x * x\n\n\n"
        f"backend = ProcessBackend(2, start_method={start_method!r})\n"
        "with WorkerPool(2, backend=backend) as pool:\n"
        "    for r in rxpool.iterate(pool.run(Job(square, args=(x,)) for x in range(3))):\n"
        "        print(type(r.error).__name__, r.error)\n"
        "backend.close()\n"
    )
    done = subprocess.run(
        [sys.executable, "unguarded.py"], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3, done.stdout
    for line in lines:
        assert line.startswith("WorkerCrashed worker process "), line
        assert "while starting, before its first job" in line
        assert "if __name__ == '__main__':" in line
    assert "bootstrapping phase" in done.stderr  # multiprocessing's own error, from the processes


@pytest.mark.skipif(
    "forkserver" not in multiprocessing.get_all_start_methods(), reason="no forkserver here"
)
def test_a_sys_path_entry_the_forkserver_cannot_start_with_is_named(tmp_path: Path) -> None:
    # multiprocessing writes sys.path into the server's command line with
    # repr(): a Path there killed the server, and every process start failed
    # with "EOFError: unexpected EOF". The backend, or the run that would
    # start the server, names the entry instead; a str entry works.
    program = (
        "import operator, sys\n"
        "from pathlib import Path\n"
        "from rxpool import WorkerPool\n"
        "from rxpool.backends import ProcessBackend\n"
        "sys.path.append(Path('/nowhere'))\n"
        "try:\n"
        "    ProcessBackend(2)\n"
        "except ValueError as error:\n"
        "    print('backend:', error)\n"
        "sys.path.pop()\n"
        "with WorkerPool(2, backend='process') as pool:\n"
        "    sys.path.append(Path('/nowhere'))  # after the backend, before its first process\n"
        "    try:\n"
        "        list(pool.map(operator.neg, range(3)))\n"
        "    except ValueError as error:\n"
        "        print('run:', error)\n"
        "    sys.path[-1] = '/nowhere'\n"
        "    print(list(pool.map(operator.neg, range(3))))\n"
    )
    output, _ = _run_marking(tmp_path, "-c", program)
    named = "is PosixPath('/nowhere'): worker processes cannot start with it"
    assert [line.split(" sys.path[")[0] for line in output] == ["backend:", "run:", "[0, -1, -2]"]
    assert named in output[0] and named in output[1]


_MAIN_SCRIPT = """
import os, sys
from pathlib import Path

import helper  # a module next to the script: found through the parent's sys.path

from rxpool import Job, WorkerPool
from rxpool.backends import ProcessBackend

with Path(os.environ["MARKS"]).open("a") as marks:
    marks.write(f"{__name__}\\n")
ARGV = sys.argv[1:]


def argv_and_environment():
    return ARGV, os.environ.get("RXPOOL_FORKSERVER_PRELOAD")


if __name__ == "__main__":
    for _ in range(2):  # a second backend starts new processes
        backend = ProcessBackend(2, chunk_size=1, start_method="forkserver")
        with WorkerPool(2, backend=backend) as pool:
            crashed = pool.run([Job(helper.die)]).run()  # its process is replaced
            assert type(crashed.error).__name__ == "WorkerCrashed", crashed
            print(sorted(pool.map(helper.triple, range(6))))
            print(pool.run([Job(argv_and_environment)]).run().value)
        backend.close()
    print(os.environ.get("RXPOOL_FORKSERVER_PRELOAD"))
"""


def test_forkserver_workers_find_the_main_module_run_once(tmp_path: Path) -> None:
    # Each new process runs the main script again before its first job; the
    # forkserver does it once for all of them, with the parent's sys.path and
    # argv (Pythons before 3.13.8 never did, and every start re-ran it).
    (tmp_path / "helper.py").write_text(
        "import os\n\n\ndef triple(x):\n    return 3 * x\n\n\ndef die():\n    os._exit(3)\n"
    )
    (tmp_path / "main.py").write_text(_MAIN_SCRIPT)
    output, marks = _run_marking(tmp_path, str(tmp_path / "main.py"), "--flag", "x")
    # Jobs from the module next to the script and from the script itself run;
    # the workers see the parent's argv, and the variable that told the server
    # where the script is reaches no worker and does not stay in the parent.
    each = ["[0, 3, 6, 9, 12, 15]", "(['--flag', 'x'], None)"]
    assert output == [*each, *each, "None"]
    # The parent ran the script, the forkserver once; no process it started did.
    assert marks == ["__main__", "__mp_main__"]


def test_forkserver_workers_find_the_first_jobs_module_imported(tmp_path: Path) -> None:
    # A program with no main module to run (python -c): the module of the
    # first chunk's function is imported once, in the server, not by each process.
    (tmp_path / "jobs.py").write_text(
        "import os\nfrom pathlib import Path\n\n"
        "with Path(os.environ['MARKS']).open('a') as marks:\n"
        "    marks.write(f'{os.getpid()}\\n')\n\n\n"
        "def triple(x):\n    return 3 * x\n"
    )
    program = (
        "import jobs\n"
        "from rxpool import WorkerPool\n"
        "for _ in range(3):\n"
        "    with WorkerPool(2, backend='process') as pool:\n"
        "        print(sorted(pool.map(jobs.triple, range(6))))\n"
    )
    output, marks = _run_marking(tmp_path, "-c", program)
    assert output == ["[0, 3, 6, 9, 12, 15]"] * 3
    # The parent and the server imported it; the six processes did not.
    assert len(marks) == 2


def test_a_main_module_that_starts_a_thread_is_run_by_each_worker(tmp_path: Path) -> None:
    # A forked process has none of the server's threads: a main module whose
    # top level starts one is left to each worker, which starts its own.
    (tmp_path / "main.py").write_text(
        "import os, threading\n"
        "from pathlib import Path\n\n"
        "with Path(os.environ['MARKS']).open('a') as marks:\n"
        "    marks.write(f'{__name__}\\n')\n"
        "TICKER = threading.Thread(target=threading.Event().wait, daemon=True)\n"
        "TICKER.start()\n\n\n"
        "def ticking(_):\n"
        "    return TICKER.is_alive()\n\n\n"
        "if __name__ == '__main__':\n"
        "    from rxpool import WorkerPool\n"
        "    with WorkerPool(2, backend='process') as pool:\n"
        "        print(set(pool.map(ticking, range(20))))\n"
    )
    output, marks = _run_marking(tmp_path, str(tmp_path / "main.py"))
    assert output == ["{True}"]
    assert marks[0] == "__main__" and len(marks) >= 3  # the server's run did not count
    assert set(marks[1:]) == {"__mp_main__"}


def test_a_main_module_reading_stdin_reads_nothing_in_the_forkserver(tmp_path: Path) -> None:
    # Its top level reads a line: the parent gets what it was sent; the server
    # (and each process) reads from /dev/null, as processes do, and never
    # waits on, or takes from, the parent's stdin.
    (tmp_path / "main.py").write_text(
        "import operator, sys\n"
        "line = sys.stdin.readline()\n"
        "if __name__ == '__main__':\n"
        "    from rxpool import WorkerPool\n"
        "    with WorkerPool(2, backend='process') as pool:\n"
        "        print(line.strip(), list(pool.map(operator.neg, range(3))), flush=True)\n"
    )
    with subprocess.Popen(
        [sys.executable, str(tmp_path / "main.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    ) as program:
        assert program.stdin is not None and program.stdout is not None
        program.stdin.write("hello\n")
        program.stdin.flush()  # and the pipe stays open: a read would wait
        try:
            assert program.stdout.readline() == "hello [0, -1, -2]\n"
        finally:
            program.stdin.close()
        assert program.wait(timeout=60) == 0


def _run_marking(where: Path, *args: str) -> tuple[list[str], list[str]]:
    """Run Python with ``args`` in ``where``: its output lines, and what it wrote to $MARKS."""
    marks = where / "marks"
    done = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=where,
        env={**os.environ, "MARKS": str(marks)},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines(), marks.read_text().split() if marks.exists() else []


def test_a_forkserver_ignores_a_main_module_set_by_another_program(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The variable may reach a program that did not set it (a child of one
    # that did): a forkserver whose parent did not set it runs nothing.
    from rxpool.backends._process import preload

    main = sys.modules["__main__"]
    told = {"parent": os.getpid(), "init_main_from_path": "/nonexistent/main.py"}
    monkeypatch.setenv("RXPOOL_FORKSERVER_PRELOAD", json.dumps(told))
    preload._preload()  # this process's parent is not os.getpid()
    assert "RXPOOL_FORKSERVER_PRELOAD" not in os.environ
    assert sys.modules["__main__"] is main


def test_unpicklable_job_fails_at_once_with_a_clear_result(processes: ProcessBackend) -> None:
    with WorkerPool(2, backend=processes) as pool:
        jobs = [
            Job(lambda: 1, id="lambda"),
            Job(_jobs.double, args=(threading.Lock(),), id="lock"),
            Job(_jobs.unpicklable_result, args=(1,), id="result"),
            Job(_jobs.wants_token, args=(1,), id="token"),
            Job(_jobs.double, args=(4,), id="fine"),
        ]
        results = {r.id: r for r in collect(pool.run(jobs)).values}
    assert isinstance(results["lambda"].error, rxpool.NotSendable)
    assert "cannot be pickled" in str(results["lambda"].error)
    assert isinstance(results["lock"].error, rxpool.NotSendable)
    assert isinstance(results["result"].error, rxpool.NotSendable)
    assert "sent back" in str(results["result"].error)
    assert isinstance(results["token"].error, TypeError)
    assert "CancelToken cannot cross" in str(results["token"].error)
    assert results["fine"].value == 8


@pytest.mark.parametrize("chunk_size", [1, 4])
def test_a_result_that_cannot_come_back_fails_its_job_with_a_result_not_the_run(
    remote: Any, chunk_size: int
) -> None:
    # Job 2's result pickles in the worker and fails to load here; job 6's
    # refuses to be pickled at all.
    jobs = (
        Job(_jobs.unpicklable_result, args=(i,), id=i)
        if i == 6
        else Job(_jobs.unloadable_on, args=(i, 2), id=i)
        for i in range(9)
    )
    with WorkerPool(2, backend=remote) as pool:
        out = collect(pool.run(jobs, chunk_size=chunk_size))
    assert not out.errors  # the run goes on
    results = {r.id: r for r in out.values}
    assert sorted(results) == list(range(9))
    for i in (2, 6):
        assert isinstance(results[i].error, rxpool.NotSendable), results[i]
    assert "cannot be rebuilt here" in str(results[2].error)
    assert "sent back" in str(results[6].error)
    failed = {i for i, r in results.items() if not r.ok}
    # Only the results sent back with job 2's (in the same chunk) may share
    # its fate, and say so; a result that cannot be pickled fails alone.
    assert failed <= {0, 1, 2, 3, 6} if chunk_size == 4 else failed == {2, 6}, {
        i: repr(results[i].error) for i in failed
    }
    for i in failed - {2, 6}:
        assert isinstance(results[i].error, rxpool.NotSendable)
        assert "sent back together" in str(results[i].error)
    assert all(results[i].value == i for i in set(range(9)) - failed)


def test_a_dask_result_that_cannot_be_loaded_never_fails_a_neighbours(dask_client: Any) -> None:
    # Dask fetches the values of tasks that end together in one message: a
    # value it failed to load there failed the others' fetches too (a job of
    # this test's twenty runs, nearly every time). rxpool's tasks return their
    # values pickled, and it loads each alone.
    with WorkerPool(2, backend=DaskBackend(dask_client, chunk_size=1)) as pool:
        for _ in range(20):
            jobs = [Job(_jobs.unloadable_on, args=(i, i if i % 2 else -1), id=i) for i in range(8)]
            results = collect(pool.run(jobs)).values
            assert sorted(r.id for r in results if not r.ok) == [1, 3, 5, 7]
            assert all(isinstance(r.error, rxpool.NotSendable) for r in results if not r.ok)


@pytest.mark.parametrize("chunk_size", [1, 3])
def test_a_job_error_pickle_cannot_rebuild_comes_back_as_its_own_type(
    remote: Any, chunk_size: int
) -> None:
    # Loading a NeedsCode calls NeedsCode("refused"), which lacks `code`: it
    # still comes back as a NeedsCode, with its attributes but those that
    # cannot be pickled (named in a note), and its chunk-mates' results.
    with WorkerPool(2, backend=remote) as pool:
        jobs = (Job(_jobs.raise_needs_code, args=(i,), id=i) for i in range(6))
        out = collect(pool.run(jobs, chunk_size=chunk_size))
    assert not out.errors
    results = {r.id: r for r in out.values}
    assert [results[i].value for i in (0, 3, 4, 5)] == [0, 3, 4, 5]
    refused, locked = results[1].error, results[2].error
    assert isinstance(refused, _jobs.NeedsCode), refused
    assert (refused.args, refused.code, refused.lock) == (("refused",), 403, None)
    assert isinstance(locked, _jobs.NeedsCode), locked
    assert (str(locked), locked.code, hasattr(locked, "lock")) == ("locked", 423, False)
    notes = "\n".join(getattr(locked, "__notes__", []))
    assert "cannot be pickled): lock" in notes


def test_dask_tasks_are_named_after_their_jobs_function(dask_client: Any) -> None:
    from distributed import get_task_stream

    def keys(chunk_size: int, fns: list[Any]) -> set[str]:
        backend = DaskBackend(dask_client, chunk_size=chunk_size)
        with get_task_stream(dask_client) as stream, WorkerPool(1, backend=backend) as pool:
            out = collect(pool.run(Job(fn, args=(3,)) for fn in fns))
        assert [r.value for r in out.values] == [fn(3) for fn in fns]
        return {str(task["key"]).rsplit("-", 5)[0] for task in stream.data}

    assert keys(1, [_jobs.double, abs]) == {"double", "abs"}  # as client.submit names them
    assert keys(2, [_jobs.double, _jobs.double]) == {"double"}
    assert keys(2, [_jobs.double, abs]) == {"rxpool-chunk"}


@pytest.mark.parametrize("chunk_size", [1, 4])
def test_a_dask_job_may_return_what_only_cloudpickle_sends(
    dask_client: Any, chunk_size: int
) -> None:
    # A lambda comes back from raw client.submit; it does from a chunk too.
    with WorkerPool(2, backend=DaskBackend(dask_client, chunk_size=chunk_size)) as pool:
        out = collect(pool.run(Job(_jobs.adder, args=(i,), id=i) for i in range(6)))
    assert not out.errors
    assert sorted((r.id, r.value(10)) for r in out.values) == [(i, i + 10) for i in range(6)]


@pytest.mark.parametrize(
    "start_method", [m for m in multiprocessing.get_all_start_methods() if m != "fork"]
)
def test_a_worker_process_freezes_what_it_starts_with_and_collects_what_jobs_make(
    start_method: str,
) -> None:
    # The collector skips the objects the process started with (rxpool, the
    # main module's imports): thousands of them, never garbage. A cycle a job
    # drops is still collected, and the parent's own objects are not frozen.
    frozen_here = gc.get_freeze_count()
    backend = ProcessBackend(1, start_method=start_method)
    try:
        with WorkerPool(1, backend=backend) as pool:
            result = pool.run([Job(_jobs.frozen_and_collected)]).run()
    finally:
        backend.close()
    frozen, collected = result.value
    assert frozen > 1000
    assert collected
    assert gc.get_freeze_count() == frozen_here


@pytest.mark.parametrize(
    "start_method", [m for m in multiprocessing.get_all_start_methods() if m != "fork"]
)
def test_a_crashed_process_is_replaced_and_the_run_goes_on(start_method: str) -> None:
    backend = ProcessBackend(2, chunk_size=1, start_method=start_method)
    try:
        with WorkerPool(2, backend=backend) as pool:
            jobs = [Job(_jobs.double, args=(i,), id=i) for i in range(10)]
            jobs.insert(3, Job(_jobs.die, args=(7,), id="dies"))
            results = {r.id: r for r in collect(pool.run(jobs)).values}
            assert isinstance(results["dies"].error, rxpool.WorkerCrashed)
            assert "exit code 7" in str(results["dies"].error)
            assert "while starting" not in str(results["dies"].error)
            assert all(results[i].value == 2 * i for i in range(10))
            assert backend.crashes == 1
            retried = Job(_jobs.die, args=(1,), retry=Retry(attempts=2, backoff=0))
            (result,) = collect(pool.run([retried])).values
            assert result.attempt == 2 and isinstance(result.error, rxpool.WorkerCrashed)
    finally:
        backend.close()


def _ended(pid: int) -> bool:
    """The process is gone, or a zombie its parent has not reaped yet."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


@pytest.mark.parametrize(
    "start_method", [m for m in multiprocessing.get_all_start_methods() if m != "fork"]
)
def test_a_process_job_can_start_processes_of_its_own(start_method: str) -> None:
    # As in a ProcessPoolExecutor's workers (not daemonic), a job may use a
    # process pool itself, or call a library that does; a process-wide
    # backend the job leaves open ends with the worker process.
    backend = ProcessBackend(1, start_method=start_method)
    try:
        with WorkerPool(1, backend=backend) as pool:
            (result,) = collect(pool.run([Job(_jobs.nested, args=(4,))])).values
            (worker,) = collect(pool.run([Job(_jobs.where, args=(0,))])).values
    finally:
        backend.close()
    assert result.ok, result.error
    doubled, pairs, daemonic = result.value
    assert doubled == [0, 2, 4, 6] and [x for x, _ in pairs] == [0, 1, 2, 3]
    assert not daemonic
    inner = {pid for _, pid in pairs}
    assert worker.value[1] not in inner
    assert wait_until(lambda: all(_ended(pid) for pid in [*inner, worker.value[1]]), 10)


_EXITING_SCRIPT = """
import multiprocessing, sys, time

from rxpool import Job, WorkerPool
from rxpool.backends import ProcessBackend

import _jobs

if __name__ == "__main__":
    backend = ProcessBackend(2)
    backend.warm()  # both processes up; neither the backend nor the pool is closed
    pool = WorkerPool(2, backend=backend)
    if sys.argv[1] == "busy":  # one process runs a long job when the program ends
        started = sys.argv[2]
        pool.run([Job(_jobs.announce_then_sleep, args=(started, 600))]).subscribe()
        while not __import__("os").path.exists(started):
            time.sleep(0.01)
    print(*sorted(p.pid for p in multiprocessing.active_children() if p.name == "rxpool-process"))
"""


@pytest.mark.parametrize("state", ["idle", "busy"])
def test_a_program_that_ends_with_processes_open_exits_and_ends_them(
    tmp_path: Path, state: str
) -> None:
    # The processes are not daemonic, which multiprocessing would wait for at
    # exit: rxpool ends them first (a busy one is terminated, as a daemonic one was).
    (tmp_path / "main.py").write_text(_EXITING_SCRIPT)
    here = Path(_jobs.__file__).parent
    (tmp_path / "_jobs.py").write_text((here / "_jobs.py").read_text())
    done = subprocess.run(
        [sys.executable, str(tmp_path / "main.py"), state, str(tmp_path / "started")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    pids = [int(pid) for pid in done.stdout.split()]
    assert len(pids) == 2
    assert wait_until(lambda: all(_ended(pid) for pid in pids), 10)


def test_hard_cancel_kills_the_process_of_a_timed_out_job() -> None:
    backend = ProcessBackend(1, hard_cancel=True)
    try:
        with WorkerPool(1, backend=backend) as pool:
            jobs = [Job(_jobs.sleep_for, args=(30,), timeout=0.2, id="stuck")] + [
                Job(_jobs.double, args=(i,), id=i) for i in range(3)
            ]
            out = collect(pool.run(jobs, ordered=True), timeout=15)
        results = {r.id: r for r in out.values}
        assert isinstance(results["stuck"].error, JobTimeout)
        assert [results[i].value for i in range(3)] == [0, 2, 4]  # not 30 s later
        assert backend.crashes == 0  # a kill we asked for is not a crash
    finally:
        backend.close()


def test_a_runs_chunk_size_sends_that_many_jobs_at_once(processes: ProcessBackend) -> None:
    def blocks(pairs: list[tuple[int, int]], size: int) -> list[set[int]]:
        assert [x for x, _ in pairs] == list(range(len(pairs)))
        return [{pid for _, pid in pairs[i : i + size]} for i in range(0, len(pairs), size)]

    with WorkerPool(4, backend=processes) as pool:
        jobs = [Job(_jobs.where, args=(i,)) for i in range(200)]
        results = collect(pool.run(jobs, ordered=True, chunk_size=40)).values
        assert all(len(pids) == 1 for pids in blocks([r.value for r in results], 40))
        mapped = list(pool.map(_jobs.where, range(90), chunk_size=30))
        assert all(len(pids) == 1 for pids in blocks(mapped, 30))
    # A pushed source: a chunk holds up to 25 of the items that have arrived.
    operator = rops.map_concurrent(_jobs.where, 2, backend=processes, chunk_size=25)
    values = collect(reactivex.from_iterable(range(100)).pipe(operator)).values
    assert sorted(x for x, _ in values) == list(range(100))


class _TenMillisecondLanes:
    """A backend of one's own with lanes: runs calls inline, reports 10 ms each, records chunks."""

    chunk_size = None

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def run_chunk(self, calls: Any, token: CancelToken) -> list[Any]:
        self.sizes.append(len(calls))
        return [(True, fn(*args, **kwargs), 0.01) for fn, args, kwargs in calls]

    def open_lane(self, token: CancelToken) -> Any:
        backend, sent = self, []

        class _Lane:
            def send(self, calls: Any) -> None:
                sent.append(calls)

            def receive(self) -> list[Any]:
                return backend.run_chunk(sent.pop(0), token)

            def close(self) -> None:
                pass

        return _Lane()

    def close(self) -> None:
        pass


def test_a_run_of_known_length_sends_big_chunks_then_smaller_ones_at_its_end() -> None:
    # With the length known (a list, or total=), chunks of 10 ms jobs grow up to
    # 0.2 s of work and shrink as the end nears, so no worker is left with a big
    # chunk at the end; with the length unknown, a chunk stays within 50 ms.
    known, hinted, unknown, told = (_TenMillisecondLanes() for _ in range(4))
    for backend, source, total in [
        (known, lambda: [Job(abs, args=(-i,)) for i in range(200)], None),
        (hinted, lambda: iter([Job(abs, args=(-i,)) for i in range(200)]), None),  # no len()
        (unknown, lambda: (Job(abs, args=(-i,)) for i in range(200)), None),
        (told, lambda: (Job(abs, args=(-i,)) for i in range(200)), 200),
    ]:
        with WorkerPool(1, backend=backend) as pool:
            results = collect(pool.run(source(), ordered=True, total=total)).values
        assert [r.value for r in results] == list(range(200))
        assert sum(backend.sizes) == 200
    # Each of these goes e.g. 1, 1, 8, 20, ..., 20, 15, 8, 4, 2, 1.
    for sizes in (known.sizes, hinted.sizes, told.sizes):
        assert max(sizes) == 20  # 0.2 s of 10 ms jobs
        top = sizes.index(20)
        assert sizes[:top] == sorted(sizes[:top])  # growing from one job
        tail = sizes[len(sizes) - 1 - sizes[::-1].index(20) :]
        assert tail == sorted(tail, reverse=True) and tail[-1] == 1  # then shrinking to one
        assert len(tail) >= 4
        assert len(sizes) < 30
    assert max(unknown.sizes) <= 5  # 50 ms of 10 ms jobs


def test_chunk_size_is_refused_where_jobs_are_not_sent_in_chunks() -> None:
    with WorkerPool(2) as pool:
        with pytest.raises(ValueError, match="chunk_size applies to the process and Dask"):
            pool.run([Job(abs, args=(1,))], chunk_size=10)
        with pytest.raises(ValueError, match="chunk_size applies"):
            pool.map(abs, [1], chunk_size=10)
    with pytest.raises(ValueError, match="chunk_size applies"):
        rops.map_concurrent(abs, 2, chunk_size=10)
    with pytest.raises(ValueError, match="chunk_size applies"):
        rops.run_jobs(2, backend="asyncio", chunk_size=10)
    with pytest.raises(ValueError, match="chunk_size"):
        rops.map_concurrent(abs, 2, backend="process", chunk_size=0)
    with pytest.raises(TypeError, match="chunk_size"):
        rops.map_concurrent(abs, 2, backend="process", chunk_size="10")  # type: ignore[arg-type]


def test_chunks_keep_per_job_results() -> None:
    backend = ProcessBackend(2, chunk_size=50)
    try:
        with WorkerPool(2, backend=backend) as pool:
            failing = frozenset({17, 333})
            jobs = (Job(_jobs.fail_on, args=(i, failing), id=i) for i in range(1000))
            results = collect(pool.run(jobs, ordered=True)).values
        assert [r.id for r in results] == list(range(1000))
        assert {r.id for r in results if not r.ok} == failing
        assert all(r.value == r.id for r in results if r.ok)
    finally:
        backend.close()


def _dispose_once_the_first_job_runs(pool: WorkerPool, tmp_path: Path, seconds: float) -> Recorder:
    """Run a job that sleeps ``seconds``, then one that creates ``tmp_path / "ran"``;
    dispose as soon as the first has started. Returns the run's recorder."""
    started, ran = tmp_path / "started", tmp_path / "ran"
    recorder = Recorder()
    jobs = [
        Job(_jobs.announce_then_sleep, args=(str(started), seconds)),
        Job(_jobs.touch, args=(str(ran),)),
    ]
    subscription = pool.run(jobs).subscribe(recorder.on_next)
    assert wait_until(started.exists, timeout=20)
    subscription.dispose()
    return recorder


@pytest.mark.parametrize("hard_cancel", [False, True])
def test_a_chunk_queued_at_a_process_never_starts_after_dispose(
    tmp_path: Path, hard_cancel: bool
) -> None:
    # One process, one job per chunk: while the first job runs, the slot has
    # already sent the next chunk to the process; dispose must stop it there
    # (and, with hard_cancel, not send it again to the process that replaces
    # the one killed).
    backend = ProcessBackend(1, chunk_size=1, hard_cancel=hard_cancel)
    ran = tmp_path / "ran"
    try:
        with WorkerPool(1, backend=backend) as pool:
            recorder = _dispose_once_the_first_job_runs(pool, tmp_path, 0.5)
            # The process runs its chunks in order: once a later job is done,
            # the queued one has been skipped or has run.
            (after,) = collect(pool.run([Job(_jobs.double, args=(2,))])).values
            assert after.value == 4
        assert not ran.exists(), "a job queued at the process ran after dispose"
        assert recorder.values == []
        assert backend.crashes == 0  # a kill we asked for is not a crash
    finally:
        backend.close()


def test_a_crash_fails_only_the_running_chunk_not_the_one_queued_behind() -> None:
    backend = ProcessBackend(1, chunk_size=1)
    try:
        with WorkerPool(1, backend=backend) as pool:
            jobs = [Job(_jobs.die, args=(3,), id="dies")] + [
                Job(_jobs.double, args=(i,), id=i) for i in range(5)
            ]
            results = {r.id: r for r in collect(pool.run(jobs)).values}
        assert isinstance(results["dies"].error, rxpool.WorkerCrashed)
        assert [results[i].value for i in range(5)] == [0, 2, 4, 6, 8]
        assert backend.crashes == 1
    finally:
        backend.close()


@pytest.mark.parametrize("spilling", [True, False])
def test_a_crash_in_a_chunk_fails_the_job_it_died_under_and_runs_the_rest_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spilling: bool
) -> None:
    # A chunk of five: the first job has run when the second kills the
    # process; the last three never started and run on a new process. Every
    # job runs once (the tally says so). The first job's result reaches the
    # parent through the worker's spill file if it was written there, else
    # it is lost with the process.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where spill files go
    runs = tmp_path / "runs"
    backend = ProcessBackend(1, chunk_size=5)
    backend._processes.spilling = spilling
    try:
        with WorkerPool(1, backend=backend) as pool:
            jobs = [Job(_jobs.tally, args=(str(runs), i), id=i) for i in range(4)]
            jobs.insert(1, Job(_jobs.die, args=(3,), id="dies"))
            out = collect(pool.run(jobs, ordered=True))
    finally:
        backend.close()
    assert not out.errors and [r.id for r in out.values] == [0, "dies", 1, 2, 3]
    results = {r.id: r for r in out.values}
    assert [results[i].value for i in (1, 2, 3)] == [2, 4, 6]
    assert sorted(runs.read_text().split()) == ["0", "1", "2", "3"]
    first, died = results[0], results["dies"].error
    if spilling:
        assert first.value == 0
    else:
        assert isinstance(first.error, rxpool.WorkerCrashed), first
        assert "result was lost" in str(first.error)
    assert isinstance(died, rxpool.WorkerCrashed) and "while running this job" in str(died)
    assert backend.crashes == 1
    assert not list(tmp_path.glob("rxpool-outcomes-*"))  # no spill file is left behind


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    kinds=st.lists(st.sampled_from(["tally", "tally", "tally", "die"]), min_size=1, max_size=12),
    chunk_size=st.integers(1, 5),
    processes=st.integers(1, 2),
    spilling=st.booleans(),
)
def test_crashes_in_chunks_give_one_result_a_job_and_run_each_job_at_most_once(
    tmp_path: Path, kinds: list[str], chunk_size: int, processes: int, spilling: bool
) -> None:
    runs = tmp_path / f"runs-{os.urandom(4).hex()}"
    runs.touch()
    jobs = [
        Job(_jobs.die, args=(3,), id=i)
        if kind == "die"
        else Job(_jobs.tally, args=(str(runs), i), id=i)
        for i, kind in enumerate(kinds)
    ]
    backend = ProcessBackend(processes, chunk_size=chunk_size)
    backend._processes.spilling = spilling
    try:
        with WorkerPool(processes, backend=backend) as pool:
            out = collect(pool.run(jobs))
    finally:
        backend.close()
    assert not out.errors
    assert sorted(r.id for r in out.values) == list(range(len(kinds)))
    ran = [int(x) for x in runs.read_text().split()]
    assert sorted(ran) == sorted(set(ran))  # no job ran twice
    dies = {i for i, kind in enumerate(kinds) if kind == "die"}
    for result in out.values:
        if result.id in dies:
            assert isinstance(result.error, rxpool.WorkerCrashed), result
        elif result.ok:
            assert result.value == result.id * 2 and result.id in ran
        else:  # it ran, and a job after it in its chunk killed the process
            assert not spilling, result  # spilled after every call, none is lost
            assert isinstance(result.error, rxpool.WorkerCrashed), result
            assert "result was lost" in str(result.error) and result.id in ran
            assert dies & set(range(result.id + 1, result.id + chunk_size)), result
    assert backend.crashes == len(dies)


def test_a_spill_file_gives_the_outcomes_of_its_chunk_up_to_a_record_cut_short(
    tmp_path: Path,
) -> None:
    from rxpool._remote import SPILL_HEADER, SPILL_MAX, _Spill, read_spill

    path = tmp_path / "spill"
    path.write_bytes(bytes(SPILL_MAX))
    spill = _Spill.open(str(path))
    assert spill is not None and not path.exists()  # mapped, and unlinked
    spill.start(1)
    spill.write((True, 1, 0.0))  # a chunk before: its records are written over
    spill.start(2)
    spill.write((True, 3, 0.0))
    spill.write((False, "e", 0.1))
    spill.write((True, _jobs.Unloadable(), 0.0))  # fails to load here
    spill.write((True, 6, 0.0))
    data = bytes(spill.map)
    # The process died writing its next record: a pickle without its header.
    data = data[: spill.offset + SPILL_HEADER.size] + b"\x80junk" + data[spill.offset + 21 :]
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        saved = read_spill(fd, 2)
        assert saved[:2] == [(True, 3, 0.0), (False, "e", 0.1)]
        # The call whose record cannot be loaded has a NotSendable, and the
        # records after it are still read.
        ok, error, _ = saved[2]
        assert not ok and isinstance(error, rxpool.NotSendable)
        assert "cannot be rebuilt here" in str(error)
        assert saved[3:] == [(True, 6, 0.0)]
        assert read_spill(fd, 1) == []  # written over by chunk 2
        assert read_spill(fd, 3) == []
    finally:
        os.close(fd)


def test_a_crash_in_an_automatic_chunk_loses_none_of_its_finished_results(
    tmp_path: Path,
) -> None:
    # Many quick jobs then one that kills its process, with chunks sized by
    # the backend: every job that ran has its value, the one it died under a
    # WorkerCrashed, and each job ran once.
    runs = tmp_path / "runs"
    runs.touch()
    backend = ProcessBackend(1)
    try:
        backend.warm()
        with WorkerPool(1, backend=backend) as pool:
            list(pool.map(_jobs.double, range(2_000)))  # chunks grow from the round trips
            jobs = [Job(_jobs.tally, args=(str(runs), i), id=i) for i in range(3_000)]
            jobs[2_500] = Job(_jobs.die, args=(3,), id=2_500)
            results = {r.id: r for r in collect(pool.run(jobs)).values}
    finally:
        backend.close()
    assert sorted(results) == list(range(3_000))
    assert isinstance(results.pop(2_500).error, rxpool.WorkerCrashed)
    lost = [r for r in results.values() if not r.ok]
    assert not lost, lost[:3]
    assert all(r.value == r.id * 2 for r in results.values())
    ran = [int(x) for x in runs.read_text().split()]
    assert sorted(ran) == sorted(results)  # each ran once
    assert backend.crashes == 1


def test_a_spilled_result_this_process_cannot_load_fails_alone_when_its_process_dies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first job's result reaches the parent only through the spill file
    # (its process dies under the second job) and cannot be loaded here: it
    # fails with a NotSendable saying why, not as a job lost with the process.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    backend = ProcessBackend(1, chunk_size=4)
    try:
        with WorkerPool(1, backend=backend) as pool:
            jobs = [
                Job(_jobs.unloadable_on, args=(0, 0), id="unloadable"),
                Job(_jobs.die, args=(3,), id="dies"),
                Job(_jobs.double, args=(5,), id="after"),
            ]
            out = collect(pool.run(jobs, ordered=True))
    finally:
        backend.close()
    assert not out.errors and [r.id for r in out.values] == ["unloadable", "dies", "after"]
    unloadable, died, after = out.values
    assert isinstance(unloadable.error, rxpool.NotSendable), unloadable
    assert "cannot be rebuilt here" in str(unloadable.error)
    assert isinstance(died.error, rxpool.WorkerCrashed)
    assert after.value == 10
    assert backend.crashes == 1


def test_a_large_result_is_not_spilled_nor_what_follows_it_in_its_chunk() -> None:
    from rxpool._remote import SPILL_MAX

    backend = ProcessBackend(1, chunk_size=4)  # every call is spilled, but for the large result
    try:
        with WorkerPool(1, backend=backend) as pool:
            jobs = [
                Job(_jobs.double, args=(1,), id="small"),
                Job(_jobs.blob, args=(SPILL_MAX + 1,), id="large"),
                Job(_jobs.double, args=(2,), id="after"),
                Job(_jobs.die, args=(3,), id="dies"),
            ]
            results = {r.id: r for r in collect(pool.run(jobs)).values}
            (big,) = collect(pool.run([Job(_jobs.blob, args=(SPILL_MAX + 1,))])).values
    finally:
        backend.close()
    assert results["small"].value == 2  # spilled before the large one
    for lost in ("large", "after"):
        assert "lost with the process" in str(results[lost].error), results[lost]
    assert "while running this job" in str(results["dies"].error)
    assert big.value == b"x" * (SPILL_MAX + 1)  # without a crash it comes back whole


def test_processes_run_without_a_temporary_directory_to_spill_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(*args: object, **kwargs: object) -> tuple[int, str]:
        raise PermissionError("no temporary directory")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    backend = ProcessBackend(1, chunk_size=3)  # it would spill every call, if it could
    try:
        with WorkerPool(1, backend=backend) as pool:
            jobs = [Job(_jobs.double, args=(i,), id=i) for i in range(2)]
            jobs.append(Job(_jobs.die, args=(3,), id="dies"))
            results = {r.id: r for r in collect(pool.run(jobs)).values}
            assert sorted(pool.map(_jobs.double, range(4))) == [0, 2, 4, 6]
    finally:
        backend.close()
    assert all(isinstance(r.error, rxpool.WorkerCrashed) for r in results.values())
    assert all("lost with the process" in str(results[i].error) for i in (0, 1))


def test_the_jobs_of_a_crashed_chunk_each_get_a_worker_crashed_of_their_own() -> None:
    # One exception object per result (a note on one stays there), and none
    # carries the traceback of rxpool's frames, which would keep the run alive.
    backend = ProcessBackend(1, chunk_size=4)
    backend._processes.spilling = False  # the first three results are lost, not spilled
    try:
        with WorkerPool(1, backend=backend) as pool:
            jobs = [Job(_jobs.double, args=(i,), id=i) for i in range(3)]
            jobs.append(Job(_jobs.die, args=(3,), id="dies"))
            out = collect(pool.run(jobs))
    finally:
        backend.close()
    assert not out.errors and len(out.values) == 4
    errors = [r.error for r in out.values]
    assert all(isinstance(e, rxpool.WorkerCrashed) for e in errors)
    assert len({id(e) for e in errors}) == 4
    assert len({str(e) for e in errors}) == 2  # three lost results, one crash
    assert all(e is not None and e.__traceback__ is None for e in errors)


def test_runs_sharing_processes_take_turns() -> None:
    # A long run keeps its process busy with chunks queued back to back; a run
    # that starts meanwhile gets the process at the next chunk, not at the end.
    backend = ProcessBackend(1, chunk_size=1)
    try:
        with WorkerPool(1, backend=backend) as long_pool, WorkerPool(1, backend=backend) as other:
            first = threading.Event()
            long_run = Recorder()
            jobs = (Job(_jobs.sleep_for, args=(0.01,)) for _ in range(300))
            long_pool.run(jobs).subscribe(
                lambda r: (long_run.on_next(r), first.set()),
                long_run.on_error,
                long_run.on_completed,
            )
            assert first.wait(20)
            (result,) = collect(other.run([Job(_jobs.double, args=(21,))])).values
            assert result.value == 42
            assert not long_run.ended.is_set(), "the second run waited for the first to end"
            assert long_run.ended.wait(30)
        assert len(long_run.values) == 300
    finally:
        backend.close()


def test_closing_the_backend_under_a_run_fails_the_rest_with_results() -> None:
    backend = ProcessBackend(1, chunk_size=1)
    backend.warm()
    with WorkerPool(1, backend=backend) as pool:
        recorder = Recorder()
        closed = threading.Event()

        def on_next(result: Result[Any]) -> None:
            recorder.on_next(result)
            if not closed.is_set():
                closed.set()
                backend.close()

        jobs = [Job(_jobs.sleep_for, args=(0.05,), id=i) for i in range(20)]
        pool.run(jobs).subscribe(on_next, recorder.on_error, recorder.on_completed)
        assert recorder.ended.wait(30)
    results = recorder.values
    assert sorted(r.id for r in results) == list(range(20))  # nothing lost
    assert results[0].ok
    assert any(isinstance(r.error, Cancelled) for r in results)
    assert all(r.ok or isinstance(r.error, Cancelled) for r in results)


@pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="needs the fork start method"
)
def test_close_ends_idle_processes_even_while_a_forked_process_holds_their_pipes() -> None:
    # A process forked from the program (a ProcessPoolExecutor's, by default on
    # Linux before 3.14) holds a copy of the program's end of every pipe to a
    # worker, so closing that end here is no end of file for the worker: it
    # must still be told to exit, not killed after close() gave up waiting.
    from concurrent.futures import ProcessPoolExecutor

    def ours() -> set[Any]:
        return {p for p in multiprocessing.active_children() if p.name == "rxpool-process"}

    before = ours()
    backend = ProcessBackend(2)
    backend.warm()
    started = ours() - before
    assert len(started) == 2
    forked = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"))
    try:
        assert forked.submit(_jobs.double, 4).result(timeout=30) == 8  # its process is up
        backend.close()
        assert [p.exitcode for p in started] == [0, 0]  # joined by close(), not killed
    finally:
        backend.close()
        forked.shutdown()


_KILLED_PROGRAM = """
import multiprocessing, os, signal, sys
from concurrent.futures import ProcessPoolExecutor

from rxpool.backends import ProcessBackend

if __name__ == "__main__":
    backend = ProcessBackend(2, start_method=sys.argv[1])
    backend.warm()
    forked = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"))
    forked.submit(abs, -1).result()
    children = multiprocessing.active_children()
    print(*(p.pid for p in children if p.name == "rxpool-process"), flush=True)
    print(*(p.pid for p in children if p.name != "rxpool-process"), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="no pidfds here")
@pytest.mark.parametrize(
    "start_method", [m for m in multiprocessing.get_all_start_methods() if m != "fork"]
)
def test_workers_exit_when_their_program_is_killed_while_a_forked_process_holds_their_pipes(
    tmp_path: Path, start_method: str
) -> None:
    # SIGKILL leaves no time to tell anyone, and the worker sees no end of
    # its pipe while a process the program forked holds a copy of it: it
    # watches the program itself.
    (tmp_path / "killed.py").write_text(_KILLED_PROGRAM)
    # Output to files: the program's children hold pipes open past its end.
    with (tmp_path / "out").open("w") as out, (tmp_path / "err").open("w") as err:
        program = subprocess.Popen(
            [sys.executable, "killed.py", start_method], stdout=out, stderr=err, cwd=tmp_path
        )
        assert program.wait(timeout=120) == -signal.SIGKILL, (tmp_path / "err").read_text()
    lines = (tmp_path / "out").read_text().splitlines()
    workers, forked = (list(map(int, line.split())) for line in lines)
    try:
        assert len(workers) == 2 and forked
        assert wait_until(lambda: all(_ended(pid) for pid in workers), timeout=30)
    finally:  # the program's other children (not rxpool's) live on: end them
        for pid in forked:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_pool_owned_processes_stop_with_the_pool() -> None:
    import multiprocessing

    before = len(multiprocessing.active_children())
    with WorkerPool(2, backend="process") as pool:
        assert sorted(pool.map(_jobs.double, range(5))) == [0, 2, 4, 6, 8]
    assert wait_until(lambda: len(multiprocessing.active_children()) <= before)


@pytest.mark.parametrize("chunk_size", [1, 5])
def test_an_unpicklable_dask_job_fails_alone_with_a_clear_result(
    dask_client: Any, chunk_size: int
) -> None:
    backend = DaskBackend(dask_client, chunk_size=chunk_size)
    with WorkerPool(2, backend=backend) as pool:
        jobs = [Job(_jobs.double, args=(i,), id=i) for i in range(10)]
        jobs.insert(3, Job(_jobs.double, args=(threading.Lock(),), id="lock"))
        out = collect(pool.run(jobs))
    assert not out.errors
    results = {r.id: r for r in out.values}
    assert len(out.values) == 11
    assert isinstance(results["lock"].error, rxpool.NotSendable)
    assert "cannot be pickled for a Dask worker" in str(results["lock"].error)
    assert all(results[i].value == 2 * i for i in range(10))  # its chunk-mates still ran


def test_closing_the_dask_client_under_a_run_gives_every_job_a_result(
    dask_client: Any,
) -> None:
    from distributed import Client

    client = Client(dask_client.scheduler.address)  # a client of the test's own to close
    recorder = Recorder()

    def on_next(result: Result[Any]) -> None:
        recorder.on_next(result)
        if len(recorder.values) == 1:
            client.close()

    try:
        with WorkerPool(2, backend=DaskBackend(client, chunk_size=1)) as pool:
            jobs = [Job(_jobs.sleep_for, args=(0.05,), id=i) for i in range(20)]
            pool.run(jobs).subscribe(on_next, recorder.on_error, recorder.on_completed)
            assert recorder.ended.wait(30)
    finally:
        client.close()
    _assert_each_job_has_a_result_saying_the_client_closed(recorder, 20)


def _assert_each_job_has_a_result_saying_the_client_closed(recorder: Recorder, jobs: int) -> None:
    """The first job ran; each job after the client closed has a result saying so."""
    assert not recorder.errors
    results = recorder.values
    assert sorted(r.id for r in results) == list(range(jobs))  # nothing lost
    assert results[0].ok
    failed = [r for r in results if not r.ok]
    assert failed, "every job ran on a closed client"
    for r in failed:  # each says why, not "not cancelled"
        assert "not cancelled" not in str(r.error)
        assert "closed" in str(r.error).lower(), r.error


def test_a_dask_run_whose_cluster_closes_under_it_gives_every_job_a_result() -> None:
    """The client stays open, and closes itself once its scheduler is gone.

    Dask then leaves some futures pending for ever, whose done-callbacks never
    come (in about half the trials, with four tasks on the cluster): the slots
    waiting for them must not wait for ever.
    """
    from distributed import Client

    for _ in range(3):
        cluster = _loopback_cluster(1, 4)
        client = Client(cluster)
        recorder = Recorder()
        closer = threading.Thread(target=cluster.close)

        def on_next(
            result: Result[Any], recorder: Recorder = recorder, closer: threading.Thread = closer
        ) -> None:
            recorder.on_next(result)
            if len(recorder.values) == 1:
                closer.start()  # not on the slot's thread: close() waits for Dask's threads

        pool = WorkerPool(4, backend=DaskBackend(client, chunk_size=1))
        try:
            jobs = [Job(_jobs.sleep_for, args=(0.05 if i == 0 else 0.5,), id=i) for i in range(12)]
            pool.run(jobs).subscribe(on_next, recorder.on_error, recorder.on_completed)
            assert recorder.ended.wait(30), "a slot waits for ever for a task of a closed client"
        finally:
            pool.close(wait=recorder.ended.is_set())  # a stuck slot would hang close()
            closer.join(30)
            client.close()
        _assert_each_job_has_a_result_saying_the_client_closed(recorder, 12)


def test_each_job_of_a_dask_chunk_that_failed_whole_gets_its_own_error(
    dask_client: Any,
) -> None:
    # Chunks of five submitted through a closed client: the submit fails for
    # the whole chunk. Every job says why, each with an exception object of
    # its own, so a note or a raise on one result leaves the others alone.
    from distributed import Client

    client = Client(dask_client.scheduler.address)
    client.close()
    with WorkerPool(2, backend=DaskBackend(client, chunk_size=5)) as pool:
        out = collect(pool.run(Job(_jobs.double, args=(i,), id=i) for i in range(10)))
    assert not out.errors
    errors = [r.error for r in sorted(out.values, key=lambda r: r.id)]
    assert len(errors) == 10 and all(e is not None for e in errors)
    assert len({id(e) for e in errors}) == 10
    assert len({(type(e), str(e)) for e in errors}) == 1
    assert errors[0] is not None and errors[1] is not None
    errors[0].add_note("seen by the first consumer")
    assert "seen by the first consumer" not in getattr(errors[1], "__notes__", [])


def test_copy_of_an_error_keeps_what_it_says_and_shares_what_it_cannot_rebuild() -> None:
    import distributed  # noqa: F401  (it has tblib register exception copiers with copyreg)

    from rxpool._exceptions import copy_of

    class Coded(Exception):
        def __init__(self, message: str, *, code: int) -> None:
            super().__init__(message)
            self.code = code

    try:
        raise ValueError("bad input", 3) from KeyError("cause")
    except ValueError as caught:
        error = caught
    error.add_note("a note")
    fresh = copy_of(error)
    assert fresh is not error and type(fresh) is ValueError
    assert fresh.args == ("bad input", 3)
    assert fresh.__notes__ == ["a note"] and fresh.__notes__ is not error.__notes__
    assert isinstance(fresh.__cause__, KeyError)
    assert fresh.__traceback__ is error.__traceback__
    coded = Coded("no", code=7)  # cannot be rebuilt from its args: shared
    assert copy_of(coded) is coded


def test_a_chunk_held_behind_a_dask_task_never_starts_after_dispose(
    dask_client: Any, tmp_path: Path
) -> None:
    # One slot, one job per task: while the first task runs, the slot's next
    # chunk waits in the client for the first task's done-callback to submit
    # it; dispose must drop it there.
    ran = tmp_path / "ran"
    before = set(dask_client.futures)
    with WorkerPool(1, backend=DaskBackend(dask_client, chunk_size=1)) as pool:
        recorder = _dispose_once_the_first_job_runs(pool, tmp_path, 0.3)

        def executing() -> int:
            counts = dask_client.run(lambda dask_worker: dask_worker.state.executing_count)
            return sum(counts.values())

        assert wait_until(lambda: executing() == 0, timeout=20)  # the first task is over
        # Nothing of the run is left on the cluster (keys left by earlier tests aside).
        assert wait_until(lambda: set(dask_client.futures) <= before, timeout=20)
    assert not ran.exists(), "a chunk held for the cluster ran after dispose"
    assert recorder.values == []


# -- Dask with worker processes ------------------------------------------------------------


def test_dask_worker_processes_lost_worker_and_dispose() -> None:
    import dask
    from distributed import Client, LocalCluster

    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 0}),
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
        ) as cluster,
        Client(cluster) as client,
    ):
        backend = DaskBackend(client, chunk_size=1)
        with WorkerPool(2, backend=backend) as pool:
            jobs = [Job(_jobs.double, args=(i,), id=i) for i in range(6)]
            jobs.insert(2, Job(_jobs.die, args=(3,), id="dies"))
            results = {r.id: r for r in collect(pool.run(jobs), timeout=60).values}
            assert isinstance(results["dies"].error, rxpool.WorkerCrashed)
            assert all(results[i].value == 2 * i for i in range(6))

        # A chunk that kills its worker runs again call by call: only the
        # call that kills its worker fails, as on the process backend. One
        # slot: with allowed-failures at 0, Dask gives up at once on any task
        # queued on the worker that died, and a single task from another
        # slot there would fail with it.
        with WorkerPool(1, backend=DaskBackend(client, chunk_size=4)) as pool:
            results = {r.id: r for r in collect(pool.run(jobs), timeout=60).values}
            assert isinstance(results["dies"].error, rxpool.WorkerCrashed)
            assert all(results[i].value == 2 * i for i in range(6))

        with WorkerPool(2, backend=backend) as pool:
            got = threading.Event()
            long = (Job(_jobs.sleep_for, args=(0.2,)) for _ in range(100))
            subscription = pool.run(long).subscribe(lambda _: got.set())
            assert got.wait(30)
            subscription.dispose()
            # Queued jobs never reach the cluster; pending futures are cancelled.
            assert wait_until(lambda: not client.futures, timeout=20)


# -- the subscriber is called outside the run's locks (#23, #28) -------------------------------


def _parked_subscriber() -> tuple[Recorder, threading.Event, threading.Event, Any]:
    """An observer whose first on_next parks until ``release``; ``inside`` is set then."""
    recorder = Recorder()
    inside, release = threading.Event(), threading.Event()

    def on_next(value: Any) -> None:
        recorder.on_next(value)
        inside.set()
        assert release.wait(10), "the test never released on_next"

    return recorder, inside, release, on_next


def _returns_while_parked(action: Any, release: threading.Event) -> bool:
    """Run ``action`` on a thread; True if it returns while on_next is still parked."""
    done = threading.Event()

    def call() -> None:
        action()
        done.set()

    caller = threading.Thread(target=call)
    caller.start()
    try:
        return done.wait(5) and not release.is_set()
    finally:
        release.set()
        caller.join(10)


def test_dispose_returns_while_on_next_runs_and_nothing_comes_after(backend: Any) -> None:
    recorder, inside, release, on_next = _parked_subscriber()
    with WorkerPool(2, backend=backend) as pool:
        jobs = (Job(_jobs.double, args=(i,), id=i) for i in range(200))
        subscription = pool.run(jobs).subscribe(on_next, recorder.on_error, recorder.on_completed)
        assert inside.wait(10)
        assert _returns_while_parked(subscription.dispose, release)
        count = len(recorder.values)
    assert len(recorder.values) == count == 1  # the parked call finished; nothing after it
    assert not recorder.ended.is_set()


def test_cancel_returns_while_on_next_runs_and_results_come_on_a_pool_thread(
    backend: Any,
) -> None:
    recorder, inside, release, on_next = _parked_subscriber()
    callers: list[int] = []
    threads: set[int] = set()

    def on_next_where(value: Any) -> None:
        threads.add(threading.get_ident())
        on_next(value)

    token = CancelToken()
    with WorkerPool(2, backend=backend) as pool:
        jobs = [Job(_jobs.double, args=(0,), id=0)] + [
            Job(_jobs.sleep_for, args=(0.01,), id=i) for i in range(1, 300)
        ]
        # A hot source: all 300 are taken (buffered) before the cancel, as in #28's report.
        pool.run(reactivex.from_iterable(jobs), token=token).subscribe(
            on_next_where, recorder.on_error, recorder.on_completed
        )
        assert inside.wait(10)

        def cancel() -> None:
            callers.append(threading.get_ident())
            token.cancel()

        assert _returns_while_parked(cancel, release)
        assert recorder.ended.wait(30)
    assert not recorder.errors
    ids = [r.id for r in recorder.values]
    assert len(ids) == len(set(ids)) == 300  # every job one result, cancelled ones too
    assert any(isinstance(r.error, Cancelled) for r in recorder.values)
    assert callers[0] not in threads  # the cancelling thread never ran on_next


def test_cancel_by_a_caller_holding_the_lock_on_next_takes_does_not_deadlock(
    backend: Any,
) -> None:
    lock = threading.Lock()
    recorder = Recorder()
    first = threading.Event()

    def on_next(value: Any) -> None:
        first.set()
        with lock:
            recorder.on_next(value)

    token = CancelToken()
    with WorkerPool(2, backend=backend) as pool:
        jobs = (Job(_jobs.sleep_for, args=(0.005,), id=i) for i in range(2000))
        pool.run(jobs, token=token, buffer_size=64).subscribe(
            on_next, recorder.on_error, recorder.on_completed
        )
        assert first.wait(10)
        with lock:
            token.cancel()  # before: every pending job's on_next ran right here, and waited
        assert recorder.ended.wait(30)
    assert not recorder.errors
    ids = [r.id for r in recorder.values]
    assert len(ids) == len(set(ids))
