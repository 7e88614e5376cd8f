"""The process backend: `ProcessBackend`, its worker processes, lanes and forkserver."""

from ._backend import ProcessBackend, default_process_backend

__all__ = ["ProcessBackend", "default_process_backend"]
