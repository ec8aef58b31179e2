"""Child interpreters that run this process's own code: the refit worker (`tradepulse.bus.refit_pool`)
and the session table's computation (`tradepulse.bus.pipeline.nyse_sessions`).

The child gets this process's import path (as a `multiprocessing` spawn passes it), so it runs the same
`tradepulse` whatever put it on the path (a venv, a script's folder, `PYTHONPATH`). It runs with `-P`:
the working directory is not put on the path (before the parent's path replaces it, nothing there
shadows `json`). Started with `subprocess`, it is exec'd at once: nothing of the parent's memory or
threads (librdkafka's) is copied into it.
"""

from __future__ import annotations

import json
import sys


def python_command(statements: str, *args: str) -> list[str]:
    """The command of a child interpreter that runs `statements` (one line of Python) with this
    process's import path; the child's `sys.argv` is `["-c", *args]`."""
    bootstrap = f"import json, sys; sys.path[:] = json.loads(sys.argv.pop(1)); {statements}"
    return [sys.executable, "-P", "-c", bootstrap, json.dumps(sys.path), *args]
