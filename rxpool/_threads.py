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

    Threads start from a starter: `spawn` starts at most one thread, and that
    thread starts the others the waiting tasks need, one after the other, before
    it takes a task itself; each of them takes a task at once. Starting N
    threads then costs the caller one thread start. Thread starts are
    serialised by the GIL (about 0.1 ms each with busy threads around), so
    the order matters: a tree of starters, where each new thread starts two
    more before working, kept threads waiting twice as long on average.
    """

    __slots__ = (
        "_closed",
        "_cond",
        "_generation",
        "_idle",
        "_keep",
        "_linger",
        "_name",
        "_numbers",
        "_starter",
        "_starting",
        "_tasks",
        "_threads",
    )

    def __init__(self, linger: float, keep: int = 0, name: str = "") -> None:
        # Thread names: ``{name}_{i}`` counted per runner (as ThreadPoolExecutor's),
        # or ``rxpool-worker-{i}`` counted over the process.
        self._name = name
        self._numbers = itertools.count() if name else _names
        self._cond = threading.Condition(threading.Lock())
        self._tasks: deque[Callable[[], None]] = deque()
        self._idle = 0
        self._starting = 0  # threads started that have not yet looked for a task
        self._starter = False  # a thread is starting the threads that tasks wait for
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
            if len(self._tasks) <= self._idle or self._starting or self._starter:
                return  # idle threads cover it, or a thread on its way up starts more
            # Started under the lock, unlike the starter's: the new thread waits
            # for the lock until the caller is out of spawn(), so a subscribe()
            # returns before its run's first jobs compete with it for the GIL.
            thread = self._new_thread()
            try:
                thread.start()
            except BaseException:
                self._unstarted(thread)
                raise

    def _new_thread(self) -> threading.Thread:
        """A thread to start, counted as starting (under ``_cond``)."""
        number = next(self._numbers)
        name = f"{self._name}_{number}" if self._name else f"rxpool-worker-{number}"
        thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._starting += 1
        self._threads.add(thread)
        return thread

    def _unstarted(self, thread: threading.Thread) -> None:
        """Undo `_new_thread` for a thread that failed to start (under ``_cond``)."""
        self._starting -= 1
        self._threads.discard(thread)

    def _start(self, thread: threading.Thread) -> None:
        """Start ``thread`` outside ``_cond`` (the starter: the threads it started
        meanwhile need ``_cond`` to take their tasks)."""
        try:
            thread.start()
        except BaseException:
            with self._cond:
                self._unstarted(thread)
            raise

    def _work(self) -> None:
        cond = self._cond
        with cond:
            self._starting -= 1
            starter = not self._starter
            self._starter = True
        while starter:
            with cond:
                # Tasks not covered by idle threads, threads starting, or this one.
                if len(self._tasks) - self._idle - self._starting - 1 <= 0:
                    self._starter = False
                    break
                thread = self._new_thread()
            try:
                self._start(thread)
            except Exception:  # out of threads: the ones running take the tasks
                _log.exception("rxpool: could not start a worker thread")
                with cond:
                    self._starter = False
                break
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
            # An idle thread must not keep its last task's run alive (its source,
            # its subscriber and what they hold) until it gets another task.
            del task

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
            # A thread is in the set from just before it starts.
            if thread is not threading.current_thread() and thread.ident is not None:
                thread.join(timeout)
        with self._cond:
            return not any(t.is_alive() or t.ident is None for t in self._threads)

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
