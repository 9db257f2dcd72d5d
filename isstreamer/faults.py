"""Fault injection for the crash-safety tests, the way SQLite tests its journal.

``ISSTREAMER_FAULT_FILE=<path>``: the file holds ``<point> <n>``; the process that reaches the
named :func:`point` for the n-th time removes the file (so only one process fires it, and a
restarted sender runs clean) and kills itself with SIGKILL. Without the variable every point is
a no-op; the variable is read once, when this module is imported.
"""

from __future__ import annotations

import os
import signal

ENV = "ISSTREAMER_FAULT_FILE"
_path = os.environ.get(ENV, "")
_target = ""
_left = 0
if _path:
    try:
        with open(_path, encoding="ascii") as f:
            _name, _n = f.read().split()
        _target, _left = _name, int(_n)
    except (OSError, ValueError):
        _path = ""


def point(name: str) -> None:
    """A step of a shared-state update where a test may kill this process."""
    global _left
    if not _path or name != _target:
        return
    _left -= 1
    if _left > 0:
        return
    try:
        os.unlink(_path)
    except OSError:
        return  # another process fired it
    os.kill(os.getpid(), signal.SIGKILL)
