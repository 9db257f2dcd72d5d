"""Modules imported on first use, safely across ``fork``.

A module imported at first use instead of at ``import isstreamer`` keeps a producer's start-up
short, but a first import runs in whichever thread gets there first. Were the program to fork in
the middle of it, the child would inherit the module half made with its import lock held by a
thread it does not have, and hang on its own first use of it. So these imports hold a lock that
``fork`` takes first (``os.register_at_fork``): a fork waits for an import under way, never cuts
one in two.
"""

from __future__ import annotations

import importlib
import os
import threading
from types import ModuleType
from typing import Dict

_LOCK = threading.RLock()  # re-entrant: a finalizer run inside an import may import too
_LOADED: Dict[str, ModuleType] = {}


def load(name: str) -> ModuleType:
    """The module ``name``, imported (once, under the fork-safe lock) on first use."""
    module = _LOADED.get(name)
    if module is None:
        with _LOCK:
            module = _LOADED.get(name) or importlib.import_module(name)
            _LOADED[name] = module
    return module


def _after_fork_in_child() -> None:
    global _LOCK
    _LOCK = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=lambda: _LOCK.acquire(), after_in_parent=lambda: _LOCK.release(), after_in_child=_after_fork_in_child
    )
