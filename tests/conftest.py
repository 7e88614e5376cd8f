"""Shared fixtures: every test must leave no rxpool thread behind."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from rxpool._dispatch import shared_threads

from ._helpers import Gate, wait_until


def _rxpool_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("rxpool-")}


@pytest.fixture(autouse=True)
def no_thread_leak() -> Iterator[None]:
    """Fail a test whose worker threads outlive it (after a grace period for lingering)."""
    before = _rxpool_threads()
    yield

    # Idle threads of the cache that operator runs share are not leaks: they
    # would exit after their idle timeout; let them go now, and those that
    # finish their last job while this waits too. Busy ones stay.
    def settled() -> bool:
        shared_threads().trim()
        return not (_rxpool_threads() - before)

    left = wait_until(settled, timeout=5.0)
    assert left, f"threads outlived the test: {sorted(t.name for t in _rxpool_threads() - before)}"


@pytest.fixture
def gate() -> Iterator[Gate]:
    g = Gate()
    yield g
    g.open()
