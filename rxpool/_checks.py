"""Argument checks shared by the public entry points: clear errors at the call."""

from __future__ import annotations

from reactivex import abc

from ._token import CancelToken


def check_count(name: str, value: object) -> int:
    """An int >= 1 (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def check_error_types(name: str, value: object) -> tuple[type[BaseException], ...] | None:
    """None, or a tuple of exception types (for ``except value``)."""
    if value is not None and (
        not isinstance(value, tuple)
        or not all(isinstance(t, type) and issubclass(t, BaseException) for t in value)
    ):
        raise TypeError(f"{name} must be a tuple of exception types or None")
    return value


def check_callable(name: str, value: object) -> None:
    if not callable(value):
        raise TypeError(f"{name} must be callable, got {type(value).__name__}")


def check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")


def check_scheduler(scheduler: object) -> None:
    if scheduler is not None and not isinstance(scheduler, abc.SchedulerBase):
        raise TypeError(
            f"scheduler must be a reactivex scheduler or None, got {type(scheduler).__name__}"
        )


def check_token(token: object) -> None:
    if token is not None and not isinstance(token, CancelToken):
        raise TypeError(f"token must be a CancelToken or None, got {type(token).__name__}")
