"""Helpers for the tests: a gate that parks jobs, and polling for states without events."""

from __future__ import annotations

import threading
import time
from typing import Any


def wait_until(predicate: object, timeout: float = 5.0) -> bool:
    """Poll ``predicate()`` until true or ``timeout``; for states no event announces."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


class Gate:
    """Parks jobs on an event and records the high-water mark of concurrent entries."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self._lock = threading.Lock()
        self.running = 0
        self.high_water = 0
        self.entered = 0
        self._changed = threading.Condition(self._lock)

    def __call__(self, value: object) -> object:
        with self._lock:
            self.running += 1
            self.entered += 1
            self.high_water = max(self.high_water, self.running)
            self._changed.notify_all()
        try:
            assert self.opened.wait(10), "gate never opened"
            return value
        finally:
            with self._lock:
                self.running -= 1
                self._changed.notify_all()

    def wait_running(self, n: int, timeout: float = 5.0) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self.running >= n, timeout)

    def open(self) -> None:
        self.opened.set()


class Recorder:
    """An observer that records what it receives, with an event for the end."""

    def __init__(self) -> None:
        self.values: list[Any] = []
        self.errors: list[Exception] = []
        self.completed = threading.Event()
        self.ended = threading.Event()
        self.stamps: list[float] = []

    def on_next(self, value: Any) -> None:
        self.stamps.append(time.monotonic())
        self.values.append(value)

    def on_error(self, error: Exception) -> None:
        self.errors.append(error)
        self.ended.set()

    def on_completed(self) -> None:
        self.completed.set()
        self.ended.set()
