"""`Journal`: a run's durable record of finished jobs, in one SQLite file (WAL mode).

One row per finished job, keyed by the job's id: the outcome (a value, or an
error's type and message), the attempt, the start and finish times (Unix
seconds), and a *fingerprint* of the job (the CLI's: a SHA-256 of the input
line; the Python API's: the function's qualified name). Values and errors
are also kept pickled, so that a resumed run re-emits them as they were.

Only the process that runs the pool reads or writes the file: remote workers
(processes, a Dask cluster) never see it. One run writes a journal at a time,
guarded by an advisory lock on ``PATH.lock`` that the system releases when
the holder dies (a SIGKILL included). Records are written by the run's
journal thread in group commits (`JournalWriter.write`), each one durable
(``synchronous=FULL``) before any of its results is emitted.
"""

from __future__ import annotations

import functools
import json
import os
import pickle
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, NamedTuple

from ._exceptions import JournalError

__all__ = ["Journal", "JournalRecord"]

FORMAT = "rxpool-journal"
VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    key TEXT PRIMARY KEY,
    line INTEGER,
    fingerprint TEXT,
    ok INTEGER NOT NULL,
    value BLOB,
    value_json TEXT,
    error_type TEXT,
    error_message TEXT,
    error BLOB,
    attempt INTEGER NOT NULL,
    started REAL NOT NULL,
    finished REAL NOT NULL,
    recorded REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS records_by_line ON records (line) WHERE line IS NOT NULL;
"""

_COLUMNS = (
    "key, line, fingerprint, ok, value, value_json, error_type, error_message, error,"
    " attempt, started, finished, recorded"
)


class JournalRecord(NamedTuple):
    """One finished job as the journal holds it (times are Unix seconds)."""

    id: Any
    """The job's id (a tuple id reads back as a list: the key is stored as JSON)."""
    ok: bool
    value_json: str | None
    """The value as JSON (its ``repr`` where JSON cannot hold it); None for a failure."""
    error_type: str | None
    error_message: str | None
    attempt: int
    started: float
    finished: float
    line: int | None
    """The input line, for a run of the ``rxpool map`` command; else None."""
    fingerprint: str | None
    """What the job was: a hash of the input line, or the function's qualified name."""
    value_blob: bytes | None = None
    error_blob: bytes | None = None

    def __repr__(self) -> str:
        outcome = (
            f"value_json={self.value_json!r}"
            if self.ok
            else f"error={self.error_type}: {self.error_message!r}"
        )
        return f"JournalRecord(id={self.id!r}, {outcome}, attempt={self.attempt})"

    @property
    def value(self) -> Any:
        """The value, unpickled (``JournalError`` if it could only be kept as JSON)."""
        if not self.ok:
            return None
        if self.value_blob is None:
            raise JournalError(f"the value of job {self.id!r} was not picklable: see value_json")
        return pickle.loads(self.value_blob)

    @property
    def error(self) -> BaseException | None:
        """The job's exception: unpickled, or a `RecordedError` with its type and message."""
        if self.ok:
            return None
        if self.error_blob is not None:
            try:
                error = pickle.loads(self.error_blob)
            except Exception:  # its class moved, or cannot be rebuilt
                pass
            else:
                if isinstance(error, BaseException):
                    return error
        return RecordedError(self.error_type or "Exception", self.error_message or "")

    @property
    def replayable(self) -> bool:
        """True if a resumed Python run can re-emit it as it was (value or error pickled)."""
        return self.value_blob is not None if self.ok else True

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON object (as `Journal.export_jsonl` writes it)."""
        out: dict[str, Any] = {"id": self.id}
        if self.line is not None:
            out["line"] = self.line
        if self.ok:
            out["value"] = json.loads(self.value_json) if self.value_json is not None else None
        else:
            out["error"] = {"type": self.error_type, "message": self.error_message}
        out.update(
            attempt=self.attempt,
            started=round(self.started, 6),
            finished=round(self.finished, 6),
            seconds=round(self.finished - self.started, 6),
        )
        return out


class RecordedError(Exception):
    """A replayed job's error whose exception could not be rebuilt: its type name and message."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message


def _record(row: Sequence[Any]) -> JournalRecord:
    (key, line, fingerprint, ok, value, value_json, error_type, error_message, error) = row[:9]
    attempt, started, finished = row[9:12]
    return JournalRecord(
        json.loads(key),
        bool(ok),
        value_json,
        error_type,
        error_message,
        attempt,
        started,
        finished,
        line,
        fingerprint,
        value,
        error,
    )


def _connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, timeout=10.0, check_same_thread=False, isolation_level=None)
    return connection


def _describe(error: sqlite3.Error) -> str:
    return f"{error} (not an rxpool journal, or the file is damaged)"


class Journal:
    """A durable record of a run's finished jobs, in an SQLite file; open one to inspect a run.

    Pass a path or a `Journal` as ``journal=`` to `WorkerPool.run` or
    `rxpool.operators.run_jobs` (or ``--journal PATH`` to ``rxpool map``): the
    first run creates the file, and each later run with the same journal
    resumes, re-emitting the recorded results (marked ``Result.replayed``)
    instead of running their jobs again. Opening a missing file creates
    nothing; an existing one is checked at once.

    Args:
        path: The journal's file.
        keep_failed: On resume, re-emit recorded failures too; by default
            failed jobs run again (and their new outcome replaces the record).

    Raises:
        TypeError: ``path`` is not a str or os.PathLike.
        JournalError: the file is not an rxpool journal, is damaged, or was
            written by an incompatible version of rxpool.
    """

    def __init__(self, path: str | os.PathLike[str], *, keep_failed: bool = False) -> None:
        if not isinstance(path, str | os.PathLike):
            raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
        if not isinstance(keep_failed, bool):
            raise TypeError(f"keep_failed must be a bool, got {type(keep_failed).__name__}")
        self.path = Path(path)
        self.keep_failed = keep_failed
        if self.path.exists():
            with self._reading() as connection:
                check_format(connection, self.path)

    def __repr__(self) -> str:
        return f"Journal({str(self.path)!r}, keep_failed={self.keep_failed})"

    def __reduce__(self) -> Any:
        raise TypeError("a Journal lives with the client that runs the pool: it is not sent away")

    def _reading(self) -> _Reading:
        return _Reading(self.path)

    def _query(self, sql: str, *params: Any) -> list[Any]:
        if not self.path.exists():
            return []
        with self._reading() as connection:
            try:
                return connection.execute(sql, params).fetchall()
            except sqlite3.DatabaseError as error:
                raise JournalError(f"journal {self.path}: {_describe(error)}") from None

    def __len__(self) -> int:
        rows = self._query("SELECT count(*) FROM records")
        return int(rows[0][0]) if rows else 0

    def counts(self) -> dict[str, int]:
        """Recorded jobs by outcome: ``{"ok": n, "failed": m, <error type>: k, ...}``."""
        counts = {"ok": 0, "failed": 0}
        for ok, error_type, n in self._query(
            "SELECT ok, error_type, count(*) FROM records GROUP BY ok, error_type"
        ):
            if ok:
                counts["ok"] += n
            else:
                counts["failed"] += n
                counts[error_type] = counts.get(error_type, 0) + n
        return counts

    def get(self, id: Any) -> JournalRecord | None:
        """The record of the job with this id, or None."""
        rows = self._query(f"SELECT {_COLUMNS} FROM records WHERE key = ?", encode_id(id))
        return _record(rows[0]) if rows else None

    def __contains__(self, id: object) -> bool:
        return self.get(id) is not None

    def records(self) -> list[JournalRecord]:
        """Every record: by input line (the command line's), else as they finished."""
        rows = self._query(f"SELECT {_COLUMNS} FROM records ORDER BY line, finished")
        return [_record(row) for row in rows]

    def failed(self) -> list[JournalRecord]:
        """The records of failed jobs, in the order of `records`."""
        rows = self._query(f"SELECT {_COLUMNS} FROM records WHERE ok = 0 ORDER BY line, finished")
        return [_record(row) for row in rows]

    def export_jsonl(self, out: str | os.PathLike[str] | IO[str]) -> int:
        """Write every record as one JSON line (`JournalRecord.to_json`); the count written."""
        if isinstance(out, str | os.PathLike):
            with open(out, "w", encoding="utf-8") as file:
                return self.export_jsonl(file)
        count = 0
        for record in self.records():
            out.write(json.dumps(record.to_json(), default=repr) + "\n")
            count += 1
        return count


class _Reading:
    """A short-lived read-only connection (``with``), closed on exit."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._connection: sqlite3.Connection | None = None

    def __enter__(self) -> sqlite3.Connection:
        try:
            self._connection = sqlite3.connect(
                f"{self._path.resolve().as_uri()}?mode=ro", uri=True, timeout=10.0
            )
        except sqlite3.Error as error:
            raise JournalError(f"journal {self._path}: {_describe(error)}") from None
        return self._connection

    def __exit__(self, *exc: object) -> None:
        if self._connection is not None:
            self._connection.close()


def check_format(connection: sqlite3.Connection, path: Path) -> None:
    """JournalError unless ``connection`` holds an rxpool journal of this format version."""
    try:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
        if not tables:
            return  # an empty file: a journal that was created and never written
        if "meta" not in tables or "records" not in tables:
            raise JournalError(f"journal {path}: not an rxpool journal (no meta/records tables)")
        meta = dict(connection.execute("SELECT key, value FROM meta").fetchall())
        problem = connection.execute("PRAGMA quick_check(1)").fetchone()[0]
    except sqlite3.DatabaseError as error:
        raise JournalError(f"journal {path}: {_describe(error)}") from None
    if meta.get("format") != FORMAT:
        raise JournalError(f"journal {path}: not an rxpool journal")
    if meta.get("version") != str(VERSION):
        raise JournalError(
            f"journal {path}: written by an incompatible rxpool"
            f" (journal format {meta.get('version')}; this rxpool reads format {VERSION})"
        )
    if problem != "ok":
        raise JournalError(f"journal {path}: the file is damaged ({problem})")


def encode_id(id: Any) -> str:
    """A job id as the journal's key (JSON text); ValueError for an id it cannot key."""
    if type(id) is int:
        return str(id)  # the same JSON, faster
    if not _keyable(id):
        raise ValueError(
            f"a journal keys jobs by id: ids must be str, int or tuples of them, got {id!r}"
        )
    return json.dumps(id, separators=(",", ":"))


def _keyable(id: object) -> bool:
    if isinstance(id, str):
        return True
    if isinstance(id, int):
        return not isinstance(id, bool)
    if isinstance(id, tuple | list):
        return all(_keyable(part) for part in id)
    return False


class _Lock:
    """An exclusive advisory lock on ``PATH.lock``, held while a run writes the journal."""

    def __init__(self, path: Path) -> None:
        self._path = path.with_name(path.name + ".lock")
        self._file: IO[str] | None = None

    def acquire(self, journal: Path) -> None:
        file = open(self._path, "a+", encoding="utf-8")  # noqa: SIM115 - held until release
        try:
            _lock_file(file)
        except OSError:
            file.seek(0)
            holder = file.read().strip() or "another process"
            file.close()
            raise JournalError(
                f"journal {journal} is in use by another run ({holder}):"
                " one run writes a journal at a time"
            ) from None
        file.seek(0)
        file.truncate()
        file.write(f"pid {os.getpid()}")
        file.flush()
        self._file = file

    def release(self) -> None:
        if self._file is not None:
            _unlock_file(self._file)
            self._file.close()
            self._file = None


try:
    import fcntl

    def _lock_file(file: IO[str]) -> None:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock_file(file: IO[str]) -> None:
        fcntl.flock(file.fileno(), fcntl.LOCK_UN)

except ImportError:  # pragma: no cover - Windows
    import msvcrt

    def _lock_file(file: IO[str]) -> None:
        file.seek(0)
        msvcrt.locking(file.fileno(), msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]

    def _unlock_file(file: IO[str]) -> None:
        file.seek(0)
        msvcrt.locking(file.fileno(), msvcrt.LK_UNLCK, 1)  # type: ignore[attr-defined]


# A run in this process that still holds a journal (its thread finishing the
# last commit after a dispose): the next run of the same file waits for it.
_holders: dict[Path, JournalWriter] = {}
_holders_lock = threading.Lock()


class Row(NamedTuple):
    """What `JournalWriter.write` records for one finished job."""

    key: str
    line: int | None
    fingerprint: str | None
    ok: bool
    value: Any
    error: BaseException | None
    attempt: int
    started: float  # Unix seconds
    finished: float


class JournalWriter:
    """The one writer of a journal, for one run: takes the lock, records, looks up, closes."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self._path = journal.path
        key = self._path.resolve()
        with _holders_lock:
            previous = _holders.get(key)
        if previous is not None and previous.ending.is_set():
            previous.released.wait(10.0)  # a run of this process, committing its last batch
        self._lock = _Lock(self._path)
        self._lock.acquire(self._path)
        self.ending: threading.Event = threading.Event()  # its run ended or was disposed
        self.released: threading.Event = threading.Event()
        with _holders_lock:
            _holders[key] = self
        self._key = key
        try:
            self._connection = _connect(self._path)
            self._setup()
        except BaseException:
            self._unlock()
            raise
        self._read_lock = threading.Lock()  # one statement at a time on the connection
        variables = self._connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        self._rows_per_statement = max(1, min(variables // _WIDTH, 2048))
        self._closed = False
        self.empty = self._count() == 0

    def _setup(self) -> None:
        connection = self._connection
        try:
            check_format(connection, self._path)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")
            connection.executescript(_SCHEMA)
            connection.execute(
                "INSERT OR IGNORE INTO meta VALUES ('format', ?), ('version', ?), ('created', ?)",
                (FORMAT, str(VERSION), str(time.time())),
            )
        except sqlite3.DatabaseError as error:
            connection.close()
            raise JournalError(f"journal {self._path}: {_describe(error)}") from None

    def _count(self) -> int:
        return int(self._connection.execute("SELECT count(*) FROM records").fetchone()[0])

    def lookup(self, key: str) -> JournalRecord | None:
        """The record under ``key`` (any thread)."""
        if self.empty:
            return None
        with self._read_lock:
            row = self._connection.execute(
                f"SELECT {_COLUMNS} FROM records WHERE key = ?", (key,)
            ).fetchone()
        return _record(row) if row is not None else None

    def by_line(self) -> Iterator[JournalRecord]:
        """The records of input lines, in line order (for the command line), a page at a time."""
        last = -1
        while True:
            with self._read_lock:
                rows = self._connection.execute(
                    f"SELECT {_COLUMNS} FROM records WHERE line > ? ORDER BY line LIMIT 4096",
                    (last,),
                ).fetchall()
            if not rows:
                return
            for row in rows:
                yield _record(row)
            last = rows[-1][1]

    def meta(self, key: str) -> str | None:
        """A value the run keeps beside its records (the command line's command)."""
        with self._read_lock:
            row = self._connection.execute("SELECT value FROM meta WHERE key = ?", (key,))
            found = row.fetchone()
        return None if found is None else str(found[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._read_lock:
            self._connection.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def write(self, rows: Sequence[Row]) -> None:
        """Record ``rows`` in one transaction, durable when this returns."""
        if not rows:
            return
        now = time.time()
        values = [_encode(row, now) for row in rows]
        # Many rows per statement: each statement lets go of the GIL once, and
        # taking it back from busy worker threads can cost a switch interval
        # (executemany, one step per row, is a hundred times slower then).
        per = self._rows_per_statement
        connection = self._connection
        with self._read_lock:
            connection.execute("BEGIN IMMEDIATE")
            try:
                for start in range(0, len(values), per):
                    chunk = values[start : start + per]
                    connection.execute(_insert(len(chunk)), [x for row in chunk for x in row])
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    def close(self) -> None:
        """Close the file and release the lock (once; from any thread)."""
        with self._read_lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._connection.close()
            finally:
                self._unlock()

    def _unlock(self) -> None:
        self._lock.release()
        with _holders_lock:
            if _holders.get(self._key) is self:
                del _holders[self._key]
        self.released.set()


_WIDTH = len(_COLUMNS.split(","))
_to_json = json.JSONEncoder(default=repr).encode  # one encoder: json.dumps makes one a call


@functools.lru_cache(maxsize=8)
def _insert(rows: int) -> str:
    """``INSERT OR REPLACE`` of ``rows`` rows in one statement."""
    one = "(" + ", ".join("?" * _WIDTH) + ")"
    return f"INSERT OR REPLACE INTO records ({_COLUMNS}) VALUES " + ", ".join([one] * rows)


def _encode(row: Row, now: float) -> tuple[Any, ...]:
    if row.ok:
        value_blob = _pickled(row.value)
        value_json = _to_json(row.value)
        error_type = error_message = error_blob = None
    else:
        value_blob = value_json = None
        error = row.error
        error_type = type(error).__name__
        error_message = str(error)
        error_blob = _pickled(error)
    return (
        row.key,
        row.line,
        row.fingerprint,
        int(row.ok),
        value_blob,
        value_json,
        error_type,
        error_message,
        error_blob,
        row.attempt,
        row.started,
        row.finished,
        now,
    )


def _pickled(obj: object) -> bytes | None:
    try:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # kept as JSON / type and message only
        return None
