"""Job functions the backend tests send to other processes: importable, picklable."""

from __future__ import annotations

import gc
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path


def double(x: int) -> int:
    return x * 2


def fail_on(x: int, failing: frozenset[int]) -> int:
    if x in failing:
        raise ValueError(f"job {x} failed")
    return x


def stamp(x: int, seconds: float) -> tuple[int, float, float, int]:
    """Sleep, and say when (wall clock, comparable across processes) and where."""
    started = time.time()
    time.sleep(seconds)
    return x, started, time.time(), os.getpid()


def _refuse_to_load() -> None:
    raise RuntimeError("this value cannot be rebuilt here")


class Unloadable:
    """Pickles anywhere; loading it raises (as a value tied to its process may)."""

    def __reduce__(self) -> tuple[object, tuple[()]]:
        return (_refuse_to_load, ())


def unloadable_on(x: int, bad: int) -> int | Unloadable:
    return Unloadable() if x == bad else x


def raise_base(x: int) -> int:
    """Raise what is not an ``Exception``: job 1 calls sys.exit(3), job 2 raises GeneratorExit."""
    if x == 1:
        sys.exit(3)
    if x == 2:
        raise GeneratorExit
    return x


def where(x: int) -> tuple[int, int]:
    """The input and the process that ran it."""
    return x, os.getpid()


def sleep_for(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def flaky(counter: str, succeed_on: int) -> int:
    """Fail until the ``succeed_on``-th call, counting calls in a file (any process)."""
    path = Path(counter)
    calls = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(calls))
    if calls < succeed_on:
        raise ConnectionError(f"call {calls} failed")
    return calls


def tally(path: str, x: int) -> int:
    """Append ``x`` to the file at ``path`` (a line a run, from any process); ``x * 2``."""
    with open(path, "a") as file:
        file.write(f"{x}\n")
    return x * 2


def blob(size: int) -> bytes:
    return b"x" * size


def die(code: int) -> None:
    """Kill the worker process under the job, as a segfault or the OOM killer would."""
    os._exit(code)


def cpu(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


def wants_token(x: int, token: object) -> int:
    return x


class Unpicklable:
    def __reduce__(self) -> str:
        raise TypeError("this object refuses to be pickled")


def unpicklable_result(x: int) -> Unpicklable:
    return Unpicklable()


def adder(x: int) -> Callable[[int], int]:
    """A result plain pickle refuses (a lambda) and cloudpickle sends."""
    return lambda y: x + y


def touch(path: str) -> str:
    """Leave a trace that the job ran."""
    Path(path).touch()
    return path


def announce_then_sleep(path: str, seconds: float) -> float:
    """Say the job started (a file appears), then sleep."""
    Path(path).touch()
    time.sleep(seconds)
    return seconds


def meet(directory: str, me: int, party: int, seconds: float) -> bool:
    """Arrive at ``directory``; True once ``party`` jobs have arrived, False after ``seconds``."""
    Path(directory, str(me)).touch()
    deadline = time.monotonic() + seconds
    while len(os.listdir(directory)) < party:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def frozen_and_collected() -> tuple[int, bool]:
    """How many objects this process has frozen, and whether a cycle it drops is collected."""
    first, second = _Node(), _Node()
    first.other, second.other = second, first
    probe = weakref.ref(first)
    del first, second
    gc.collect()
    return gc.get_freeze_count(), probe() is None


def nested(n: int) -> tuple[list[int], list[tuple[int, int]], bool]:
    """Run jobs on processes of the job's own: a `ProcessPoolExecutor`, and rxpool's
    process-wide backend (left open, as a library called by a job might).

    Returns the executor's results, rxpool's ``(x, pid)`` pairs, and whether
    this process is daemonic.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import reactivex
    from reactivex import operators as ops

    from rxpool import operators as rops

    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as executor:
        doubled = list(executor.map(double, range(n)))
    pairs: list[tuple[int, int]] = (
        reactivex.from_iterable(range(n))
        .pipe(rops.map_concurrent(where, 2, backend="process"), ops.to_list())
        .run()
    )
    return doubled, sorted(pairs), multiprocessing.current_process().daemon


class NeedsCode(Exception):
    """An error whose ``__init__`` takes more than its message: pickle cannot rebuild it."""

    def __init__(self, message: str, code: int, *, lock: object = None) -> None:
        super().__init__(message)
        self.code = code
        self.lock = lock


def raise_needs_code(x: int) -> int:
    if x == 1:
        raise NeedsCode("refused", 403)
    if x == 2:
        raise NeedsCode("locked", 423, lock=threading.Lock())
    return x


def raise_with(kind: str, attributes: dict[str, object]) -> None:
    """Raise a ValueError or a NeedsCode carrying these attributes."""
    error = ValueError("m") if kind == "ValueError" else NeedsCode("m", 1)
    for name, value in attributes.items():
        setattr(error, name, value)
    raise error


def square(x: int) -> int:
    return x * x


def boom(x: int) -> int:
    raise ZeroDivisionError(f"boom {x}")


def fail_init() -> None:
    raise ValueError("the initializer failed")


def claim_pid(directory: str) -> None:
    """An initializer: create ``directory/<pid>``, failing if this process already did."""
    with open(os.path.join(directory, str(os.getpid())), "x"):
        pass
