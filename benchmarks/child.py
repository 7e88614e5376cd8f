"""One measurement in a fresh interpreter, so peak RSS belongs to it alone.

    python -m benchmarks.child rss CONTENDER N
    python -m benchmarks.child hot POLICY N WORKERS

Prints one JSON object.
"""

from __future__ import annotations

import json
import resource
import sys
import threading
import time
from typing import Any


def peak_rss_mib() -> float:
    """This process's RSS high-water mark (VmHWM: ru_maxrss would carry the parent's over exec)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss(contender: str, n: int) -> dict[str, Any]:
    from .contenders import CONTENDERS, double

    started = time.perf_counter()
    opened = CONTENDERS[contender](8)
    try:
        count = opened.run(double, n)
    finally:
        opened.close()
    assert count == n, (count, n)
    return {"seconds": time.perf_counter() - started, "peak_rss_mib": peak_rss_mib()}


def hot(policy: str, n: int, workers: int) -> dict[str, Any]:
    """A producer thread pushes n items as fast as it can; each job takes ~0.2 ms."""
    from reactivex.subject import Subject

    from rxpool import operators as rops

    def job(x: int) -> int:
        time.sleep(0.0002)
        return x

    subject: Subject[int] = Subject()
    done = threading.Event()
    processed = 0
    dropped = 0
    failure: list[str] = []

    def on_next(_: int) -> None:
        nonlocal processed
        processed += 1

    def on_error(error: Exception) -> None:
        failure.append(type(error).__name__)
        done.set()

    def on_drop(_: int) -> None:
        nonlocal dropped
        dropped += 1

    subject.pipe(
        rops.map_concurrent(job, workers, buffer_size=256, overflow=policy, on_drop=on_drop)  # type: ignore[arg-type]
    ).subscribe(on_next, on_error, done.set)
    pushed = 0
    started = time.perf_counter()
    for i in range(n):
        if done.is_set():
            break
        subject.on_next(i)
        pushed += 1
    producer_seconds = time.perf_counter() - started
    subject.on_completed()
    done.wait()
    return {
        "pushed": pushed,
        "processed": processed,
        "dropped": dropped,
        "error": failure[0] if failure else "",
        "producer_seconds": producer_seconds,
        "total_seconds": time.perf_counter() - started,
        "peak_rss_mib": peak_rss_mib(),
    }


def main(argv: list[str]) -> None:
    kind = argv[0]
    if kind == "rss":
        out = rss(argv[1], int(argv[2]))
    elif kind == "hot":
        out = hot(argv[1], int(argv[2]), int(argv[3]))
    else:
        raise SystemExit(f"unknown measurement {kind!r}")
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
