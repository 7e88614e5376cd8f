"""rxpool.iterate: a blocking, bounded iterator over a run."""

from __future__ import annotations

import itertools
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import reactivex

from rxpool import CancelToken, Job, WorkerPool, iterate

from ._helpers import wait_until


def test_yields_every_result_then_stops() -> None:
    with WorkerPool(4) as pool:
        values = sorted(
            r.value for r in iterate(pool.run(Job(abs, args=(-i,)) for i in range(500)))
        )
    assert values == list(range(500))


def test_raises_the_stream_error() -> None:
    source = reactivex.concat(reactivex.of(1, 2), reactivex.throw(OSError("disk")))
    seen = []
    with pytest.raises(OSError, match="disk"):
        for value in iterate(source):
            seen.append(value)
    assert seen == [1, 2]


def _endless(pulled: list[int], cancelled: threading.Event) -> Iterator[Job[Any]]:
    def cooperative(i: int, token: CancelToken) -> int:
        if i >= 10 and token.wait(10):
            cancelled.set()
        return i

    for i in itertools.count():
        pulled.append(i)
        yield Job(cooperative, args=(i,), id=i)


def test_break_disposes_the_run() -> None:
    pulled: list[int] = []
    cancelled = threading.Event()
    with WorkerPool(3) as pool:
        for result in iterate(pool.run(_endless(pulled, cancelled))):
            if result.id == 5:
                break
        assert cancelled.wait(5)  # the running jobs' token was cancelled
        count = len(pulled)
        assert not wait_until(lambda: len(pulled) > count, timeout=0.2)


def test_keyboard_interrupt_while_waiting_cancels_the_run() -> None:
    pulled: list[int] = []
    cancelled = threading.Event()
    with WorkerPool(2) as pool:
        # A real SIGINT, as Ctrl-C sends (it interrupts a blocking wait).
        threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT)).start()
        with pytest.raises(KeyboardInterrupt):
            for _ in iterate(pool.run(_endless(pulled, cancelled))):
                pass  # jobs from 10 on wait for their token: the loop blocks
        assert cancelled.wait(5)


def test_slow_consumer_bounds_the_intake() -> None:
    pulled: list[int] = []
    cancelled = threading.Event()
    with WorkerPool(2) as pool:
        results = iterate(pool.run(_endless(pulled, cancelled)), maxsize=4)
        first = next(results)
        assert first.id in (0, 1)
        # Nobody reads: the queue of 4 fills, then the workers wait in on_next.
        assert wait_until(lambda: len(pulled) >= 6)
        assert not wait_until(lambda: len(pulled) > 4 + 2 + 64, timeout=0.3)
        results.close()  # type: ignore[attr-defined]


def test_bad_input() -> None:
    with pytest.raises(TypeError, match="source must be a reactivex Observable"):
        iterate([1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="maxsize must be >= 1"):
        iterate(reactivex.of(1), maxsize=0)
