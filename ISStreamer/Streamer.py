"""``from ISStreamer.Streamer import Streamer`` keeps working: a thin alias of isstreamer's."""

from isstreamer.streamer import Streamer, StreamerClosedError

__all__ = ["Streamer", "StreamerClosedError"]
