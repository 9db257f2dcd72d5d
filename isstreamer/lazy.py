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
import sys
import threading
from types import ModuleType
from typing import Any, Callable, Dict, Set, Tuple

_LOCK = threading.RLock()  # re-entrant: a finalizer run inside an import may import too
_LOADED: Dict[str, ModuleType] = {}
_HOOKS: Dict[str, Callable[[ModuleType], None]] = {}
_IMPORTING: Set[Tuple[int, str]] = set()  # (thread, module) of the first imports under way


class InProgress(ImportError):
    """The module is being imported by this very thread: a signal handler or a finalizer ran in
    the middle of its first import (the module is half made: never handed out)."""


def load(name: str, wait: bool = True) -> ModuleType:
    """The module ``name``, imported (once, under the fork-safe lock) on first use. ``wait=False``:
    while another thread's import holds the lock, import it without the lock rather than wait.

    A first import is one of the library's sections (:mod:`isstreamer.reentry`): a signal
    handler or finalizer that logs in the middle of it has its follow-up work deferred until
    the import ends, and one that needs this very module gets :class:`InProgress`."""
    module = _LOADED.get(name)
    if module is None:
        me = (threading.get_ident(), name)
        if me in _IMPORTING:
            raise InProgress("isstreamer: %s is being imported by this thread" % name)
        from . import reentry  # (reentry imports this module)

        with reentry.section():  # what it defers runs once the module is loaded and the lock free
            locked = _LOCK.acquire(wait)
            try:
                module = _LOADED.get(name)
                if module is None:
                    _IMPORTING.add(me)
                    try:
                        module = importlib.import_module(name)
                    finally:
                        _IMPORTING.discard(me)
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
        # never waits for the lazy lock: a signal handler's message may come while another
        # thread holds it (isstreamer.reentry's promise: a handler never waits on a lock)
        try:
            logging = load("logging", wait=False)
        except InProgress:  # a message from inside logging's own first import: plain stderr
            return _StderrLogger(self._name).__getattribute__(attr)
        return getattr(logging.getLogger(self._name), attr)


class _StderrLogger:
    """The messages of a logger asked for while ``logging`` itself is being imported."""

    def __init__(self, name: str) -> None:
        self.name = name

    def _write(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        try:
            sys.stderr.write("%s\n" % ((msg % args) if args else msg))
        except Exception:  # noqa: BLE001 - a message never raises
            pass

    debug = info = warning = error = exception = critical = _write

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 - logging's name
        return level >= 30


def _after_fork_in_child() -> None:
    global _LOCK
    _LOCK = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=lambda: _LOCK.acquire(), after_in_parent=lambda: _LOCK.release(), after_in_child=_after_fork_in_child
    )
