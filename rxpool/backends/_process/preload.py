"""Preloaded in the forkserver: what every worker would load, loaded once, in the server.

A process started with ``forkserver`` runs the parent's main module again
(as ``__mp_main__``) before its first job, with every module the main module
imports, and then imports the module of each job function it is sent:
numpy alone costs 50 ms a process, joblib 140 ms. Putting ``"__main__"`` on
the forkserver's preload list is meant to do the first once, in the server,
but before Python 3.13.8 it never did (CPython gh-126631: the server looks
for the main path under a key the parent never fills in).

`rxpool.backends._process.forkserver` starts the forkserver with, in the environment variable
``RXPOOL_FORKSERVER_PRELOAD``, the main module's location and the modules of
the functions of the first chunk to run. Importing this module in the new
server (it is on the preload list) runs the main module there as a worker
would (``__mp_main__``, with the parent's ``sys.path`` and ``sys.argv``) and
imports those modules, so the workers forked from the server find them
loaded. Where the server did it already (fixed Pythons), or where something
fails, nothing changes: a worker loads it itself, as before.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
import threading
from multiprocessing import process, spawn, util
from types import ModuleType

# Importing this module imports the whole of rxpool first (nothing in rxpool
# imports it): the main module it runs in the server finds rxpool whole.
from .forkserver import PRELOAD_ENVIRONMENT_KEY, PRELOAD_PREPARATION_KEYS


def _preload() -> None:
    raw = os.environ.pop(PRELOAD_ENVIRONMENT_KEY, None)  # so that the workers never see it
    if raw is None:
        return
    try:
        data = json.loads(raw)
    except ValueError:
        return
    # Only the server started by the program that set it: a program that
    # inherited the variable and starts its own server has another main.
    if not isinstance(data, dict) or data.pop("parent", None) != os.getppid():
        return
    # The server reads nothing from the parent's stdin: like every process
    # multiprocessing starts, it gets /dev/null (the server would do so itself
    # right after its preload), so a main module that reads stdin at its top
    # level neither waits on the parent's terminal nor takes the parent's input.
    util._close_stdin()  # type: ignore[attr-defined]
    preparation = {key: data[key] for key in PRELOAD_PREPARATION_KEYS if key in data}
    modules = data.get("modules")
    current = process.current_process()
    current._inheriting = True  # type: ignore[attr-defined]  # no process starts from here
    try:
        # A worker runs the main module, or imports a module, that fails here
        # again itself, and says what fails.
        main, threads = sys.modules["__main__"], threading.active_count()
        with contextlib.suppress(BaseException):
            spawn.prepare(preparation)
        if threading.active_count() > threads:  # its top level started a thread: see _undo
            _undo("__main__", main)
        for name in modules if isinstance(modules, list) else ():
            threads = threading.active_count()
            with contextlib.suppress(BaseException):
                importlib.import_module(name)
            if threading.active_count() > threads:
                _undo(name, None)
    finally:
        del current._inheriting  # type: ignore[attr-defined]


def _undo(name: str, before: ModuleType | None) -> None:
    """Forget a module whose top level started a thread: each worker loads it again.

    A process forked from the server has none of the server's threads, so the
    module's thread would be missing in every worker; loaded there, as before,
    each worker starts its own. (The thread goes on in the server.)
    """
    if before is None:
        sys.modules.pop(name, None)
    else:
        sys.modules[name] = before
        sys.modules.pop("__mp_main__", None)


_preload()
