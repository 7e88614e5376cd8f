"""Export a pool's statistics to Prometheus (the ``prometheus`` extra).

::

    from prometheus_client import REGISTRY, start_http_server
    from rxpool.prometheus import PoolCollector

    REGISTRY.register(PoolCollector(pool, pool_name="crawler"))
    start_http_server(9100, addr="127.0.0.1")

Each scrape takes one `WorkerPool.statistics` snapshot: counters
``rxpool_jobs_total{outcome=...}`` and ``rxpool_retries_total``, gauges
``rxpool_jobs_running``, ``rxpool_jobs_queued`` and ``rxpool_jobs_held``,
and a summary-like gauge ``rxpool_job_latency_seconds{quantile=...}``.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ._pool import WorkerPool

__all__ = ["PoolCollector"]


class PoolCollector(Collector):
    """A Prometheus collector for one `WorkerPool`, labelled ``pool=pool_name``.

    Raises:
        TypeError: ``pool`` is not a WorkerPool or ``pool_name`` not a str.
    """

    def __init__(self, pool: WorkerPool, pool_name: str = "default") -> None:
        if not isinstance(pool, WorkerPool):
            raise TypeError(f"pool must be an rxpool.WorkerPool, got {type(pool).__name__}")
        if not isinstance(pool_name, str):
            raise TypeError(f"pool_name must be a str, got {type(pool_name).__name__}")
        self.pool = pool
        self.pool_name = pool_name

    def collect(self) -> Iterator[Metric]:
        s = self.pool.statistics()
        name = self.pool_name
        jobs = CounterMetricFamily(
            "rxpool_jobs", "Jobs that have a result, by outcome.", labels=["pool", "outcome"]
        )
        for outcome, total in (
            ("succeeded", s.succeeded),
            ("failed", s.failed),
            ("timed_out", s.timed_out),
            ("cancelled", s.cancelled),
            ("dropped", s.dropped),
        ):
            jobs.add_metric([name, outcome], total)
        yield jobs
        submitted = CounterMetricFamily(
            "rxpool_jobs_submitted", "Jobs taken from sources.", labels=["pool"]
        )
        submitted.add_metric([name], s.submitted)
        yield submitted
        retries = CounterMetricFamily(
            "rxpool_retries", "Attempts scheduled again by a retry policy.", labels=["pool"]
        )
        retries.add_metric([name], s.retried)
        yield retries
        for metric, help_text, count in (
            ("rxpool_jobs_running", "Jobs running now.", s.running),
            ("rxpool_jobs_queued", "Jobs waiting in buffers or for a retry.", s.queued),
            ("rxpool_jobs_held", "Jobs finished whose results wait to be delivered.", s.held),
        ):
            gauge = GaugeMetricFamily(metric, help_text, labels=["pool"])
            gauge.add_metric([name], count)
            yield gauge
        latency = GaugeMetricFamily(
            "rxpool_job_latency_seconds",
            "Seconds recent jobs ran, by quantile.",
            labels=["pool", "quantile"],
        )
        for quantile, value in (
            ("0.5", s.latency_p50),
            ("0.95", s.latency_p95),
            ("0.99", s.latency_p99),
        ):
            latency.add_metric([name, quantile], value)
        yield latency
