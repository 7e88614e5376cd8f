"""Flaky and hanging calls: retry the flaky ones, time out the hung ones, keep every result."""

from __future__ import annotations

import threading
from collections import Counter

from reactivex import operators as ops

from rxpool import CancelToken, Job, JobTimeout, Retry, WorkerPool

calls: Counter[int] = Counter()
lock = threading.Lock()


def call_service(n: int, token: CancelToken) -> str:
    with lock:
        calls[n] += 1
        attempt = calls[n]
    # Transient failures: every 3rd request fails once, every 9th twice, every 27th always.
    failures = 4 if n % 27 == 0 else 2 if n % 9 == 0 else 1 if n % 3 == 0 else 0
    if attempt <= failures:
        raise ConnectionError(f"request {n}: connection reset")
    if n % 25 == 1:
        token.wait(10)  # hangs until its timeout cancels the token
        token.raise_if_cancelled()
    return f"response {n}"


def main() -> None:
    retry = Retry(4, backoff=0.01, retry_on=ConnectionError)
    jobs = (Job(call_service, args=(n,), id=n) for n in range(100))
    with WorkerPool(10) as pool:
        results = pool.run(jobs, timeout=0.2, retry=retry).pipe(ops.to_list()).run()
    outcome = Counter(
        "ok" if r.ok else "timed out" if isinstance(r.error, JobTimeout) else "failed"
        for r in results
    )
    attempts = Counter(r.attempt for r in results)
    print(f"{len(results)} results: {dict(sorted(outcome.items()))}")
    print(f"attempts per job: {dict(sorted(attempts.items()))}")


if __name__ == "__main__":
    main()

# Expected output:
# 100 results: {'failed': 4, 'ok': 92, 'timed out': 4}
# attempts per job: {1: 66, 2: 22, 3: 8, 4: 4}
