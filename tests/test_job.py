"""Job, JobDescriptor and Result."""

from __future__ import annotations

import traceback

import pytest

from rxpool import CancelToken, Job, JobDescriptor, Result


def test_job_defaults_and_unique_ids() -> None:
    a = Job(print)
    b = Job(print)
    assert a.id != b.id
    assert a.args == () and dict(a.kwargs) == {}
    assert a.descriptor == JobDescriptor(a.id, None, None)


def test_job_descriptor_fields() -> None:
    job = Job(pow, args=[2, 3], id="j1", kind="math", metadata={"owner": "me"})
    assert job.args == (2, 3)
    assert job.descriptor.id == "j1" and job.id == "j1"
    assert job.descriptor.kind == "math" and job.kind == "math"
    assert job.descriptor.metadata == {"owner": "me"} and job.metadata == {"owner": "me"}


def test_token_parameter_is_detected() -> None:
    def plain(x: int) -> int:
        return x

    def cooperative(x: int, token: CancelToken) -> int:
        return x

    def kw_only(x: int, *, token: CancelToken) -> int:
        return x

    assert not Job(plain, args=(1,)).wants_token
    assert Job(cooperative, args=(1,)).wants_token
    assert Job(kw_only, args=(1,)).wants_token
    assert not Job(cooperative, args=(1,), kwargs={"token": None}).wants_token
    assert not Job(len, args=([],)).wants_token


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fn": 3}, "fn must be callable"),
        ({"fn": print, "args": 5}, "args must be a tuple"),
        ({"fn": print, "args": "abc"}, "args must be a tuple"),
        ({"fn": print, "kwargs": [1]}, "kwargs must be a mapping"),
        ({"fn": print, "kind": 3}, "kind must be a str"),
        ({"fn": print, "metadata": 3}, "metadata must be a mapping"),
    ],
)
def test_job_bad_input(kwargs: dict[str, object], match: str) -> None:
    fn = kwargs.pop("fn")
    with pytest.raises(TypeError, match=match):
        Job(fn, **kwargs)  # type: ignore[arg-type]


def test_result_is_immutable_and_reports_ok() -> None:
    desc = JobDescriptor(1)
    result: Result[int] = Result(2, None, desc, 1, 1.0, 1.5)
    assert result.ok and result.value == 2 and result.unwrap() == 2
    assert result.id == 1 and result.duration == 0.5 and result.attempt == 1
    with pytest.raises(AttributeError):
        result.value = 3  # type: ignore[misc]


def test_result_error_keeps_traceback() -> None:
    def fail() -> None:
        raise KeyError("missing")

    try:
        fail()
    except KeyError as error:
        result: Result[None] = Result(None, error, JobDescriptor(7))
    assert not result.ok
    assert result.error is not None
    assert "fail" in "".join(traceback.format_tb(result.error.__traceback__))
    with pytest.raises(KeyError):
        result.unwrap()
