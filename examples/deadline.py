"""Stop a run with a deadline: jobs taken and unfinished get DeadlineExceeded results."""

from __future__ import annotations

import itertools
from collections import Counter

from reactivex import operators as ops

from rxpool import CancelToken, DeadlineExceeded, Job, WorkerPool


def slow_square(n: int, token: CancelToken) -> int:
    token.wait(0.01)  # pretend to do 10 ms of cooperative work
    token.raise_if_cancelled()
    return n * n


def main() -> None:
    endless = (Job(slow_square, args=(n,), id=n) for n in itertools.count())
    token = CancelToken.with_timeout(0.2)
    with WorkerPool(10) as pool:
        results = pool.run(endless, token=token).pipe(ops.to_list()).run()
    outcome = Counter(
        "done" if r.ok else "deadline" if isinstance(r.error, DeadlineExceeded) else "failed"
        for r in results
    )
    print(f"{len(results)} results from an endless generator: {dict(outcome)}")


if __name__ == "__main__":
    main()

# Expected output (counts vary with the machine):
# 200 results from an endless generator: {'done': 190, 'deadline': 10}
