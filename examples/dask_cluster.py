"""A run on a Dask cluster: a local one here, any deployed one the same way.

    python examples/dask_cluster.py

`DaskBackend(client)` sends jobs with ``client.submit``; the pool keeps at
most 8 tasks in flight on the cluster, and tiny jobs travel in chunks. Point
the `Client` at a deployed scheduler (with TLS: see docs/backends.md) and
nothing else changes. Needs the ``dask`` extra.
"""

from __future__ import annotations

import time

from distributed import Client, LocalCluster

from rxpool import Job, WorkerPool, iterate
from rxpool.backends import DaskBackend


def collatz_steps(n: int) -> int:
    steps = 0
    while n != 1:
        n = n // 2 if n % 2 == 0 else 3 * n + 1
        steps += 1
    return steps


def main() -> None:
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",  # loopback only, the dashboard too
            dashboard_address="127.0.0.1:0",
        ) as cluster,
        Client(cluster) as client,
        WorkerPool(8, backend=DaskBackend(client)) as pool,
    ):
        started = time.perf_counter()
        jobs = (Job(collatz_steps, args=(n,), id=n) for n in range(1, 20_001))
        best = max(iterate(pool.run(jobs)), key=lambda r: r.unwrap())
        seconds = time.perf_counter() - started
    print(f"below 20,001, {best.id} takes the most Collatz steps: {best.value}")
    print(f"20,000 jobs on a 2-worker cluster in {seconds:.2f}s")


if __name__ == "__main__":
    main()

# Expected output (time varies):
# below 20,001, 17647 takes the most Collatz steps: 278
# 20,000 jobs on a 2-worker cluster in 1.4s
