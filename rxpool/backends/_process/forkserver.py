"""The parent's side of the forkserver: start it once, with what its processes need loaded.

The server's side is `rxpool.backends._process.preload`, on the server's
preload list. Also the check that new processes can run the main module again.
"""

from __future__ import annotations

import ast
import json
import multiprocessing
import os
import sys
import threading
from collections.abc import Sequence
from typing import Any, Final

from ..._remote import (
    Call,
)

__all__ = [
    "PRELOAD_ENVIRONMENT_KEY",
    "PRELOAD_PREPARATION_KEYS",
    "check_main_can_be_imported",
    "check_sys_path_for_forkserver",
    "preload_in_forkserver",
    "start_forkserver",
]


WORKER_MODULE: Final = "rxpool._remote"
# On the forkserver's preload list after the worker module: it runs the main
# module in the server and imports the first jobs' modules (see
# rxpool.backends._process.preload), told what by the parent through this environment
# variable: these keys of `multiprocessing.spawn.get_preparation_data`, the
# modules, and the parent's pid.
PRELOADER: Final = "rxpool.backends._process.preload"
PRELOAD_ENVIRONMENT_KEY: Final = "RXPOOL_FORKSERVER_PRELOAD"
PRELOAD_PREPARATION_KEYS: Final = (
    "sys_path",
    "sys_argv",
    "init_main_from_path",
    "init_main_from_name",
)


def check_main_can_be_imported() -> None:
    """Refuse a main module that new processes would fail to run again.

    ``spawn`` and ``forkserver`` processes run the main script again (as
    ``__mp_main__``) before their first job. A program read from standard
    input has ``__file__ == "<stdin>"``, a file that does not exist, so every
    worker would die at start and every job would come back `WorkerCrashed`.
    A ``python -c`` program or an interactive session has no ``__file__``,
    and ``python -m`` has a module spec: those are fine.
    """
    from multiprocessing import process

    main = sys.modules.get("__main__")
    if main is None or getattr(main, "__spec__", None) is not None:
        return
    if getattr(sys, "frozen", False):  # a frozen program's processes run it, not a file
        return
    path = getattr(main, "__file__", None)
    if not isinstance(path, str) or os.path.splitext(os.path.basename(path))[0] == "ipython":
        return  # multiprocessing does not run IPython's main again
    started_in = getattr(process, "ORIGINAL_DIR", None)  # where multiprocessing looks
    if not os.path.isabs(path) and started_in is not None:
        path = os.path.join(started_in, path)
    if not os.path.exists(path):
        raise RuntimeError(
            f"worker processes cannot start: each runs the main script again, and"
            f" {main.__file__!r} is not a file (a program read from standard input?);"
            " save the program to a file, or use backend='thread'"
        )


def _forkserver_to_start() -> Any:
    """multiprocessing's forkserver object when its server has not started, else None.

    None too for a multiprocessing whose forkserver this does not know.
    """
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    if server is None or getattr(server, "_forkserver_pid", 0) is not None:
        return None
    return server


def check_sys_path_for_forkserver() -> None:
    """Refuse a ``sys.path`` entry that would kill a forkserver about to start.

    multiprocessing writes ``sys.path`` into the server's command line with
    ``repr()``: an entry whose repr is not a Python literal (a
    ``pathlib.Path``) makes the server die at start, and every process start
    then fails with ``EOFError: unexpected EOF``. The import system ignores
    entries that are not ``str``, so such an entry never did anything. A
    server already running is not affected.
    """
    if _forkserver_to_start() is None:
        return
    for index, entry in enumerate(list(sys.path)):
        try:
            ast.literal_eval(repr(entry))
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise ValueError(
                f"sys.path[{index}] is {entry!r}: worker processes cannot start with it"
                " (multiprocessing passes sys.path to the forkserver with repr(), which"
                " this entry does not survive); the import system ignores entries that are"
                " not str, so it does nothing there: put its str() there, or remove it"
            ) from None


def preload_in_forkserver(context: Any) -> None:
    """Have the forkserver import rxpool's worker module once, before it forks workers.

    The preload list only counts before the server starts; the modules already
    on it (``["__main__"]`` unless the program set its own) are kept.
    """
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    preload = list(getattr(server, "_preload_modules", ["__main__"]))
    wanted = [name for name in (WORKER_MODULE, PRELOADER) if name not in preload]
    if wanted:
        context.set_forkserver_preload([*preload, *wanted])


_forkserver_lock = threading.Lock()


def start_forkserver(calls: Sequence[Call] = ()) -> None:
    """Start the forkserver, if it is not running, with what its processes need loaded.

    The server is started with, in an environment variable removed again at
    once, the main module's location (when ``"__main__"`` is on the preload
    list: `rxpool.backends._process.preload` runs it there, which Pythons before 3.13.8
    never do) and the modules of the functions in ``calls`` (the chunk the
    first process will run: `rxpool.backends._process.preload` imports them), so that the
    processes forked from it need not run or import them again. A server
    already running is left as it is.
    """
    from multiprocessing import forkserver, spawn

    if getattr(multiprocessing.current_process(), "_inheriting", False):
        return  # the main module, run by a new process: Process.start says it cannot start one
    server = _forkserver_to_start()
    if server is None:
        return  # running, or a multiprocessing this does not know: it starts as usual
    check_sys_path_for_forkserver()  # the entry may have come after the backend
    data = spawn.get_preparation_data("rxpool")
    keys: tuple[str, ...] = PRELOAD_PREPARATION_KEYS
    if "__main__" not in getattr(server, "_preload_modules", ()):
        keys = tuple(key for key in keys if not key.startswith("init_main"))
    load: dict[str, Any] = {key: data[key] for key in keys if key in data}
    load["modules"] = _modules_of(calls)
    if not load["modules"] and not any(key.startswith("init_main") for key in load):
        return  # nothing to load: no main module (python -c, a session), no known jobs
    load["parent"] = os.getpid()
    with _forkserver_lock:
        os.environ[PRELOAD_ENVIRONMENT_KEY] = json.dumps(load, default=str)  # bytes on sys.path
        try:
            forkserver.ensure_running()
        finally:
            os.environ.pop(PRELOAD_ENVIRONMENT_KEY, None)


def _modules_of(calls: Sequence[Call]) -> list[str]:
    """The importable modules (not the main one) of the functions in ``calls``."""
    names: list[str] = []
    for fn, _, _ in calls:
        name = getattr(fn, "__module__", None)
        if not isinstance(name, str) or name in names or name in ("__main__", "builtins"):
            continue
        if getattr(sys.modules.get(name), "__spec__", None) is not None:  # imported by name
            names.append(name)
    return names
