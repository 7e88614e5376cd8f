"""What crosses between a worker and the program: outcomes pickled and loaded again.

In-process (pickled and loaded here, as a worker and the program do), away
from the clusters of test_backends, whose threads would use the global random
state while Hypothesis generates examples.
"""

from __future__ import annotations

import threading

from hypothesis import given, settings
from hypothesis import strategies as st

from rxpool._remote import dumps_outcomes, load_outcomes, run_calls

from . import _jobs


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(["ValueError", "NeedsCode"]),
    attributes=st.dictionaries(
        st.sampled_from(["code", "detail", "response", "handle"]),
        st.one_of(
            st.integers(), st.text(max_size=5), st.lists(st.integers(), max_size=3), st.just("LOCK")
        ),
    ),
)
def test_a_job_error_crosses_as_its_type_with_every_attribute_that_pickles(
    kind: str, attributes: dict[str, object]
) -> None:
    # What a worker sends, as the program loads it: the outcomes pickled and loaded.
    attributes = {k: threading.Lock() if v == "LOCK" else v for k, v in attributes.items()}
    calls = [(_jobs.raise_with, (kind, attributes), {})]
    [(ok, error, _)] = load_outcomes(dumps_outcomes(run_calls(calls, sent=True)), 1)
    assert not ok
    assert type(error).__name__ == kind and error.args == ("m",)
    left = [k for k, v in attributes.items() if isinstance(v, type(threading.Lock()))]
    for name, value in attributes.items():
        if name in left:
            assert not hasattr(error, name)
        else:
            assert getattr(error, name) == value
    notes = error.__notes__
    assert notes[0].startswith("in the worker:")
    named = [n.split("cannot be pickled): ")[1].split(", ") for n in notes if "pickled): " in n]
    assert [set(names) for names in named] == ([set(left)] if left else [])
