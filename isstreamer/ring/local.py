"""The thread mode's ring: the same table and segment layout, in this process's own memory.

Where the process model cannot run (Windows; no ``fcntl``; no private directory for ring
files), a Streamer keeps its table and its segment in anonymous memory, the same C encoder (or
its twin) writes the same records, and a sender thread of the same process drains them with the
same loop (see :mod:`isstreamer.models`). Nothing here touches a file: locks are the process's
own, liveness is the sender thread's, the wake-up is an event.
"""

from __future__ import annotations

import contextlib
import errno
import threading
from typing import Any, Callable, Dict, Iterator, Optional

from .. import ids, reentry
from . import layout as L
from . import mapping as M
from .files import RingClosed
from .segment import Segment
from .table import Table

LOCAL_PATH = "<thread>"  # what a process-local ring is called where a path is expected


class LocalTable(Table):
    """A table in anonymous memory, with thread locks; its segments are registered in it."""

    def __init__(self, mp: M.Mapping, native: bool) -> None:
        super().__init__(LOCAL_PATH, -1, mp, native)
        self._segments: Dict[int, Segment] = {}
        self._segments_lock = threading.Lock()  # the registry of segments (taken inside locked() too)
        self._local_lock = threading.Lock()  # locked(): the table's critical sections
        self.bell = threading.Event()  # rung by producers (wake), waited on by the sender thread
        self.sender_thread: Optional[threading.Thread] = None
        self.stop_sender: Callable[[], None] = lambda: None  # set by the sender thread's starter

    @classmethod
    def create_local(cls, seg_data_size: int, meta: Dict[str, Any], native: bool) -> "LocalTable":
        """A new table of this process (the thread mode)."""
        if not L.SEG_DATA_MIN <= seg_data_size < 1 << 32:
            raise ValueError(
                "isstreamer: ring_size must be between %d and %d bytes, not %d"
                % (L.SEG_DATA_MIN, (1 << 32) - 8, seg_data_size)
            )
        mp = M.Mapping.anonymous(L.table_size(cls.NBUCKETS, cls.NSLOTS))
        cls.format(mp, seg_data_size, cls.meta_blob(meta))
        return cls(mp, native)

    # ---- locks and liveness: the process's own ------------------------------------------------
    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive across the threads of this process (the only ones that see this table)."""
        with reentry.held(self._local_lock):
            if self.closed:
                raise RingClosed(errno.EBADF, "isstreamer: the ring is closed", self.path)
            yield

    @contextlib.contextmanager
    def spawning(self) -> Iterator[None]:
        """Held while starting the sender thread: one starter at a time."""
        with reentry.held(self._spawn_tlock):
            yield

    def sender_alive(self) -> bool:
        """True while the sender thread runs."""
        t = self.sender_thread
        return t is not None and t.is_alive()

    def hold_sender_lock(self, patience: float = 1.0) -> bool:
        """(The sender thread) the one sender of this table."""
        return True

    def wake(self) -> bool:
        """Wake the sender thread (it sleeps on :attr:`bell`)."""
        self.bell.set()
        return True

    # ---- segments: registered in memory, never files --------------------------------------------
    def create_segment(self, data_size: int) -> "tuple[int, Segment]":
        """A new one-segment ring in anonymous memory, registered under a fresh id."""
        seg_id = ids.random_id63()
        mp = M.Mapping.anonymous(L.layout_size(1, data_size, 1))
        Segment.format(mp, 1, data_size, 1, self.native)
        seg = Segment(self.seg_path(seg_id), -1, mp, self.native)
        with self._segments_lock:
            self._segments[seg_id] = seg
        return seg_id, seg

    def open_segment(self, seg_id: int) -> Segment:
        """A view of segment ``seg_id`` (its owner unmaps it; closing the view lets go only)."""
        with self._segments_lock:
            seg = self._segments.get(seg_id)
        if seg is None or seg.closed:
            raise RingClosed(errno.ENOENT, "isstreamer: the segment is gone", self.seg_path(seg_id))
        return Segment(seg.path, -1, seg.map.borrow(), self.native)

    def segment_exists(self, seg_id: int) -> bool:
        """True while segment ``seg_id`` is registered."""
        with self._segments_lock:
            return seg_id in self._segments

    def forget_segment(self, seg_id: int) -> None:
        """Unregister segment ``seg_id`` (its owner unmaps it)."""
        with self._segments_lock:
            self._segments.pop(seg_id, None)

    def remove_files(self) -> None:
        """No files: nothing to remove."""
