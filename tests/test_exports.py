"""The public names are a contract: pin them."""

from __future__ import annotations

import rxpool
import rxpool.operators


def test_rxpool_all() -> None:
    assert rxpool.__all__ == [
        "Adaptive",
        "Breaker",
        "BufferOverflow",
        "CancelToken",
        "Cancelled",
        "CircuitOpen",
        "DeadlineExceeded",
        "Dropped",
        "Executor",
        "Job",
        "JobDescriptor",
        "JobTimeout",
        "Journal",
        "JournalError",
        "JournalRecord",
        "NotSendable",
        "PoolClosed",
        "RecordedError",
        "Result",
        "Retry",
        "RxPoolError",
        "Statistics",
        "WorkerCrashed",
        "WorkerPool",
        "__version__",
        "aiter",
        "backends",
        "bridges",
        "gather",
        "iterate",
        "last",
        "operators",
    ]
    for name in rxpool.__all__:
        assert hasattr(rxpool, name), name


def test_operators_all() -> None:
    assert rxpool.operators.__all__ == ["flat_map", "map_concurrent", "run_jobs"]


def test_bridges_all() -> None:
    assert rxpool.bridges.__all__ == ["AsyncStream", "aiter", "gather", "iterate", "last"]


def test_backends_all() -> None:
    assert rxpool.backends.__all__ == [
        "AsyncioBackend",
        "Backend",
        "Call",
        "DaskBackend",
        "Lane",
        "Outcome",
        "ProcessBackend",
        "ThreadBackend",
    ]


def test_exception_tree() -> None:
    assert issubclass(rxpool.WorkerCrashed, rxpool.RxPoolError)
    assert issubclass(rxpool.NotSendable, rxpool.RxPoolError)
    assert issubclass(rxpool.Cancelled, rxpool.RxPoolError)
    assert issubclass(rxpool.DeadlineExceeded, rxpool.Cancelled)
    assert issubclass(rxpool.PoolClosed, rxpool.RxPoolError)
    assert issubclass(rxpool.RxPoolError, Exception)


def test_public_objects_are_documented() -> None:
    for name in rxpool.__all__:
        obj = getattr(rxpool, name)
        if callable(obj):
            assert obj.__doc__, name
    for name in rxpool.operators.__all__:
        doc = getattr(rxpool.operators, name).__doc__
        assert doc and "Cancellation" in doc, name


def test_ships_py_typed() -> None:
    from importlib.resources import files

    assert files("rxpool").joinpath("py.typed").is_file()
