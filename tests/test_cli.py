"""``rxpool map`` as a user runs it: real subprocesses, real signals, a real terminal."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pexpect
import pyte
import pytest

from ._helpers import wait_until

WORK = textwrap.dedent(
    """
    import time

    def square(x):
        if x == 3:
            raise ValueError("three is bad")
        return x * x

    def add(a, b=0):
        return a + b

    def slow(x):
        time.sleep(x)
        return x

    def marked(x):
        if x:  # say that a long job is running: a file in the current directory
            open(f"running-{time.monotonic_ns()}", "w").close()
        time.sleep(x)
        return x

    calls = {}

    def flaky(x):
        calls[x] = calls.get(x, 0) + 1
        if calls[x] < 3:
            raise ConnectionError("try again")
        return x

    NOT_A_FUNCTION = 42
    """
)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "work.py").write_text(WORK)
    return tmp_path


def rxpool(
    workdir: Path, *args: str, stdin: str = "", timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rxpool", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=workdir,
        timeout=timeout,
    )


def records(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


def test_map_writes_one_json_line_per_result_and_exits_1_on_failures(workdir: Path) -> None:
    (workdir / "in.jsonl").write_text('1\n2\n3\n\n{"args": [4]}\nnot json\n')
    proc = rxpool(workdir, "map", "work:square", "in.jsonl", "--ordered")
    assert proc.returncode == 1
    out = records(proc.stdout)
    assert [r["id"] for r in out] == [1, 2, 3, 5, 6]  # line numbers; the blank line is skipped
    assert [r.get("value") for r in out] == [1, 4, None, 16, None]
    assert out[2]["error"] == {"type": "ValueError", "message": "three is bad"}
    assert out[4]["error"]["type"] == "ValueError"
    assert "line 6" in out[4]["error"]["message"]
    for r in out:
        assert r["attempt"] == 1 and r["finished"] >= r["started"] > 1e9 and r["seconds"] >= 0
    assert "2 of 5 jobs failed" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_map_reads_stdin_kwargs_and_text_and_exits_0(workdir: Path) -> None:
    # A JSON list is one argument (a list), not an argument list: add([5]) fails.
    proc = rxpool(workdir, "map", "work:add", stdin="[5]\n")
    assert proc.returncode == 1
    assert records(proc.stdout)[0]["error"]["type"] == "TypeError"
    stdin = '{"args": [1], "kwargs": {"b": 2}}\n7\n'
    proc = rxpool(workdir, "map", "work:add", "--ordered", stdin=stdin)
    assert proc.returncode == 0, proc.stderr
    assert [r["value"] for r in records(proc.stdout)] == [3, 7]
    proc = rxpool(workdir, "map", "builtins:len", "--text", "--ordered", stdin="a\nbb\n ccc\n")
    assert proc.returncode == 0
    assert [r["value"] for r in records(proc.stdout)] == [1, 2, 4]
    assert proc.stderr == ""


def test_map_options_timeout_retries_fail_fast_and_backends(workdir: Path) -> None:
    # A job of 1 s past its 0.1 s: the command waits for it before exiting.
    proc = rxpool(workdir, "map", "work:slow", "--timeout", "0.1", stdin="1\n0\n")
    assert proc.returncode == 1
    errors = {r["id"]: r.get("error", {}).get("type") for r in records(proc.stdout)}
    assert errors == {1: "JobTimeout", 2: None}

    proc = rxpool(workdir, "map", "work:flaky", "--retries", "2", stdin="1\n2\n")
    assert proc.returncode == 0, proc.stdout
    assert {r["attempt"] for r in records(proc.stdout)} == {3}

    lines = "".join(f"{i}\n" for i in range(200))
    proc = rxpool(workdir, "map", "work:square", "--fail-fast", "--workers", "1", stdin=lines)
    assert proc.returncode == 1
    assert "ValueError" in proc.stderr
    assert len(records(proc.stdout)) < 200

    for backend in ("process", "asyncio"):
        proc = rxpool(workdir, "map", "work:add", "--backend", backend, "--ordered", stdin="1\n2\n")
        assert proc.returncode == 0, proc.stderr
        assert [r["value"] for r in records(proc.stdout)] == [1, 2]
    proc = rxpool(
        workdir, "map", "work:add", "--backend", "process", "--chunk-size", "2", stdin="1\n2\n3\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(r["value"] for r in records(proc.stdout)) == [1, 2, 3]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["map", "work:square", "--bogus"], "unrecognized arguments"),
        (["map", "work:square", "--workers", "0"], "expected a positive integer"),
        (["map", "work:square", "--timeout", "soon"], "expected a positive number"),
        (["map", "work:square", "--backend", "gpu"], "invalid choice"),
        (["map", "work:square", "--chunk-size", "5"], "--chunk-size needs --backend process"),
        (["map", "work:square", "--backend", "process", "--chunk-size", "0"], "positive integer"),
        (["map", "nowhere:square"], "cannot import module 'nowhere'"),
        (["map", "work:missing"], "has no attribute 'missing'"),
        (["map", "work:NOT_A_FUNCTION"], "is not callable"),
        (["map", "work"], "expected MODULE:FUNCTION"),
        (["map", "work:square", "no-such-file.jsonl"], "cannot read no-such-file.jsonl"),
        (["map"], "the following arguments are required"),
    ],
)
def test_bad_usage_exits_2_with_a_message_and_no_traceback(
    workdir: Path, args: list[str], message: str
) -> None:
    proc = rxpool(workdir, *args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_ctrl_c_cancels_flushes_and_exits_130(workdir: Path) -> None:
    lines = "0\n" * 4 + "30\n" * 200  # four quick jobs, then jobs that would take minutes
    proc = subprocess.Popen(
        [sys.executable, "-m", "rxpool", "map", "work:marked", "--workers", "4"],
        cwd=workdir,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(lines)
    proc.stdin.close()
    first = [proc.stdout.readline() for _ in range(4)]  # the quick ones are out
    assert wait_until(lambda: any(workdir.glob("running-*")))  # and a long one runs
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)  # its output (a few hundred short lines) fits in the pipes
    assert proc.stderr is not None
    rest, err = proc.stdout.read(), proc.stderr.read()
    assert time.monotonic() - started < 10  # not the minutes the running jobs would take
    assert proc.returncode == 130
    out = records("".join(first) + rest)
    assert [r["value"] for r in out[:4]] == [0, 0, 0, 0]
    cancelled = [r for r in out[4:] if r.get("error", {}).get("type") == "Cancelled"]
    # The jobs that were running are reported as cancelled (not waited for).
    assert len(cancelled) == len(out) - 4 >= 1
    assert "interrupted" in err and "Traceback" not in err


def test_progress_bar_in_a_real_terminal(workdir: Path) -> None:
    (workdir / "in.txt").write_text("".join("0.01\n" for _ in range(60)))
    columns, rows = 100, 10
    child = pexpect.spawn(
        sys.executable,
        ["-m", "rxpool", "map", "work:slow", "in.txt", "--workers", "4", "--progress"],
        cwd=str(workdir),
        dimensions=(rows, columns),
        encoding="utf-8",
        timeout=30,
    )
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    screen = pyte.Screen(columns, rows)
    pyte.Stream(screen).feed(child.before)
    text = "\n".join(screen.display)
    # stdout and stderr share the terminal: the results, then the finished bar.
    assert '"value": 0.01' in text
    bar = [line for line in screen.display if "done=" in line]
    assert bar, text
    assert "60/60" in bar[-1] and "done=60" in bar[-1] and "failed=0" in bar[-1]
    assert "job/s" in bar[-1] or "s/job" in bar[-1]


def test_progress_is_silent_when_stderr_is_not_a_terminal(workdir: Path) -> None:
    proc = rxpool(workdir, "map", "work:square", "--progress", stdin="1\n2\n")
    assert proc.returncode == 0
    assert proc.stderr == ""
