"""Preloaded in the forkserver: the main module runs there once, not in every worker.

A process started with ``forkserver`` runs the parent's main module again
(as ``__mp_main__``) before its first job, with every module the main module
imports: numpy alone costs 50 ms a process, joblib 140 ms. Putting
``"__main__"`` on the forkserver's preload list is meant to do that once, in
the server, but before Python 3.13.8 it never did (CPython gh-126631: the
server looks for the main path under a key the parent never fills in).

`rxpool.backends` starts the forkserver with the main module's location in
the environment variable ``RXPOOL_FORKSERVER_MAIN``; importing this module
in the new server (it is on the preload list) runs the main module there as
a worker would (``__mp_main__``, with the parent's ``sys.path`` and
``sys.argv``). The workers forked from the server then find it done. Where
the server did it already (fixed Pythons), or where it fails, nothing
changes: a worker runs the main module itself, as before.
"""

from __future__ import annotations

import json
import os
from multiprocessing import process, spawn

# This module imports `rxpool.backends`, never the other way round: the server
# imports it after the whole package, so the main module it runs finds rxpool whole.
from .backends import _MAIN_ENVIRONMENT_KEY, _MAIN_PREPARATION_KEYS


def _preload_main() -> None:
    raw = os.environ.pop(_MAIN_ENVIRONMENT_KEY, None)  # so that the workers never see it
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
    preparation = {key: data[key] for key in _MAIN_PREPARATION_KEYS if key in data}
    current = process.current_process()
    current._inheriting = True  # type: ignore[attr-defined]  # as multiprocessing does
    try:
        spawn.prepare(preparation)
    except BaseException:  # each worker runs it again, and reports what fails there
        pass
    finally:
        del current._inheriting  # type: ignore[attr-defined]


_preload_main()
