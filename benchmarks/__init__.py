"""rxpool's benchmark suite: ``python -m benchmarks`` (``--tiny`` for the CI smoke run)."""
