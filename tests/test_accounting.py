"""The accounting invariant under random mixes of jobs and a stop at a random moment.

Every job taken from the source yields exactly one Result (unless the subscriber
disposed), no id appears twice, nothing follows a terminal notification or a
dispose, the terminal notification comes at most once, and the bound holds,
also with jobs that time out (and keep running) and jobs that are retried.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rxpool import Cancelled, CancelToken, Job, JobTimeout, Result, Retry, WorkerPool

from ._helpers import wait_until

STOPS = ["none", "token", "dispose", "token_in_next", "dispose_in_next"]


class Probe:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.high_water = 0
        self.calls: dict[int, int] = {}

    def job(self, i: int, kind: str, token: CancelToken) -> str:
        with self.lock:
            self.running += 1
            self.high_water = max(self.high_water, self.running)
            self.calls[i] = self.calls.get(i, 0) + 1
            first_call = self.calls[i] == 1
        try:
            if kind == "err":
                raise ValueError(kind)
            if kind == "slow":
                token.wait(0.003)
            if kind == "hang":
                token.wait(0.2)  # past its timeout; stops when its token is cancelled
            if kind == "flaky" and first_call:
                raise ConnectionError(kind)
            return kind
        finally:
            with self.lock:
                self.running -= 1


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    kinds=st.lists(st.sampled_from(["ok", "err", "slow", "hang", "flaky"]), max_size=60),
    workers=st.integers(1, 6),
    ordered=st.booleans(),
    stop=st.sampled_from(STOPS),
    at=st.integers(0, 30),
)
def test_every_job_taken_yields_one_result(
    kinds: list[str], workers: int, ordered: bool, stop: str, at: int
) -> None:
    probe = Probe()
    pulled: list[Any] = []

    def source() -> Iterator[Job[str]]:
        for i, kind in enumerate(kinds):
            pulled.append(i)
            yield Job(
                probe.job,
                args=(i, kind),
                id=i,
                timeout=0.01 if kind == "hang" else None,
                retry=Retry(2, backoff=0.001) if kind == "flaky" else None,
            )

    token = CancelToken()
    results: list[Result[str]] = []
    terminal: list[str] = []
    after: list[str] = []
    disposed = threading.Event()  # dispose() has returned
    reached = threading.Event()
    ended = threading.Event()  # a terminal notification arrived, or the run was disposed
    subscription: list[Any] = []

    def on_next(result: Result[str]) -> None:
        if terminal or disposed.is_set():
            after.append("on_next")
        results.append(result)
        if len(results) >= at:
            reached.set()
            if stop == "token_in_next":
                token.cancel()
            elif stop == "dispose_in_next" and subscription and not disposed.is_set():
                subscription[0].dispose()
                disposed.set()
                ended.set()

    def on_error(error: Exception) -> None:
        if terminal or disposed.is_set():
            after.append("on_error")
        terminal.append(f"error {error!r}")
        ended.set()

    def on_completed() -> None:
        if terminal or disposed.is_set():
            after.append("on_completed")
        terminal.append("completed")
        ended.set()

    pool = WorkerPool(workers)
    try:
        sub = pool.run(source(), token=token, ordered=ordered).subscribe(
            on_next, on_error, on_completed
        )
        subscription.append(sub)
        if stop in ("token", "dispose"):
            reached.wait(0.05 if at else 0)
            if stop == "token":
                token.cancel()
            else:
                sub.dispose()
                disposed.set()
                ended.set()
        elif stop == "dispose_in_next":
            # on_next may have run before subscribe() returned: dispose from here then.
            reached.wait(0.05 if at else 0)
            if not ended.is_set():
                sub.dispose()
                disposed.set()
                ended.set()
        assert ended.wait(10), "the run never ended"
    finally:
        pool.close(wait=True)

    assert after == []
    assert len(terminal) <= 1
    ids = [r.id for r in results]
    assert len(ids) == len(set(ids)), "an id was reported twice"
    assert probe.high_water <= workers
    if not disposed.is_set():
        assert terminal == ["completed"]
        assert sorted(ids) == sorted(pulled), "a job taken has no result"
        for r in results:
            kind = kinds[r.id]
            if isinstance(r.error, Cancelled):
                assert stop != "none"
            elif kind == "err":
                assert isinstance(r.error, ValueError)
            elif kind == "hang":
                assert isinstance(r.error, JobTimeout)
            else:
                assert r.value == kind
                assert r.attempt == (2 if kind == "flaky" else 1)
        if ordered and stop == "none":
            assert ids == list(range(len(kinds)))
    else:
        assert set(ids) <= set(pulled)
    assert wait_until(lambda: probe.running == 0)
