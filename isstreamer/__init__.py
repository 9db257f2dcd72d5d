"""isstreamer: a fast, multiprocess-safe, never-lose-data streamer for the Initial State events API.

``from isstreamer import Streamer`` (or, unchanged from ISStreamer 2.0.0,
``from ISStreamer.Streamer import Streamer``).
"""

from __future__ import annotations

__version__ = "3.0.0"
__all__ = ["Streamer", "StreamerClosedError", "Window", "Deadband", "OnChange", "__version__"]


def __getattr__(name: str):
    # Imported lazily so that ``python -m isstreamer.sender`` and the CLI start fast.
    if name in ("Streamer", "StreamerClosedError"):
        from . import streamer

        return getattr(streamer, name)
    if name in ("Window", "Deadband", "OnChange"):  # downsampling rules
        from . import rules

        return getattr(rules, name)
    raise AttributeError(name)
