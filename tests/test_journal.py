"""Durable runs: a `Journal` records each finished job before its result is emitted.

The Python API (`WorkerPool.run`, `run_jobs`) on real threads and a loopback
Dask cluster; the command line in real subprocesses, killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import reactivex as rx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rxpool
from rxpool import Job, Journal, JournalError, RecordedError, Result, WorkerPool
from rxpool.backends import DaskBackend
from rxpool.operators import run_jobs

from ._helpers import wait_until
from .test_backends import dask_client  # noqa: F401 - the module's loopback cluster

pytestmark = pytest.mark.timeout(120)


class Calls:
    """A job function that counts its calls; ``x % 10 == 3`` fails."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[int] = Counter()

    def __call__(self, x: int) -> int:
        with self.lock:
            self.counts[x] += 1
        if x % 10 == 3:
            raise ValueError(f"bad {x}")
        return x * 2


def jobs_of(fn: Any, ids: range | list[int]) -> list[Job[Any]]:
    return [Job(fn, args=(i,), id=i) for i in ids]


def run_all(pool: WorkerPool, jobs: Any, **kw: Any) -> list[Result[Any]]:
    return list(rxpool.iterate(pool.run(jobs, **kw)))


def test_a_resumed_run_replays_what_is_recorded_and_runs_only_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "run.journal"
    calls = Calls()
    with WorkerPool(4) as pool:
        first = run_all(pool, jobs_of(calls, range(30)), journal=path)
        assert sorted(r.id for r in first) == list(range(30))
        assert not any(r.replayed for r in first)
        assert set(calls.counts.values()) == {1}

        calls.counts.clear()
        second = run_all(pool, jobs_of(calls, range(40)), journal=path)
    assert sorted(r.id for r in second) == list(range(40))  # one result per job
    replayed = {r.id for r in second if r.replayed}
    failed_before = {i for i in range(30) if i % 10 == 3}
    assert replayed == set(range(30)) - failed_before
    # Only the new jobs and the failed ones ran again.
    assert set(calls.counts) == set(range(30, 40)) | failed_before
    by_id = {r.id: r for r in second}
    for i in range(40):
        if i % 10 == 3:
            assert isinstance(by_id[i].error, ValueError)
        else:
            assert by_id[i].value == i * 2 and by_id[i].error is None
    assert len(Journal(path)) == 40


def test_keep_failed_replays_failures_with_their_exception(tmp_path: Path) -> None:
    path = tmp_path / "run.journal"
    calls = Calls()
    with WorkerPool(2) as pool:
        run_all(pool, jobs_of(calls, range(20)), journal=path)
        calls.counts.clear()
        again = run_all(pool, jobs_of(calls, range(20)), journal=Journal(path, keep_failed=True))
    assert not calls.counts
    assert all(r.replayed for r in again)
    failures = sorted((r.id, str(r.error)) for r in again if not r.ok)
    assert failures == [(3, "bad 3"), (13, "bad 13")]
    assert all(isinstance(r.error, ValueError) for r in again if not r.ok)


def test_ordered_output_merges_replayed_and_new_results_in_input_order(tmp_path: Path) -> None:
    path = tmp_path / "run.journal"
    with WorkerPool(4) as pool:
        run_all(pool, [Job(_slow_double, args=(i,), id=i) for i in range(0, 60, 2)], journal=path)
        results = run_all(
            pool,
            [Job(_slow_double, args=(i,), id=i) for i in range(60)],
            journal=path,
            ordered=True,
        )
    assert [r.id for r in results] == list(range(60))
    assert [r.replayed for r in results] == [i % 2 == 0 for i in range(60)]
    assert [r.value for r in results] == [2 * i for i in range(60)]


def _slow_double(x: int) -> int:
    time.sleep(0.001 * (x % 5))  # finish out of order
    return x * 2


def test_every_emitted_result_is_already_durable(tmp_path: Path) -> None:
    path = tmp_path / "run.journal"
    missing: list[Any] = []

    def check(result: Result[Any]) -> None:
        # Another connection, as another process would read the file after a crash.
        if result.id not in Journal(path):
            missing.append(result.id)

    with WorkerPool(4) as pool:
        done = threading.Event()
        pool.run(jobs_of(Calls(), range(200)), journal=path).subscribe(
            check, lambda e: done.set(), done.set
        )
        assert done.wait(30)
    assert missing == []


def test_run_jobs_over_an_observable_records_and_resumes(tmp_path: Path) -> None:
    path = tmp_path / "run.journal"
    calls = Calls()
    source = rx.from_iterable(jobs_of(calls, range(25)))
    first = source.pipe(run_jobs(4, journal=path)).run()
    assert first.id in range(25)
    calls.counts.clear()
    results: list[Result[Any]] = list(rxpool.iterate(source.pipe(run_jobs(4, journal=path))))
    assert sorted(r.id for r in results) == list(range(25))
    assert set(calls.counts) == {3, 13, 23}  # only the failures ran again
    assert sum(r.replayed for r in results) == 22


def test_an_async_iterable_of_jobs_resumes_too(tmp_path: Path) -> None:
    path = tmp_path / "run.journal"
    calls = Calls()

    async def jobs() -> Any:
        for job in jobs_of(calls, range(12)):
            yield job

    async def both(pool: WorkerPool) -> tuple[list[Result[Any]], list[Result[Any]]]:
        first = [r async for r in rxpool.aiter(pool.run(jobs(), journal=path))]
        return first, [r async for r in rxpool.aiter(pool.run(jobs(), journal=path))]

    with WorkerPool(3) as pool:
        first, second = asyncio.run(both(pool))
    assert len(first) == len(second) == 12
    assert {r.id for r in second if r.replayed} == set(range(12)) - {3}
    assert calls.counts[3] == 2 and calls.counts[4] == 1


def test_job_ids_must_be_given_unique_and_keyable(tmp_path: Path) -> None:
    path = tmp_path / "run.journal"
    with WorkerPool(2) as pool:
        with pytest.raises(ValueError, match=r"jobs\[1\] has no id"):
            pool.run([Job(abs, args=(1,), id="a"), Job(abs, args=(2,))], journal=path)
        with pytest.raises(ValueError, match="appears twice"):
            pool.run([Job(abs, args=(1,), id=1), Job(abs, args=(2,), id=1)], journal=path)
        with pytest.raises(ValueError, match="str, int or tuples"):
            pool.run([Job(abs, args=(1,), id=1.5)], journal=path)
        # From a generator the run ends with the error, after what it took.
        generated = (Job(abs, args=(i,), id=i % 3) for i in range(5))
        with pytest.raises(ValueError, match="job id 0 appears twice"):
            run_all(pool, generated, journal=path)
        with pytest.raises(TypeError, match="journal must be a path"):
            pool.run([], journal=42)  # type: ignore[arg-type]


def test_an_id_recorded_for_another_function_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.journal"
    with WorkerPool(2) as pool:
        run_all(pool, [Job(abs, args=(-1,), id="x")], journal=path)
        with pytest.raises(ValueError, match="job ids must stay the same"):
            run_all(pool, [Job(str, args=(1,), id="x")], journal=path)


def test_dispose_stops_emitting_records_what_finished_and_frees_the_journal(
    tmp_path: Path,
) -> None:
    path = tmp_path / "run.journal"
    seen: list[Result[Any]] = []
    with WorkerPool(2) as pool:
        subscription = pool.run(
            [Job(time.sleep, args=(0.01,), id=i) for i in range(500)], journal=path
        ).subscribe(seen.append)
        assert wait_until(lambda: len(seen) >= 5, timeout=10)
        subscription.dispose()
        after = len(seen)
        # The journal thread commits what it holds and lets go: a new run can open it.
        rest = run_all(pool, [Job(time.sleep, args=(0,), id=i) for i in range(500)], journal=path)
    assert len(seen) == after
    assert sorted(r.id for r in rest) == list(range(500))
    emitted = {r.id for r in seen}
    assert emitted <= {r.id for r in rest if r.replayed}  # nothing emitted runs again


def test_a_second_writer_is_refused_while_the_first_runs(tmp_path: Path) -> None:
    path = tmp_path / "run.journal"
    release = threading.Event()
    errors: list[Exception] = []
    with WorkerPool(2) as pool:
        first = pool.run([Job(release.wait, args=(10,), id=1)], journal=path).subscribe(
            lambda r: None
        )
        pool.run([Job(abs, args=(1,), id=2)], journal=path).subscribe(lambda r: None, errors.append)
        release.set()
        first.dispose()
    assert len(errors) == 1 and isinstance(errors[0], JournalError)
    assert "in use by another run" in str(errors[0])


def test_inspecting_a_journal(tmp_path: Path) -> None:
    path = tmp_path / "run.journal"
    assert len(Journal(path)) == 0 and not path.exists()  # opening creates nothing
    with WorkerPool(2) as pool:
        run_all(pool, [*jobs_of(Calls(), range(15)), Job(_unpicklable, id="u")], journal=path)
    journal = Journal(path)
    assert journal.counts() == {"ok": 14, "failed": 2, "ValueError": 2}
    assert [r.id for r in journal.failed()] == [3, 13]
    record = journal.get(4)
    assert record is not None and record.ok and record.value == 8 and record.attempt == 1
    assert record.fingerprint is not None and record.fingerprint.endswith("Calls")
    assert 99 not in journal and 4 in journal
    failure = journal.get(3)
    assert failure is not None and failure.error_type == "ValueError"
    assert isinstance(failure.error, ValueError)
    # A value that cannot be pickled is kept as JSON (its repr), and runs again on resume.
    kept = journal.get("u")
    assert kept is not None and not kept.replayable and "lock" in (kept.value_json or "")
    out = tmp_path / "export.jsonl"
    assert journal.export_jsonl(out) == 16
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert {line["id"] for line in lines} == set(range(15)) | {"u"}
    assert {"error": {"type": "ValueError", "message": "bad 3"}}.items() <= next(
        line for line in lines if line["id"] == 3
    ).items()
    with pytest.raises(TypeError, match="lives with the client"):
        pickle.dumps(journal)


def _unpicklable() -> Any:
    return threading.Lock()


def test_a_replayed_error_that_cannot_be_rebuilt_is_a_recorded_error(tmp_path: Path) -> None:
    path = tmp_path / "run.journal"

    class Local(Exception):  # not importable: it cannot be pickled, only named
        pass

    def fail() -> None:
        raise Local("no rebuild")

    with WorkerPool(1) as pool:
        run_all(pool, [Job(fail, id=1)], journal=path)
        (again,) = run_all(pool, [Job(fail, id=1)], journal=Journal(path, keep_failed=True))
    assert again.replayed and isinstance(again.error, RecordedError)
    assert again.error.type_name == "Local" and again.error.message == "no rebuild"
    assert str(again.error) == "Local: no rebuild"


def test_damaged_and_foreign_files_give_a_clear_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(JournalError, match="not an rxpool journal, or the file is damaged"):
        Journal(garbage)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as connection:
        connection.execute("CREATE TABLE t (x)")
    with pytest.raises(JournalError, match="not an rxpool journal"):
        Journal(other)
    path = tmp_path / "run.journal"
    with WorkerPool(2) as pool:
        run_all(pool, jobs_of(Calls(), range(2000)), journal=path)
        with sqlite3.connect(path) as connection:
            connection.execute("UPDATE meta SET value = '99' WHERE key = 'version'")
        with pytest.raises(JournalError, match="incompatible rxpool"):
            pool.run([], journal=path)
    truncated = tmp_path / "truncated"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(JournalError, match="damaged"):
        Journal(truncated)


def test_with_dask_the_journal_stays_with_the_client(
    tmp_path: Path,
    dask_client: Any,  # noqa: F811
) -> None:
    path = tmp_path / "run.journal"
    pool = WorkerPool(4, backend=DaskBackend(dask_client))
    try:
        first = run_all(pool, [Job(_pid_double, args=(i,), id=i) for i in range(20)], journal=path)
        again = run_all(pool, [Job(_pid_double, args=(i,), id=i) for i in range(25)], journal=path)
    finally:
        pool.close()
    assert all(r.ok for r in first) and len(again) == 25
    assert {r.id for r in again if r.replayed} == set(range(20))
    assert {r.value[0] for r in again} == {2 * i for i in range(25)}
    # The records are the client's: written by this process, of results the workers sent.
    assert len(Journal(path)) == 25


def _pid_double(x: int) -> tuple[int, int]:
    return 2 * x, os.getpid()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    first=st.sets(st.integers(0, 39)),
    failing=st.sets(st.integers(0, 39)),
    keep_failed=st.booleans(),
    ordered=st.booleans(),
)
def test_property_each_job_once_and_only_unrecorded_jobs_run(
    tmp_path_factory: pytest.TempPathFactory,
    first: set[int],
    failing: set[int],
    keep_failed: bool,
    ordered: bool,
) -> None:
    path = tmp_path_factory.mktemp("journal") / "run.journal"
    ran: Counter[int] = Counter()
    lock = threading.Lock()

    def job(x: int) -> int:
        with lock:
            ran[x] += 1
        if x in failing:
            raise ValueError(x)
        return -x

    with WorkerPool(3) as pool:
        run_all(pool, [Job(job, args=(i,), id=i) for i in sorted(first)], journal=path)
        ran.clear()
        results = run_all(
            pool,
            [Job(job, args=(i,), id=i) for i in range(40)],
            journal=Journal(path, keep_failed=keep_failed),
            ordered=ordered,
        )
    ids = [r.id for r in results]
    assert sorted(ids) == list(range(40))
    if ordered:
        assert ids == list(range(40))
    recorded = first if keep_failed else first - failing
    assert {r.id for r in results if r.replayed} == recorded
    assert set(ran) == set(range(40)) - recorded and set(ran.values()) <= {1}
    for r in results:
        assert (r.error is not None) == (r.id in failing)
        if r.ok:
            assert r.value == -r.id


# -- the command line -------------------------------------------------------------------

WORK = textwrap.dedent(
    """
    import os, time

    def double(x):
        # Say who computed what: the run number (RUN) and the input.
        with open("calls.log", "a") as log:
            log.write(f"{os.environ.get('RUN', '0')} {x}\\n")
        time.sleep(float(os.environ.get("SLOW", "0")))
        if x % 10 == 3:
            raise ValueError(f"bad {x}")
        return x * 2
    """
)


MAP = [sys.executable, "-m", "rxpool", "map", "work:double", "in.txt"]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "work.py").write_text(WORK)
    (tmp_path / "in.txt").write_text("".join(f"{i}\n" for i in range(1, 201)))
    return tmp_path


def cli(
    workdir: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rxpool", "map", "work:double", "in.txt", *args],
        capture_output=True,
        text=True,
        cwd=workdir,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def ids_of(out: str) -> list[int]:
    return [json.loads(line)["id"] for line in out.splitlines()]


def test_cli_resume_writes_recorded_lines_first_and_runs_only_the_rest(workdir: Path) -> None:
    first = cli(workdir, "--journal", "run.journal", env={"RUN": "1"})
    assert first.returncode == 1 and sorted(ids_of(first.stdout)) == list(range(1, 201))
    calls = (workdir / "calls.log").read_text().split("\n")
    assert len([c for c in calls if c]) == 200

    again = cli(workdir, "--journal", "run.journal", env={"RUN": "2"})
    assert again.returncode == 1, again.stderr
    ids = ids_of(again.stdout)
    assert sorted(ids) == list(range(1, 201))
    failed = [i for i in range(1, 201) if i % 10 == 3]
    assert set(ids[:180]) == set(range(1, 201)) - set(failed)  # recorded results first
    rerun = [line.split()[1] for line in (workdir / "calls.log").read_text().splitlines()]
    assert sorted(map(int, rerun[200:])) == failed  # only the failures ran again
    # The replayed lines are the lines written the first time.
    before = {json.loads(line)["id"]: json.loads(line) for line in first.stdout.splitlines()}
    for line in again.stdout.splitlines()[:180]:
        record = json.loads(line)
        assert record["value"] == before[record["id"]]["value"]
        assert record["started"] == before[record["id"]]["started"]

    kept = cli(workdir, "--journal", "run.journal", "--keep-failed", "--ordered", env={"RUN": "3"})
    assert kept.returncode == 1 and sorted(ids_of(kept.stdout)) == list(range(1, 201))
    runs = [line.split()[0] for line in (workdir / "calls.log").read_text().splitlines()]
    assert "3" not in runs  # with --keep-failed nothing ran again
    assert kept.stderr.count("20 of 200 jobs failed") == 1


def test_cli_refuses_a_changed_input_another_function_and_stdin(workdir: Path) -> None:
    assert cli(workdir, "--journal", "run.journal").returncode == 1
    lines = (workdir / "in.txt").read_text().splitlines()
    lines[41] = "4200"
    (workdir / "in.txt").write_text("\n".join(lines) + "\n")
    changed = cli(workdir, "--journal", "run.journal")
    assert changed.returncode == 2 and changed.stdout == ""
    assert changed.stderr.strip().splitlines() == [
        "rxpool map: journal run.journal does not match in.txt: line 42 has changed"
        " since it was recorded"
    ]
    (workdir / "in.txt").write_text("\n".join(lines[:10]) + "\n")
    shorter = cli(workdir, "--journal", "run.journal")
    assert shorter.returncode == 2 and "line 11 was recorded" in shorter.stderr
    text = cli(workdir, "--journal", "run.journal", "--text")
    assert text.returncode == 2 and "was written by `rxpool map work:double`" in text.stderr
    piped = subprocess.run(
        [sys.executable, "-m", "rxpool", "map", "work:double", "--journal", "j"],
        input="1\n",
        capture_output=True,
        text=True,
        cwd=workdir,
        timeout=60,
    )
    assert piped.returncode == 2 and "--journal needs an INPUT file" in piped.stderr
    assert cli(workdir, "--keep-failed").returncode == 2


def test_cli_damaged_journal_and_a_second_writer_are_refused_in_one_line(workdir: Path) -> None:
    (workdir / "bad.journal").write_bytes(b"\x00garbage" * 500)
    bad = cli(workdir, "--journal", "bad.journal")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "not an rxpool journal, or the file is damaged" in bad.stderr
    assert "Traceback" not in bad.stderr

    slow = subprocess.Popen(
        [sys.executable, "-m", "rxpool", "map", "work:double", "in.txt", "--journal", "j"],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "SLOW": "0.5"},
    )
    try:
        assert slow.stdout is not None
        slow.stdout.readline()  # it writes: it holds the journal
        second = cli(workdir, "--journal", "j")
        assert second.returncode == 2
        assert "is in use by another run" in second.stderr and "Traceback" not in second.stderr
    finally:
        slow.kill()
        slow.wait(30)


def test_cli_killed_again_and_again_loses_nothing_and_recomputes_nothing_printed(
    workdir: Path,
) -> None:
    rng = random.Random(1234)
    printed: dict[int, int] = {}  # line -> the run that first printed it
    for run in range(1, 7):
        proc = subprocess.Popen(
            [*MAP, "--journal", "run.journal", "--workers", "16"],
            cwd=workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "RUN": str(run), "SLOW": "0.02"},
        )
        time.sleep(rng.uniform(0.3, 0.8))  # somewhere in the run: the point is random
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
        for line in out.decode().splitlines():
            if not line.endswith("}"):
                continue  # cut in the middle of the line by the kill
            printed.setdefault(json.loads(line)["id"], run)
    final = cli(workdir, "--journal", "run.journal", env={"RUN": "7"})
    assert final.returncode == 1, final.stderr
    ids = ids_of(final.stdout)
    assert sorted(ids) == list(range(1, 201))  # every line exactly once
    computed: dict[int, list[int]] = {}
    for entry in (workdir / "calls.log").read_text().splitlines():
        run_number, x = map(int, entry.split())
        computed.setdefault(x, []).append(run_number)
    assert set(computed) == set(range(1, 201))
    for x, run in printed.items():
        if x % 10 == 3:
            continue  # failures are run again on resume, as documented
        assert max(computed[x]) <= run, f"line {x} was printed in run {run} and computed again"
    assert printed, "no run lived long enough to print: the kill points are too early"
