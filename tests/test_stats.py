"""WorkerPool.statistics, its stream, progress bars and the Prometheus exporter."""

from __future__ import annotations

import io
import logging
import threading
import time
import urllib.request
from typing import Any

import pytest
import reactivex
from reactivex import operators as ops

from rxpool import CancelToken, Job, Retry, WorkerPool
from rxpool import operators as rops
from rxpool._stats import ProgressBar, Tracker

from ._helpers import Gate, wait_until


def fail(x: int) -> int:
    raise ValueError(x)


def test_statistics_count_every_outcome() -> None:
    attempts = {"n": 0}

    def flaky() -> str:
        attempts["n"] += 1
        if attempts["n"] < 2:
            raise ConnectionError("again")
        return "ok"

    with WorkerPool(4) as pool:
        assert pool.statistics().submitted == 0
        jobs = (
            [Job(abs, args=(-i,)) for i in range(50)]
            + [Job(fail, args=(i,)) for i in range(5)]
            + [Job(time.sleep, args=(1,), timeout=0.05)]
            + [Job(flaky, retry=Retry(attempts=2, backoff=0))]
        )
        pool.run(jobs).pipe(ops.to_list()).run()
        stats = pool.statistics()
    assert stats.submitted == 57
    assert stats.succeeded == 51  # 50 + the retried one
    assert stats.failed == 5
    assert stats.timed_out == 1
    assert stats.retried == 1
    assert stats.cancelled == stats.dropped == 0
    assert stats.running == 0 and stats.queued == 0
    assert stats.completed == 57
    assert 0 <= stats.latency_p50 <= stats.latency_p95 <= stats.latency_p99
    assert stats.latency_p50 < 0.01  # most jobs were trivial
    assert stats.jobs_per_second > 0 and stats.elapsed > 0


def test_statistics_while_running_and_after_cancel(gate: Gate) -> None:
    token = CancelToken()
    with WorkerPool(3) as pool:
        done = threading.Event()
        pool.run((Job(gate, args=(i,)) for i in range(100)), token=token).subscribe(
            on_completed=done.set
        )
        assert gate.wait_running(3)
        live = pool.statistics()
        assert live.running == 3 and live.submitted == 3 and live.completed == 0
        token.cancel()
        assert done.wait(5)
        gate.open()
        after = pool.statistics()
    assert after.cancelled == 3 and after.submitted == 3


def _parts(s: Any) -> int:
    return s.queued + s.running + s.held + s.completed


def test_statistics_count_the_jobs_an_observable_pushed_into_the_buffer(gate: Gate) -> None:
    # Pushed jobs wait in the buffer: submitted and queued, not running; only
    # the jobs on the 3 workers run. A full buffer drops jobs: submitted too.
    with WorkerPool(3) as pool:
        done = threading.Event()
        source = reactivex.from_iterable([Job(gate, args=(i,)) for i in range(40)])
        pool.run(source).subscribe(on_completed=done.set)
        assert gate.wait_running(3)
        live = pool.statistics()
        assert (live.submitted, live.queued, live.running, live.held) == (40, 37, 3, 0)
        assert live.completed == 0
        gate.open()
        assert done.wait(10)
        after = pool.statistics()
        assert after.submitted == after.completed == after.succeeded == 40
        assert after.queued == after.running == after.held == 0
        dropping = reactivex.from_iterable([Job(time.sleep, args=(0.01,)) for _ in range(30)])
        results = pool.run(dropping, buffer_size=2, overflow="drop_newest").pipe(ops.to_list())
        assert len(results.run()) == 30
        final = pool.statistics()
    assert final.dropped > 0
    assert final.submitted == final.completed == 70


def test_statistics_show_finished_jobs_held_for_order_as_held_not_running() -> None:
    head = threading.Event()

    def job(i: int) -> int:
        if i == 0:
            assert head.wait(10)
        return i

    with WorkerPool(4) as pool:
        done = threading.Event()
        jobs = [Job(job, args=(i,)) for i in range(200)]
        pool.run(jobs, ordered=True).subscribe(on_completed=done.set)
        # Job 0 runs; the 199 after it finished and wait for its result.
        assert wait_until(lambda: pool.statistics().held == 199, timeout=10)
        live = pool.statistics()
        assert (live.running, live.queued, live.completed, live.submitted) == (1, 0, 0, 200)
        head.set()
        assert done.wait(10)
        after = pool.statistics()
    assert (after.held, after.running, after.completed) == (0, 0, 200)


def test_statistics_never_count_more_running_than_workers_for_batched_jobs() -> None:
    # Trivial jobs go to the threads in batches: a batch's jobs not started
    # yet are queued, those finished and not delivered held; one runs.
    samples: list[Any] = []
    with WorkerPool(2) as pool:
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                samples.append(pool.statistics())

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            for ordered in (False, True):
                assert len(list(pool.map(abs, range(30_000), ordered=ordered))) == 30_000
        finally:
            stop.set()
            sampler.join(10)
        final = pool.statistics()
    assert len(samples) > 100
    assert any(0 < s.completed < 60_000 for s in samples)  # the samples saw the runs
    assert max(s.running for s in samples) <= 2
    # A snapshot's counts are read one after another, in the order jobs move:
    # a job moving on between two reads may be counted twice. Only a job
    # between two lists at that instant (popped from one, not yet in the
    # next: one per run at most, the emitter's) can be missed.
    assert all(_parts(s) >= s.submitted - 2 for s in samples)
    assert final.submitted == final.completed == 60_000 and _parts(final) == 60_000


def test_statistics_stream_emits_snapshots() -> None:
    with WorkerPool(2) as pool:
        pool.run(Job(abs, args=(i,)) for i in range(10)).pipe(ops.to_list()).run()
        snapshots = pool.statistics_stream(0.01).pipe(ops.take(3), ops.to_list()).run()
        assert len(snapshots) == 3
        assert all(s.succeeded == 10 for s in snapshots)
        with pytest.raises(ValueError, match="interval"):
            pool.statistics_stream(0)
        with pytest.raises(TypeError, match="interval"):
            pool.statistics_stream("1s")  # type: ignore[arg-type]


def test_progress_is_silent_off_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    with WorkerPool(2) as pool:
        out = pool.run([Job(abs, args=(-1,))], progress=True).pipe(ops.to_list()).run()
    values = reactivex.range(20).pipe(rops.map_concurrent(abs, 2, progress=True), ops.to_list())
    assert out[0].value == 1 and sorted(values.run()) == list(range(20))
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_progress_bar_draws_done_failed_running_and_closes() -> None:
    tracker = Tracker()
    stream = io.StringIO()
    import sys

    real = sys.stderr
    sys.stderr = stream
    try:
        bar = ProgressBar(tracker, total=4, running=lambda: 1, force=True)
        for result in ([None, None, None, None, 0.0, 0.1], [None, ValueError(), None, None, 0, 0]):
            tracker.result(result)
        tracker.taken = 3
        bar.close()
        bar.close()  # safe twice
    finally:
        sys.stderr = real
    text = stream.getvalue()
    assert "2/4" in text and "done=1" in text and "failed=1" in text and "running=1" in text


def test_progress_bar_shows_an_adaptive_limit() -> None:
    stream = io.StringIO()
    import sys

    real = sys.stderr
    sys.stderr = stream
    try:
        bar = ProgressBar(Tracker(), total=2, running=lambda: 1, force=True, limit=lambda: 7)
        bar.close()
    finally:
        sys.stderr = real
    assert "running=1 limit=7" in stream.getvalue()


def test_bad_progress_arguments() -> None:
    with WorkerPool(1) as pool:
        with pytest.raises(TypeError, match="progress"):
            pool.run([], progress="yes")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="total"):
            pool.run([], total=-1)
    with pytest.raises(TypeError, match="total"):
        rops.map_concurrent(abs, 2, total=1.5)  # type: ignore[arg-type]


def test_prometheus_exporter_served_on_loopback() -> None:
    from prometheus_client import CollectorRegistry, start_http_server

    from rxpool.prometheus import PoolCollector

    registry = CollectorRegistry()
    with WorkerPool(2) as pool:
        registry.register(PoolCollector(pool, pool_name="test"))
        pool.run([Job(abs, args=(-1,)), Job(fail, args=(1,))]).pipe(ops.to_list()).run()
        server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
        try:
            port = server.server_address[1]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                body = r.read().decode()
        finally:
            server.shutdown()
            thread.join(5)
    assert 'rxpool_jobs_total{outcome="succeeded",pool="test"} 1.0' in body
    assert 'rxpool_jobs_total{outcome="failed",pool="test"} 1.0' in body
    assert 'rxpool_jobs_submitted_total{pool="test"} 2.0' in body
    for gauge in ("running", "queued", "held"):  # the run has ended: nothing waits or runs
        assert f'rxpool_jobs_{gauge}{{pool="test"}} 0.0' in body
    assert 'rxpool_job_latency_seconds{pool="test",quantile="0.99"}' in body
    with pytest.raises(TypeError, match="WorkerPool"):
        PoolCollector("pool")  # type: ignore[arg-type]


def test_runs_log_under_the_rxpool_logger(caplog: pytest.LogCaptureFixture) -> None:
    def on_drop_raises(_: Any) -> None:
        raise RuntimeError("callback broke")

    caplog.set_level(logging.DEBUG, logger="rxpool")
    source = reactivex.from_iterable(range(3000))
    out = source.pipe(
        rops.map_concurrent(
            lambda x: time.sleep(0.0001) or x,
            1,
            buffer_size=1,
            overflow="drop_newest",
            on_drop=on_drop_raises,
        ),
        ops.to_list(),
    ).run()
    assert len(out) < 3000
    assert wait_until(lambda: any(r.name == "rxpool" for r in caplog.records))
    assert any("on_drop" in r.getMessage() for r in caplog.records)
