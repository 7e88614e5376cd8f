"""``rxpool map MODULE:FUNCTION [INPUT]``: a function over lines of input, N at a time.

Input is read lazily, one line per job: a JSON value is the function's one
argument; a JSON object with ``args`` (a list) and/or ``kwargs`` (an object)
is spread into the call; with ``--text`` each line, without its newline, is
the argument. Blank lines are skipped. A line that cannot be parsed becomes a
failed result naming its line number. Each result is one JSON line on stdout,
written as it arrives: ``id`` (the line number), ``value`` or ``error``
(``type`` and ``message``), ``attempt``, ``started`` and ``finished`` (Unix
times), ``seconds``.

With ``--journal PATH`` the run is resumable: each finished job is recorded
in the journal (an SQLite file) before its line is written, and running the
same command again first writes the recorded lines, then runs only the rest
(failed lines too, unless ``--keep-failed``). The input is checked against
the records first: a changed line, another function or mode is refused.

Exit status: 0 when every job succeeded, 1 when some failed (a summary on
stderr), 2 for bad usage or a journal that cannot be used (one line on
stderr), 130 after Ctrl-C (the run is cancelled, and every result it still
gives, finished or cancelled, is written first).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import queue
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import IO, Any

from ._adaptive import Adaptive
from ._exceptions import Cancelled, JournalError
from ._job import Job, Result
from ._journal import Journal, JournalRecord, JournalWriter
from ._journaled import EPOCH, journaled
from ._pool import WorkerPool
from ._retry import Retry
from ._token import CancelToken

_DONE = object()


def resolve(spec: str) -> Callable[..., Any]:
    """Import ``MODULE:FUNCTION`` (the current directory first on the path); ValueError if not."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"expected MODULE:FUNCTION, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as error:
        raise ValueError(f"cannot import module {module_name!r}: {error}") from None
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ValueError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not callable(target):
        raise ValueError(f"{spec} is not callable (it is a {type(target).__name__})")
    return target  # type: ignore[no-any-return]


def _bad_line(message: str) -> None:
    raise ValueError(message)


def read_jobs(
    lines: IO[str],
    fn: Callable[..., Any],
    text: bool,
    skip: bytearray | None = None,
) -> Iterator[Job[Any]]:
    """One job per non-blank line, lazily; a bad line is a job that fails with its reason.

    With ``skip`` (a journal's replayed lines, one bit each) those lines are
    passed over, and each job's metadata holds its line's ``sha256``.
    """
    for number, line in enumerate(lines, 1):
        stripped = line.rstrip("\r\n")
        if not stripped.strip():
            continue
        metadata = None
        if skip is not None:
            if _has(skip, number):
                continue
            metadata = {"sha256": digest(stripped)}
        if text:
            yield Job(fn, args=(stripped,), id=number, metadata=metadata)
            continue
        try:
            value = json.loads(stripped)
        except json.JSONDecodeError as error:
            reason = f"line {number}: not valid JSON: {error}"
            yield Job(_bad_line, args=(reason,), id=number, metadata=metadata)
            continue
        if isinstance(value, dict) and value and set(value) <= {"args", "kwargs"}:
            args = value.get("args", [])
            kwargs = value.get("kwargs", {})
            if not isinstance(args, list) or not isinstance(kwargs, dict):
                reason = f"line {number}: 'args' must be a list and 'kwargs' an object"
                yield Job(_bad_line, args=(reason,), id=number, metadata=metadata)
                continue
            yield Job(fn, args=tuple(args), kwargs=kwargs, id=number, metadata=metadata)
        else:
            yield Job(fn, args=(value,), id=number, metadata=metadata)


def digest(line: str) -> str:
    """A line's fingerprint in a journal: its SHA-256 (hex, 32 digits)."""
    return hashlib.sha256(line.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _has(bits: bytearray, n: int) -> bool:
    return n >> 3 < len(bits) and bool(bits[n >> 3] & (1 << (n & 7)))


def _put(bits: bytearray, n: int) -> None:
    if n >> 3 >= len(bits):
        bits.extend(bytes((n >> 3) + 1 - len(bits)))
    bits[n >> 3] |= 1 << (n & 7)


# Results carry monotonic times; the command line writes Unix times.
_EPOCH = EPOCH


def to_line(result: Result[Any]) -> str:
    """The JSON line for one result (a value JSON cannot hold is written as its repr)."""
    record: dict[str, Any] = {"id": result.id}
    if result.error is None:
        record["value"] = result.value
    else:
        record["error"] = {"type": type(result.error).__name__, "message": str(result.error)}
    record.update(
        attempt=result.attempt,
        started=round(_EPOCH + result.started, 6),
        finished=round(_EPOCH + result.finished, 6),
        seconds=round(result.duration, 6),
    )
    return json.dumps(record, default=repr)


def record_line(record: JournalRecord) -> str:
    """The JSON line of a recorded result, as `to_line` wrote it when it was recorded."""
    line = record.to_json()
    del line["line"]  # the id is the line number
    return json.dumps(line, default=repr)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("function", metavar="MODULE:FUNCTION", help="the function to call")
    parser.add_argument(
        "input",
        metavar="INPUT",
        nargs="?",
        default="-",
        help="a file of input lines; '-' or nothing for stdin",
    )
    parser.add_argument("--text", action="store_true", help="each line is a plain string")
    parser.add_argument(
        "--workers",
        type=_workers,
        default=8,
        metavar="N|auto[:MIN-MAX]",
        help="jobs at once (8); auto: an adaptive limit (rxpool.Adaptive, 1-64 by default)",
    )
    parser.add_argument("--ordered", action="store_true", help="results in input order")
    parser.add_argument("--timeout", type=_positive_float, help="seconds a job may run")
    parser.add_argument(
        "--retries", type=_non_negative_int, default=0, help="retries of a failed job (0)"
    )
    parser.add_argument("--rate", type=_positive_float, help="jobs started per second at most")
    parser.add_argument(
        "--fail-fast", action="store_true", help="stop at the first failure (exit 1)"
    )
    parser.add_argument(
        "--backend",
        choices=["thread", "process", "asyncio"],
        default="thread",
        help="where jobs run (thread)",
    )
    parser.add_argument(
        "--chunk-size",
        type=_positive_int,
        help="jobs sent to a process at once, with --backend process (automatic)",
    )
    parser.add_argument(
        "--progress", action="store_true", help="a live progress bar on stderr (a terminal)"
    )
    parser.add_argument(
        "--journal",
        metavar="PATH",
        help="record finished jobs in PATH (SQLite); run again to resume where it stopped",
    )
    parser.add_argument(
        "--keep-failed",
        action="store_true",
        help="with --journal: on resume, write recorded failures again instead of rerunning",
    )


def run_map(
    args: argparse.Namespace,
    parser: argparse.ArgumentParser,
    stdin: IO[str],
    stdout: IO[str],
    stderr: IO[str],
) -> int:
    try:
        fn = resolve(args.function)
    except ValueError as error:
        parser.error(str(error))  # exits 2 with the usage line
    if args.chunk_size is not None and args.backend != "process":
        parser.error("--chunk-size needs --backend process")
    if isinstance(args.workers, Adaptive) and args.backend == "process":
        parser.error("--workers auto needs --backend thread or asyncio (give processes a number)")
    if args.keep_failed and not args.journal:
        parser.error("--keep-failed needs --journal")
    if args.journal and args.input == "-":
        parser.error("--journal needs an INPUT file: stdin cannot be checked on resume")
    try:
        lines = stdin if args.input == "-" else open(args.input, encoding="utf-8")  # noqa: SIM115
    except OSError as error:
        parser.error(f"cannot read {args.input}: {error.strerror}")
    outcomes: Counter[str] = Counter()
    writer: JournalWriter | None = None
    replayed = bytearray()
    if args.journal:
        try:
            writer = _open_journal(args, lines)
            _replay(writer, stdout, outcomes, replayed)
        except JournalError as error:
            if writer is not None:
                writer.close()
            lines.close()
            print(f"rxpool map: {error}", file=stderr)
            return 2
    token = CancelToken()
    retry = Retry(attempts=args.retries + 1) if args.retries else None
    interrupt = _Interrupt(token)
    clean = False  # the results were drained to the end, without Ctrl-C
    started = time.perf_counter()
    pool = WorkerPool(args.workers, backend=args.backend)
    try:
        with interrupt:
            jobs = read_jobs(lines, fn, args.text, replayed if writer is not None else None)

            def run(source: Any) -> Any:
                return pool.run(
                    source,
                    token=token,
                    ordered=args.ordered,
                    timeout=args.timeout,
                    retry=retry,
                    rate=args.rate,
                    fail_fast=args.fail_fast,
                    progress=args.progress,
                    total=_count_jobs(args.input) if args.progress else None,
                    chunk_size=args.chunk_size,
                )

            if writer is None:
                results = run(jobs)
            else:
                opened = writer
                results = journaled(
                    jobs,
                    writer.journal,
                    run,
                    ordered=args.ordered,
                    replay=False,
                    describe=_line_of,
                    open_writer=lambda: opened,
                )
            handoff: queue.Queue[Any] = queue.Queue(maxsize=1024)
            subscription = results.subscribe(
                handoff.put, lambda error: handoff.put(_Failed(error)), lambda: handoff.put(_DONE)
            )
            try:
                _drain(handoff, stdout, outcomes)
            finally:
                subscription.dispose()
            clean = not interrupt.requested
    finally:
        # After Ctrl-C, jobs still running (their results are written as
        # cancelled) are not waited for: their threads end with the process.
        pool.close(wait=clean, cancel_pending=not clean)
        if writer is not None:
            writer.close()
        if lines is not stdin:
            lines.close()
    return _summary(outcomes, interrupt.requested, time.perf_counter() - started, stderr)


def _command(args: argparse.Namespace) -> str:
    return f"rxpool map {args.function}" + (" --text" if args.text else "")


def _open_journal(args: argparse.Namespace, lines: IO[str]) -> JournalWriter:
    """The journal's writer, once the input is checked against its records (JournalError)."""
    writer = JournalWriter(Journal(args.journal, keep_failed=args.keep_failed))
    try:
        command = writer.meta("command")
        if command is None and not writer.empty:
            raise JournalError(f"journal {args.journal} was not written by rxpool map")
        if command is not None and command != _command(args):
            raise JournalError(
                f"journal {args.journal} was written by `{command}`, not `{_command(args)}`"
            )
        _check_input(writer, lines, args)
        lines.seek(0)
        writer.set_meta("command", _command(args))
    except BaseException:
        writer.close()
        raise
    return writer


def _check_input(writer: JournalWriter, lines: IO[str], args: argparse.Namespace) -> None:
    """JournalError at the first recorded line whose text is not the input's now."""
    numbered = enumerate(lines, 1)
    count = 0
    for record in writer.by_line():
        for count, line in numbered:  # noqa: B007 - count is the lines read so far
            if count == record.line:
                break
        else:
            raise JournalError(
                f"journal {args.journal} does not match {args.input}: line {record.line}"
                f" was recorded, and the input has {count} lines"
            )
        if digest(line.rstrip("\r\n")) != record.fingerprint:
            raise JournalError(
                f"journal {args.journal} does not match {args.input}: line {record.line}"
                " has changed since it was recorded"
            )


def _replay(
    writer: JournalWriter, stdout: IO[str], outcomes: Counter[str], replayed: bytearray
) -> None:
    """Write the recorded results (failures only with --keep-failed); mark their lines."""
    keep_failed = writer.journal.keep_failed
    for record in writer.by_line():
        if not (record.ok or keep_failed) or record.line is None:
            continue
        outcomes["ok" if record.ok else record.error_type or "Exception"] += 1
        stdout.write(record_line(record) + "\n")
        _put(replayed, record.line)
    stdout.flush()


def _line_of(job: Job[Any]) -> tuple[int | None, str | None]:
    metadata = job.metadata or {}
    return job.id, metadata.get("sha256")


class _Interrupt:
    """SIGINT while results drain: the first cancels the run, a second stops at once.

    The handler only starts a thread that cancels the token: the main thread
    may be anywhere (inside the hand-off queue's lock, in a write), and the
    results the cancelled run still gives are written as usual.
    """

    def __init__(self, token: CancelToken) -> None:
        self.token = token
        self.requested = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        threading.Thread(
            target=self.token.cancel, args=("interrupted (Ctrl-C)",), daemon=True
        ).start()

    def __enter__(self) -> _Interrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _count_jobs(path: str) -> int | None:
    """Non-blank lines of a regular file, for the progress bar's ETA (None for stdin, pipes)."""
    if path == "-" or not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as lines:
        return sum(1 for line in lines if line.strip())


class _Failed:
    def __init__(self, error: Exception) -> None:
        self.error = error


def _drain(handoff: queue.Queue[Any], stdout: IO[str], outcomes: Counter[str]) -> None:
    """Write results as they come, until the run ends."""
    while True:
        try:
            # A timeout, so that the main thread runs the SIGINT handler soon
            # even when the signal was delivered to a worker thread.
            item = handoff.get(timeout=0.05)
        except queue.Empty:
            continue
        if item is _DONE:
            return
        if isinstance(item, _Failed):  # --fail-fast, or the input could not be read
            outcomes[type(item.error).__name__] += 1
            print(
                f"rxpool map: stopped: {type(item.error).__name__}: {item.error}", file=sys.stderr
            )
            return
        result: Result[Any] = item
        outcomes["ok" if result.ok else type(result.error).__name__] += 1
        stdout.write(to_line(result) + "\n")
        stdout.flush()


def _summary(outcomes: Counter[str], interrupted: bool, seconds: float, stderr: IO[str]) -> int:
    ok = outcomes.pop("ok", 0)
    failed = sum(outcomes.values())
    if interrupted:
        cancelled = outcomes.get(Cancelled.__name__, 0)
        print(
            f"rxpool map: interrupted after {seconds:.1f}s: {ok} succeeded,"
            f" {cancelled} cancelled, {failed - cancelled} failed",
            file=stderr,
        )
        return 130
    if failed:
        kinds = ", ".join(f"{n} {name}" for name, n in outcomes.most_common())
        print(
            f"rxpool map: {failed} of {ok + failed} jobs failed ({kinds}) in {seconds:.1f}s",
            file=stderr,
        )
        return 1
    return 0


def _number(
    kind: Callable[[str], float], minimum: float, expected: str, strict: bool = False
) -> Callable[[str], Any]:
    """An argparse type: a finite ``kind(text)`` >= ``minimum`` (> with ``strict``)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        too_small = value <= minimum if strict else value < minimum
        if too_small or value == float("inf"):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
        return value

    return parse


_positive_int = _number(int, 1, "a positive integer")


def _workers(text: str) -> int | Adaptive:
    """``--workers``: a positive integer, ``auto`` or ``auto:MIN-MAX``."""
    if text == "auto":
        return Adaptive()
    if text.startswith("auto:"):
        low, sep, high = text[5:].partition("-")
        try:
            return Adaptive(min=int(low), max=int(high)) if sep else Adaptive(max=int(low))
        except ValueError as error:
            raise argparse.ArgumentTypeError(
                f"expected auto:MIN-MAX with 1 <= MIN <= MAX, got {text!r} ({error})"
            ) from None
    try:
        result: int = _positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer, auto or auto:MIN-MAX, got {text!r}"
        ) from None
    return result


_non_negative_int = _number(int, 0, "an integer >= 0")
_positive_float = _number(float, 0, "a positive number", strict=True)
