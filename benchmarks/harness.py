"""Timing contenders against each other in one run.

Contenders alternate within every repetition, so a slow spell of the machine
weighs on all of them; each figure is a median over repetitions. The orders
form a Williams design: over a cycle of repetitions every contender runs
right after every other one equally often. With a plain rotation a
contender always ran right after the same other one, and on this machine a
run right after a busy one is slower: two identical runs of
`map_concurrent`, one always right after the other, measured 0.96x-0.98x.
A section can ask for plain rotations instead (the IO section does, to keep
rxpool's thread cache warm between its runs).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def alternate_times(
    runs: dict[str, Callable[[], int]],
    repeats: int,
    expected: dict[str, int],
    orders: Callable[[int], list[list[int]]] | None = None,
    before: Callable[[], None] | None = None,
) -> dict[str, list[float]]:
    """Seconds of every timed run per contender, in repetition order.

    One untimed warm-up run each comes first, so every executor has its
    threads or processes. Each run returns how many results it saw, which must
    be ``expected[name]``. ``orders`` makes the orders of the repetitions
    (default: `williams_orders`). ``before``, if given, is called untimed at
    the start of every repetition (to give the contenders fresh processes).
    """
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for name in names:
        runs[name]()
    cycle = (orders or williams_orders)(len(names))
    for r in range(repeats):
        if before is not None:
            before()
        for index in cycle[r % len(cycle)]:
            name = names[index]
            started = time.perf_counter()
            count = runs[name]()
            times[name].append(time.perf_counter() - started)
            if count != expected[name]:
                raise AssertionError(f"{name} saw {count} results, expected {expected[name]}")
    return times


def williams_orders(n: int) -> list[list[int]]:
    """Orders of ``range(n)`` in which each ordered pair is adjacent equally often.

    ``n`` orders (``2 * n`` when ``n`` is odd): the first is 0, 1, n-1, 2,
    n-2, ...; each next one adds 1 (mod n); an odd ``n`` adds the mirrors.
    """
    first = [0]
    low, high = 1, n - 1
    while low <= high:
        first.append(low)
        low += 1
        if low <= high:
            first.append(high)
            high -= 1
    orders = [[(x + shift) % n for x in first] for shift in range(n)]
    if n % 2:
        orders += [order[::-1] for order in orders]
    return orders


def whole_cycles(repeats: int, contenders: int) -> int:
    """``repeats`` rounded up to whole cycles of `williams_orders` for ``contenders``.

    Only a whole cycle has every contender follow every other one equally
    often. Part of one does not: with seven contenders (a 14-order cycle),
    the first nine orders put rxpool's run right after the serial run twice
    and loky's never, and on this machine a run right after the serial one
    (a core busy for four seconds) took 7% longer.
    """
    cycle = len(williams_orders(contenders))
    return -(-max(repeats, 1) // cycle) * cycle


def rotations(n: int) -> list[list[int]]:
    """The ``n`` rotations of ``range(n)``: each contender always follows the same one.

    For a section that needs the gaps between two contenders bounded (see io_like).
    """
    return [[(x + shift) % n for x in range(n)] for shift in range(n)]


def alternate(
    runs: dict[str, Callable[[], int]],
    repeats: int,
    expected: dict[str, int],
    orders: Callable[[int], list[list[int]]] | None = None,
    before: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Median seconds per contender (see `alternate_times`)."""
    times = alternate_times(runs, repeats, expected, orders, before)
    return {name: statistics.median(values) for name, values in times.items()}


def paired_ratio(times: dict[str, list[float]], base: str, other: str) -> float:
    """The median over repetitions of ``base``'s time / ``other``'s in the same repetition.

    Both ran within one repetition, seconds apart, so a slow spell of the
    machine weighs on both: for ratios near 1 this is steadier than the ratio
    of two medians.
    """
    return statistics.median(b / o for b, o in zip(times[base], times[other], strict=True))
