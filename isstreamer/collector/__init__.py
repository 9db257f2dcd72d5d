"""The embedded Initial State-compatible local collector (aiohttp + SQLite, or PostgreSQL).

``CollectorServer`` runs it in a background thread (tests, demos); ``run_collector`` runs it in
the foreground (``isstreamer serve``). Names are imported lazily so that importing this package
does not import aiohttp.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .app import CollectorConfig, create_app
    from .server import CollectorServer, run_collector
    from .store import Store

__all__ = ["CollectorServer", "run_collector", "CollectorConfig", "create_app", "Store"]

_WHERE = {
    "CollectorServer": "server",
    "run_collector": "server",
    "CollectorConfig": "app",
    "create_app": "app",
    "Store": "store",
}


def __getattr__(name: str) -> Any:
    """Import the public names on first use."""
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError("module %r has no attribute %r" % (__name__, name))
    from importlib import import_module

    value = getattr(import_module("." + module, __name__), name)
    globals()[name] = value
    return value
