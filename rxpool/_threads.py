"""Threads for worker slots: started on demand, reused while they linger, gone when idle."""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Final

from reactivex import abc
from reactivex.scheduler import NewThreadScheduler

_log: Final = logging.getLogger("rxpool")
_names = itertools.count(1)


class ThreadRunner:
    """Runs slot loops on threads of its own.

    A slot loop is a long-lived task (it drains jobs until there are none), so
    there is no queue of jobs here, only of slot loops. A thread that finishes
    a task waits for another: for ever while no more than ``keep`` threads
    are alive, else ``linger`` seconds before it exits. After `close` idle
    threads exit at once. ``spawn`` still works after `close`, so runs in
    progress can finish; the owner refuses new runs.

    Threads start as a tree: `spawn` starts at most one thread, and each new
    thread starts up to two more before it takes a task, while tasks are
    waiting. Starting N threads then costs the caller one thread start, and the
    last slot of a wide run starts after about log2(N) starts, not N.
    """

    __slots__ = (
        "_closed",
        "_cond",
        "_generation",
        "_idle",
        "_keep",
        "_linger",
        "_starting",
        "_tasks",
        "_threads",
    )

    def __init__(self, linger: float, keep: int = 0) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._tasks: deque[Callable[[], None]] = deque()
        self._idle = 0
        self._starting = 0  # threads started that have not yet looked for a task
        self._threads: set[threading.Thread] = set()
        self._linger = linger
        self._keep = keep
        self._closed = False
        self._generation = 0  # bumped by `trim`: idle threads waiting on an older one exit

    def spawn(self, task: Callable[[], None], count: int = 1) -> None:
        """Queue ``count`` runs of ``task``: idle threads take them, new threads the rest."""
        with self._cond:
            self._tasks.extend(itertools.repeat(task, count))
            # One lock round and one notify call for the lot: waking idle threads
            # one spawn at a time makes each woken thread contend with the caller.
            self._cond.notify(min(self._idle, count))
            if len(self._tasks) <= self._idle or self._starting:
                return  # idle threads cover it, or a thread on its way up starts more
            self._start_thread()

    def _start_thread(self) -> None:
        """Start a thread (under ``_cond``: `join` never sees one not yet started)."""
        thread = threading.Thread(
            target=self._work, name=f"rxpool-worker-{next(_names)}", daemon=True
        )
        self._starting += 1
        thread.start()  # returns once the thread runs, before it needs ``_cond``
        self._threads.add(thread)

    def _work(self) -> None:
        cond = self._cond
        with cond:
            self._starting -= 1
            # Tasks not covered by idle threads, threads starting, or this one.
            deficit = len(self._tasks) - self._idle - self._starting - 1
            for _ in range(min(2, max(0, deficit))):
                self._start_thread()
        while True:
            with cond:
                while not self._tasks:
                    if self._closed:
                        self._threads.discard(threading.current_thread())
                        return
                    self._idle += 1
                    spare = len(self._threads) > self._keep
                    generation = self._generation
                    woken = cond.wait(self._linger if spare else None)
                    self._idle -= 1
                    trimmed = generation != self._generation
                    if (
                        (trimmed or not woken)
                        and not self._tasks
                        and len(self._threads) > self._keep
                    ):
                        self._threads.discard(threading.current_thread())
                        return
                task = self._tasks.popleft()
            try:
                task()
            except BaseException:  # a slot loop handles its own errors; this is a bug guard
                _log.exception("rxpool: a worker slot raised")

    def close(self) -> None:
        """Let idle threads exit now and busy ones when their task returns."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def trim(self) -> None:
        """Let the threads idle now beyond ``keep`` exit without waiting out ``linger``."""
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def owns(self, thread: threading.Thread) -> bool:
        """True if ``thread`` is one of this runner's."""
        with self._cond:
            return thread in self._threads

    def join(self, timeout: float | None = None) -> bool:
        """Wait for every thread to exit; True if they all did within ``timeout``."""
        with self._cond:
            threads = list(self._threads)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(timeout)
        with self._cond:
            return not any(t.is_alive() for t in self._threads)

    @property
    def threads(self) -> int:
        """How many threads are alive."""
        with self._cond:
            return len(self._threads)


class SchedulerSlots:
    """Runs slot loops as actions on a reactivex scheduler."""

    __slots__ = ("_scheduler",)

    def __init__(self, scheduler: abc.SchedulerBase) -> None:
        self._scheduler = scheduler

    def spawn(self, task: Callable[[], None], count: int = 1) -> None:
        def action(_scheduler: abc.SchedulerBase, _state: object = None) -> None:
            task()

        for _ in range(count):
            self._scheduler.schedule(action)


def can_block(scheduler: abc.SchedulerBase | None) -> bool:
    """True if slot loops on ``scheduler`` run on threads other than the producer's."""
    return scheduler is None or isinstance(scheduler, NewThreadScheduler)
