"""Signal-handler safety: a thread that holds one of the library's locks never waits for itself.

A Python signal handler runs in the main thread between two bytecodes, possibly while that
thread holds a lock of ours (the registry's, a table's, a Streamer's). If the handler then logs
and needs the same lock, it would wait forever. Every such lock is taken through :func:`held`,
which marks the thread as busy; while it is busy, a ``log()`` that needs the slow path calls
:func:`defer` instead, and the event is written when the thread leaves its outermost
:func:`held` section (in order, with the thread still marked, so a handler interrupting that
is deferred too). The C put never needs this: a Python handler never runs inside a C call.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Dict, Iterator, List, Tuple

from . import lazy

log = lazy.Logger("isstreamer")

_inside: Dict[int, List[Tuple[Callable[..., Any], Tuple[Any, ...]]]] = {}


def busy() -> bool:
    """True when this thread is inside a :func:`held` section (a lock of ours may be held)."""
    return threading.get_ident() in _inside


def defer(fn: Callable[..., Any], *args: Any) -> None:
    """Run ``fn(*args)`` when this thread leaves its outermost :func:`held` section."""
    _inside[threading.get_ident()].append((fn, args))


@contextlib.contextmanager
def section() -> Iterator[None]:
    """Mark this thread busy for the duration (nested sections are free); on the way out of the
    outermost one, run what was deferred meanwhile."""
    me = threading.get_ident()
    if me in _inside:
        yield
        return
    queue: List[Tuple[Callable[..., Any], Tuple[Any, ...]]] = []
    _inside[me] = queue
    try:
        yield
    finally:
        try:
            while queue:
                fn, args = queue.pop(0)
                try:
                    fn(*args)
                except Exception:  # noqa: BLE001 - the caller that deferred it is gone
                    log.exception("isstreamer: an event logged from a signal handler failed")
        finally:
            del _inside[me]


@contextlib.contextmanager
def held(lock: Any) -> Iterator[None]:
    """``with lock`` inside a :func:`section`."""
    with section(), lock:
        yield


def after_fork_in_child() -> None:
    """A fork child has one thread, inside no section of the parent's other threads."""
    me = threading.get_ident()
    for ident in list(_inside):
        if ident != me:
            del _inside[ident]
