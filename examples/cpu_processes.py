"""CPU-bound pure-Python work on worker processes: count primes in ranges.

    python examples/cpu_processes.py

Threads cannot run pure-Python code in parallel (the GIL); a `ProcessBackend`
sends each job to one of its worker processes (``backend="process"`` on a
pool does the same with processes the pool owns). The function must be
importable by the workers (module level), and the script needs the
``if __name__ == "__main__"`` guard, as with `ProcessPoolExecutor`.
"""

from __future__ import annotations

import os
import time

from reactivex import operators as ops

from rxpool import Job, WorkerPool
from rxpool.backends import ProcessBackend


def count_primes(start: int, stop: int) -> int:
    count = 0
    for n in range(max(start, 2), stop):
        if all(n % d for d in range(2, int(n**0.5) + 1)):
            count += 1
    return count


def main() -> None:
    step = 5_000
    ranges = [(lo, lo + step) for lo in range(0, 400_000, step)]
    workers = os.cpu_count() or 1

    started = time.perf_counter()
    serial = sum(count_primes(lo, hi) for lo, hi in ranges)
    serial_seconds = time.perf_counter() - started

    processes = ProcessBackend(workers)
    processes.warm()  # start the processes now, not on the first jobs
    try:
        with WorkerPool(workers, backend=processes) as pool:
            started = time.perf_counter()
            results = pool.run(Job(count_primes, args=r, id=r) for r in ranges)
            total = results.pipe(ops.map(lambda r: r.unwrap()), ops.sum()).run()
            parallel_seconds = time.perf_counter() - started
    finally:
        processes.close()

    assert total == serial
    print(f"{total} primes below 400,000")
    print(
        f"serial {serial_seconds:.2f}s, {workers} processes {parallel_seconds:.2f}s"
        f" ({serial_seconds / parallel_seconds:.1f}x)"
    )


if __name__ == "__main__":
    main()

# Expected output (times vary; about 2x on 2 cores):
# 33860 primes below 400,000
# serial 1.92s, 2 processes 0.98s (2.0x)
