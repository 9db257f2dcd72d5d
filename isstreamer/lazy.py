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
from typing import Any, Callable, Dict

_LOCK = threading.RLock()  # re-entrant: a finalizer run inside an import may import too
_LOADED: Dict[str, ModuleType] = {}
_HOOKS: Dict[str, Callable[[ModuleType], None]] = {}


def load(name: str, wait: bool = True) -> ModuleType:
    """The module ``name``, imported (once, under the fork-safe lock) on first use. ``wait=False``:
    while another import holds the lock (perhaps this very thread's, interrupted by a signal
    handler), import it without the lock rather than wait."""
    module = _LOADED.get(name)
    if module is None:
        locked = _LOCK.acquire(wait)
        try:
            module = _LOADED.get(name)
            if module is None:
                module = importlib.import_module(name)
                hook = _HOOKS.pop(name, None)
                if hook is not None:
                    hook(module)
                _LOADED[name] = module
        finally:
            if locked:
                _LOCK.release()
    return module


def when_loaded(name: str, hook: Callable[[ModuleType], None]) -> None:
    """Call ``hook(module)`` once, when :func:`load` first loads ``name`` (now if it has)."""
    with _LOCK:
        module = _LOADED.get(name)
        if module is None:
            _HOOKS[name] = hook
            return
    hook(module)


class Logger:
    """``logging.getLogger(name)``, with ``logging`` imported at the first message: it imports
    ``traceback``, ``string`` and ``weakref`` (about 5 ms of a producer's import and of the
    sender's start-up), for messages that a normal run never writes."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:  # the logger's methods and attributes
        # never waits for the lazy lock: a signal handler's message may come while its own thread
        # holds it (isstreamer.reentry's promise: a handler never waits for a lock its thread holds)
        return getattr(load("logging", wait=False).getLogger(self._name), attr)


def _after_fork_in_child() -> None:
    global _LOCK
    _LOCK = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=lambda: _LOCK.acquire(), after_in_parent=lambda: _LOCK.release(), after_in_child=_after_fork_in_child
    )
