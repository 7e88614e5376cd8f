"""CancelToken: Go's context.Context semantics, thread-safe."""

from __future__ import annotations

import math
import threading
import time

import pytest

from rxpool import Cancelled, CancelToken, DeadlineExceeded


def test_new_token_is_live() -> None:
    token = CancelToken()
    assert not token.cancelled
    assert token.error is None
    assert token.deadline is None
    token.raise_if_cancelled()
    assert token.wait(0) is False


def test_cancel_sets_state_once() -> None:
    token = CancelToken()
    assert token.cancel("stop") is True
    assert token.cancel("again") is False
    assert token.cancelled
    assert isinstance(token.error, Cancelled)
    assert str(token.error) == "stop"
    with pytest.raises(Cancelled, match="stop"):
        token.raise_if_cancelled()
    assert token.wait(0) is True


def test_cancel_with_exception_instance_keeps_it() -> None:
    token = CancelToken()
    reason = DeadlineExceeded("custom")
    token.cancel(reason)
    assert token.error is reason


def test_parent_cancels_children_not_the_reverse() -> None:
    parent = CancelToken()
    child = parent.child()
    grandchild = child.child()
    sibling = parent.child()
    child.cancel()
    assert child.cancelled and grandchild.cancelled
    assert not parent.cancelled and not sibling.cancelled
    parent.cancel("root")
    assert sibling.cancelled
    assert str(sibling.error) == "root"


def test_child_of_cancelled_parent_starts_cancelled() -> None:
    parent = CancelToken()
    parent.cancel()
    assert parent.child().cancelled


def test_on_cancel_runs_once_and_after_cancel_runs_at_once() -> None:
    token = CancelToken()
    calls: list[str] = []
    token.on_cancel(lambda: calls.append("a"))
    removed = token.on_cancel(lambda: calls.append("removed"))
    removed.dispose()
    token.cancel()
    token.cancel()
    assert calls == ["a"]
    token.on_cancel(lambda: calls.append("late"))
    assert calls == ["a", "late"]


def test_callback_error_is_logged_and_others_run(caplog: pytest.LogCaptureFixture) -> None:
    token = CancelToken()
    calls: list[int] = []

    def boom() -> None:
        raise RuntimeError("boom")

    token.on_cancel(boom)
    token.on_cancel(lambda: calls.append(1))
    token.cancel()
    assert calls == [1]
    assert "callback raised" in caplog.text


def test_with_timeout_fires_deadline_exceeded() -> None:
    token = CancelToken.with_timeout(0.05)
    fired = threading.Event()
    token.on_cancel(fired.set)
    assert token.deadline is not None
    assert fired.wait(5)
    assert token.cancelled
    assert isinstance(token.error, DeadlineExceeded)
    assert isinstance(token.error, Cancelled)


def test_past_deadline_is_cancelled_at_once() -> None:
    token = CancelToken.with_deadline(time.monotonic() - 1)
    assert token.cancelled
    assert isinstance(token.error, DeadlineExceeded)


def test_nanosecond_timeout_is_cancelled_when_read() -> None:
    token = CancelToken.with_timeout(1e-9)
    assert token.wait(5)
    with pytest.raises(DeadlineExceeded):
        token.raise_if_cancelled()


def test_wait_returns_at_deadline() -> None:
    token = CancelToken.with_timeout(0.05)
    assert token.wait(10) is True


def test_child_inherits_earlier_deadline() -> None:
    parent = CancelToken.with_timeout(100)
    child = CancelToken.with_timeout(1000, parent=parent)
    assert child.deadline == parent.deadline
    early = CancelToken.with_timeout(1, parent=parent)
    assert early.deadline is not None and parent.deadline is not None
    assert early.deadline < parent.deadline
    parent.cancel()
    early.cancel()


def test_cancelled_parent_deadline_reaches_child_as_deadline_exceeded() -> None:
    parent = CancelToken.with_timeout(0.01)
    child = parent.child()
    assert child.wait(5)
    assert isinstance(child.error, DeadlineExceeded)


def test_cancel_releases_timer_thread() -> None:
    before = threading.active_count()
    token = CancelToken.with_timeout(3600)
    token.cancel()
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.001)
    assert threading.active_count() <= before


def _race_cancel(threads: int) -> tuple[list[bool], int]:
    token = CancelToken()
    counter: list[int] = []
    for _ in range(10):
        token.on_cancel(lambda: counter.append(1))
    barrier = threading.Barrier(threads)
    wins: list[bool] = []

    def racer() -> None:
        barrier.wait(5)
        wins.append(token.cancel())

    workers = [threading.Thread(target=racer) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(5)
    return wins, len(counter)


def test_concurrent_cancel_runs_callbacks_exactly_once() -> None:
    for _ in range(50):
        wins, callbacks = _race_cancel(8)
        assert wins.count(True) == 1
        assert callbacks == 10


@pytest.mark.parametrize("bad", [-1, -0.5])
def test_negative_timeout_is_rejected(bad: float) -> None:
    with pytest.raises(ValueError, match="seconds must be >= 0"):
        CancelToken.with_timeout(bad)


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: CancelToken.with_timeout(math.nan), ValueError, "NaN"),
        (lambda: CancelToken.with_timeout("1"), TypeError, "seconds must be a number"),  # type: ignore[arg-type]
        (lambda: CancelToken.with_deadline(None), TypeError, "deadline must be a number"),  # type: ignore[arg-type]
        (lambda: CancelToken(parent=object()), TypeError, "parent must be a CancelToken"),  # type: ignore[arg-type]
        (lambda: CancelToken().on_cancel(42), TypeError, "callback must be callable"),  # type: ignore[arg-type]
        (lambda: CancelToken().wait(math.nan), ValueError, "NaN"),
    ],
)
def test_bad_input(call: object, exc: type[Exception], match: str) -> None:
    assert callable(call)
    with pytest.raises(exc, match=match):
        call()
