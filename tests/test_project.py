"""The project's promises to a newcomer: the README's commands, the demo, the examples."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def _readme_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.+?)\n```", quick_start)


def test_ci_runs_exactly_the_readme_test_command() -> None:
    demo, tests = _readme_commands()
    assert "rxpool demo" in demo
    assert "pytest" in tests
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in ci


def test_demo_runs_and_summarises() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "rxpool", "demo", "--jobs", "300", "--workers", "20"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "full run" in out and "deadline" in out
    assert re.search(r"done\s+\d+\s+failed\s+\d+\s+cancelled\s+\d+", out)
    assert "jobs/s" in out


def test_demo_rejects_bad_arguments() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "rxpool", "demo", "--workers", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "expected a positive integer" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_readme_names_the_benchmark_command() -> None:
    assert "python -m benchmarks" in (ROOT / "README.md").read_text()
    assert "python -m benchmarks --tiny" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(example: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(example)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()


@given(st.integers(min_value=1, max_value=16))
def test_benchmark_orders_put_every_contender_after_every_other_equally_often(n: int) -> None:
    # The benchmarks' contenders run in these orders; a contender always run
    # right after the same other one measured 0.96x-0.98x of an identical twin.
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks.harness import williams_orders
    finally:
        sys.path.remove(str(ROOT))
    orders = williams_orders(n)
    assert all(sorted(order) == list(range(n)) for order in orders)
    pairs = Counter((a, b) for order in orders for a, b in itertools.pairwise(order))
    assert set(pairs) == {(a, b) for a in range(n) for b in range(n) if a != b}
    assert len(set(pairs.values())) <= 1


@given(st.integers(min_value=1, max_value=16), st.integers(min_value=-2, max_value=40))
def test_benchmark_repetitions_balanced_are_whole_cycles_of_orders(n: int, repeats: int) -> None:
    # Part of a cycle is unbalanced: the CPU-bound section's nine repetitions
    # of seven contenders ran rxpool right after the serial run twice, loky never.
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks.harness import whole_cycles, williams_orders
    finally:
        sys.path.remove(str(ROOT))
    cycle = len(williams_orders(n))
    rounded = whole_cycles(repeats, n)
    assert rounded % cycle == 0 and max(repeats, 1) <= rounded < max(repeats, 1) + cycle
    orders = [williams_orders(n)[r % cycle] for r in range(rounded)]
    after_first = Counter(order[i + 1] for order in orders for i in range(n - 1) if order[i] == 0)
    assert set(after_first) == set(range(1, n))
    assert n == 1 or set(after_first.values()) == {rounded // cycle * (2 if n % 2 else 1)}
