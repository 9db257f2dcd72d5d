"""Which backend writes the ring: the cffi extension (``isstreamer._native``) or the
pure-Python twin (:mod:`isstreamer.ring.twin`), which writes the same bytes; the fallback is
refused on weakly ordered CPUs unless forced (see :func:`check_fallback_safe`).

``ffi`` and ``lib`` are the extension's (None without it): every other module reaches the C code
through these two names.
"""

from __future__ import annotations

import os
import sys

from .. import lazy

_NATIVE_ERROR = ""
try:  # the C extension is optional
    from .._native import ffi, lib  # type: ignore[import-not-found]
except ImportError as _exc:  # pragma: no cover - exercised by installs without a compiler
    ffi = None
    lib = None
    _NATIVE_ERROR = str(_exc)

ENV_NO_EXTENSION = "ISSTREAMER_NO_EXTENSION"
ENV_FORCE_FALLBACK = "ISSTREAMER_FORCE_FALLBACK"
_STRONGLY_ORDERED = ("x86_64", "amd64", "i386", "i686", "x86")


def native_available() -> bool:
    """True when the C extension was built and imported."""
    return lib is not None


def use_native() -> bool:
    """True when the C extension should be used (built, and not disabled by the environment)."""
    return lib is not None and os.environ.get(ENV_NO_EXTENSION, "") in ("", "0")


_FALLBACK_TOLD = False


def fallback_reason() -> str:
    """Why log() runs on the pure-Python fallback, with the fix: said once per process (the first
    call), "" afterwards, with the extension, or when the fallback was asked for
    (``ISSTREAMER_NO_EXTENSION=1``). A source tree in the working directory that shadows an
    installed copy with a built extension is named as such."""
    global _FALLBACK_TOLD
    if lib is not None or _FALLBACK_TOLD or os.environ.get(ENV_NO_EXTENSION, "") not in ("", "0"):
        return ""
    _FALLBACK_TOLD = True
    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        other = os.path.join(os.path.abspath(entry or "."), "isstreamer")
        try:
            built = other != here and any(n.startswith("_native.") for n in os.listdir(other))
        except OSError:
            continue
        if built:
            return (
                "isstreamer: imported from %s, a source tree without the compiled C extension, which shadows "
                "the installed copy in %s: log() runs on the pure-Python fallback, about 10x slower "
                "(stats()['backend'] == 'python'). Run the program from another directory, or build the "
                "extension in place: python %s" % (here, other, os.path.join(here, "_build_native.py"))
            )
    return (
        "isstreamer: the C extension is not available in %s (%s): log() runs on the pure-Python fallback, "
        "about 10x slower (stats()['backend'] == 'python'). Install with a C compiler and the Python headers "
        "(e.g. apt install build-essential python3-dev, then pip install --force-reinstall isstreamer), or "
        "build it in place: python %s" % (here, _NATIVE_ERROR or "not built", os.path.join(here, "_build_native.py"))
    )


def check_fallback_safe() -> None:
    """Refuse the pure-Python backend where it is unsafe, unless ``ISSTREAMER_FORCE_FALLBACK=1``.

    It publishes ``head`` with a plain store and relies on the CPU not reordering stores, and on
    64-bit loads and stores being single-copy atomic: true on x86, not on ARM (every Raspberry Pi).
    """
    machine = lazy.load("platform").machine().lower()  # platform: only on the fallback (start-up time)
    if machine in _STRONGLY_ORDERED or os.environ.get(ENV_FORCE_FALLBACK, "") not in ("", "0"):
        return
    raise RuntimeError(
        "isstreamer: the C extension is not available, and the pure-Python fallback is not safe on "
        "%s (a weakly ordered CPU): install with a C compiler (e.g. apt-get install gcc python3-dev, "
        "then pip install --force-reinstall isstreamer), or set %s=1 to use it anyway"
        % (machine or "this CPU", ENV_FORCE_FALLBACK)
    )
