"""The C hot path of :class:`~isstreamer.streamer.Streamer` (``csrc/py/hotpath.c``).

``log()``, a series handle's ``log()`` and ``log_object()`` of a flat dict, as CPython methods
compiled into the extension: the common case goes from the interpreter straight into the put;
everything else is handed back to the Streamer's Python path (the policy stays there). None
with the pure-Python fallback, or if the binding could not be made: the Python path then runs
alone, with the same behaviour.
"""

from __future__ import annotations

import sys
from typing import Any, Optional

from .ring.backend import ffi as _ffi
from .ring.backend import lib as _lib

_NAME = "isstreamer._hotpath"
_loaded = False


def module() -> Optional[Any]:
    """The binding's module (made on first use), or None. No lock: the install holds the GIL
    throughout and does nothing once the module exists."""
    global _loaded
    if not _loaded:
        install = getattr(_lib, "iss_py_hotpath_install", None)
        if install is not None:
            install()
        _loaded = True
    return sys.modules.get(_NAME)


def address(producer: Any) -> int:
    """The address of a native producer (a cffi ``iss_producer *``), for ``Logger.set_producer``."""
    return int(_ffi.cast("uintptr_t", producer))
