"""The Go article's worker pool, ported line by line.

Go                                   rxpool
----------------------------------   -----------------------------------------
wp := New(workerCount)               pool = WorkerPool(WORKERS)
ctx, cancel := context.WithCancel()  token = CancelToken()
go wp.GenerateFrom(testJobs())       jobs = test_jobs()      (pulled lazily)
go wp.Run(ctx)                       pool.run(jobs, token=token).subscribe(...)
for r := range wp.Results()          on_next(result)
<-wp.Done                            on_completed
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from rxpool import CancelToken, Job, Result, WorkerPool

WORKERS = 2
JOBS = 10


def exec_fn(value: int) -> int:
    return value * 2


def test_jobs() -> Iterator[Job[int]]:
    for i in range(JOBS):
        yield Job(exec_fn, args=(i,), id=i, kind="anyType", metadata={"foo": "bar"})


def main() -> None:
    pool = WorkerPool(WORKERS)
    token = CancelToken()
    done = threading.Event()
    results: list[Result[int]] = []

    pool.run(test_jobs(), token=token).subscribe(results.append, on_completed=done.set)
    done.wait(10)
    pool.close()

    for r in sorted(results, key=lambda r: r.id):
        if r.ok:
            print(f"job {r.id}: value {r.value} ({r.descriptor.kind}, {r.descriptor.metadata})")
        else:
            print(f"job {r.id}: error {r.error!r}")
    token.cancel()


if __name__ == "__main__":
    main()

# Expected output:
# job 0: value 0 (anyType, {'foo': 'bar'})
# job 1: value 2 (anyType, {'foo': 'bar'})
# ...
# job 9: value 18 (anyType, {'foo': 'bar'})
