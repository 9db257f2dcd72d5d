"""A segment file: one producer process's single-producer / single-consumer byte ring (a
ring-format file with one segment; tests and fuzz replays use more), and the sender's side of
it: reading its counters, the commit protocol that survives the sender's death at any step
(see ``iss_seg_hdr`` in csrc/isstreamer.h), and returning consumed pages.
"""

from __future__ import annotations

import os
import struct
from typing import List, Optional, Tuple

from .. import faults, ids, safefile
from . import layout as L
from . import mapping as M
from .backend import ffi as _ffi, lib as _lib, use_native
from .files import RingRefused, default_ring_dir, open_private
from .mapped import Mapped, create_file

_Q = struct.Struct("=Q")
_I = struct.Struct("=I")


class Segment(Mapped):
    """A mapped ring-format file: header, bucket slots and segments (a producer's segment file is
    a ring with one segment and one unused bucket slot; tests and fuzz replays use more)."""

    def __init__(self, path: str, fd: int, mp: M.Mapping, native: bool) -> None:
        super().__init__(path, fd, mp, native)
        self.nsegs = _I.unpack_from(self.mm, L.H_NSEGS)[0]
        self.seg_data_size = _I.unpack_from(self.mm, L.H_SEG_DATA_SIZE)[0]
        self.nbuckets = _I.unpack_from(self.mm, L.H_NBUCKETS)[0]

    @classmethod
    def create(
        cls,
        ring_size: int,
        nsegs: int = 1,
        nbuckets: int = 1,
        directory: Optional[str] = None,
        native: Optional[bool] = None,
        path: Optional[str] = None,
    ) -> "Segment":
        """Create and initialise a new ring-format file of ``nsegs`` segments sharing ``ring_size``
        bytes of data (``path``: that name, else a fresh one in ``directory``). Its headers are
        allocated before they are written (a full file system raises ENOSPC); data pages are
        reserved by the producer (:meth:`Attachment.reserve`)."""
        native = use_native() if native is None else native
        if nsegs < 1:
            raise ValueError("isstreamer: a ring needs at least one segment")
        seg = max(L.SEG_DATA_MIN, (ring_size // nsegs) // 8 * 8)
        if seg >= 1 << 32:
            raise ValueError(
                "isstreamer: ring_size %d is too large (at most %d per process)" % (ring_size, (1 << 32) - 8)
            )
        size = L.layout_size(nsegs, seg, nbuckets)
        if path is None:
            path = os.path.join(
                directory or default_ring_dir(), "isstreamer-%d-%s.ring" % (os.getpid(), ids.token_hex(6))
            )
        fd = create_file(path, size, L.seg_offset(nbuckets, seg, 0) + L.SEG_HDR_SIZE)
        try:
            mp = M.Mapping(fd, size)
        except BaseException:
            safefile.discard(fd, path)
            raise
        try:
            cls.format(mp, nsegs, seg, nbuckets, native)
        except BaseException:
            mp.close()
            safefile.discard(fd, path)
            raise
        return cls(path, fd, mp, native)

    @staticmethod
    def format(mp: M.Mapping, nsegs: int, seg_data_size: int, nbuckets: int, native: bool) -> None:
        """Write a new ring-format header (the magic last) into zeroed memory ``mp``."""
        size = L.layout_size(nsegs, seg_data_size, nbuckets)
        if native:
            assert _ffi is not None and _lib is not None
            rc = _lib.iss_ring_init(_ffi.cast("uint8_t *", mp.addr), size, nsegs, seg_data_size, nbuckets)
            if rc != 0:
                raise ValueError("isstreamer: cannot initialise ring (code %d)" % rc)
        else:
            L.pack_header(mp.mm, nsegs, seg_data_size, nbuckets, size)
            _Q.pack_into(mp.mm, L.H_MAGIC, L.MAGIC)

    @classmethod
    def open(
        cls, path: str, native: Optional[bool] = None, identity: Optional[Tuple[int, int]] = None, keep_fd: bool = True
    ) -> "Segment":
        """Map an existing ring-format file of ours (see :func:`open_private`); raises RingClosed
        when it no longer exists, RingRefused when it is not ours or not the file expected.
        ``keep_fd=False``: the descriptor is closed once mapped (a reader: the sender, stats())."""
        native = use_native() if native is None else native
        fd = open_private(path)
        try:
            mp = map_checked(fd, path, L.MAGIC, identity)
            ring = cls(path, fd, mp, native)
        except BaseException:
            os.close(fd)
            raise
        if not keep_fd:
            ring.drop_fd()
        return ring

    def seg_offset(self, index: int) -> int:
        """Byte offset of segment ``index``."""
        return L.seg_offset(self.nbuckets, self.seg_data_size, index)

    def seg_field(self, index: int, field: int) -> int:
        """Read a 64-bit field of a segment header."""
        return self.load(self.seg_offset(index) + field)

    def head(self, index: int = 0) -> int:
        """Bytes published on segment ``index`` (acquire: the records before it are readable)."""
        return self.load(self.seg_offset(index) + L.S_HEAD)

    def tail(self, index: int = 0) -> int:
        """Bytes of segment ``index`` the sender is done with."""
        return self.load(self.seg_offset(index) + L.S_TAIL)

    def logged(self, index: int = 0) -> int:
        """Records published on segment ``index``."""
        return self.load(self.seg_offset(index) + L.S_LOGGED)

    def consumed(self, index: int = 0) -> int:
        """Records of segment ``index`` the sender is done with."""
        return self.load(self.seg_offset(index) + L.S_CONSUMED)

    def lost(self, index: int = 0) -> int:
        """Records of segment ``index`` the sender found unreadable (counted as dropped)."""
        return self.load(self.seg_offset(index) + L.S_LOST)

    def drop_counts(self, index: int = 0) -> List[int]:
        """Events refused by the producer of segment ``index`` (and records the sender found
        unreadable, as ``corrupt``), by reason (layout.DROP_REASONS)."""
        base = self.seg_offset(index) + L.S_DROPS
        out = [self.load(base + 8 * r) for r in range(len(L.DROP_REASONS))]
        out[L.D["corrupt"]] += self.lost(index)
        return out

    def waiting(self, index: int = 0) -> int:
        """Records published and not yet consumed."""
        return self.logged(index) - self.consumed(index)

    def fill(self, index: int = 0) -> float:
        """Fraction of segment ``index``'s data area holding unconsumed records."""
        return (self.head(index) - self.tail(index)) / self.seg_data_size

    def release(self, index: int, start: int, end: int, consumed: int) -> None:
        """(Sender) hand bytes ``[start, end)`` of segment ``index`` back to its producer, in an
        order that survives the sender's death at any step (see ``iss_seg_hdr`` in
        csrc/isstreamer.h): the journal (``rel_consumed``, then ``rel_end``), the pages, then
        ``consumed`` and ``tail`` (release: the producer sees the count before it reuses the
        space). A sender that dies anywhere in between leaves :meth:`recover` a state to finish."""
        base = self.seg_offset(index)
        faults.point("commit.begin")
        self.store(base + L.S_REL_CONSUMED, consumed)
        faults.point("commit.journal_consumed")
        self.store(base + L.S_REL_END, end)
        faults.point("commit.journal_end")
        self.release_pages(index, start, end)
        faults.point("commit.pages")
        self.store(base + L.S_CONSUMED, consumed)
        faults.point("commit.consumed")
        self.store(base + L.S_TAIL, end)
        faults.point("commit.tail")

    def recover(self, index: int = 0) -> bool:
        """(Sender, on first use of a segment) finish a commit that a killed sender left half done:
        its batch was delivered or spooled and its pages may be gone, so the records up to
        ``rel_end`` are released, never read again. True when there was one to finish."""
        base = self.seg_offset(index)
        tail = self.load(base + L.S_TAIL)
        end = self.load(base + L.S_REL_END)
        if end <= tail or end - tail > self.seg_data_size or end > self.load(base + L.S_HEAD):
            return False
        self.store(base + L.S_CONSUMED, self.load(base + L.S_REL_CONSUMED))
        self.store(base + L.S_TAIL, end)
        return True

    def count_lost(self, index: int, n: int) -> None:
        """(Sender) ``n`` records found unreadable and released: counted as dropped (``corrupt``)."""
        if n:
            self.add(self.seg_offset(index) + L.S_LOST, n)

    def counter(self, name: str) -> int:
        """Value of a header counter (see layout.COUNTERS)."""
        return self.load(L.H_COUNTERS + 8 * L.C[name])

    def count(self, name: str, n: int = 1) -> None:
        """Add to a header counter."""
        if n:
            self.add(L.H_COUNTERS + 8 * L.C[name], n)

    def release_pages(self, index: int, start: int, end: int) -> None:
        """(Sender) give the memory of consumed bytes [start, end) of segment ``index`` back to the
        system (whole pages only). Called inside :meth:`release`, before ``tail = end``: until
        then the producer cannot write or reserve there, so a page is never punched under it."""
        ds = self.seg_data_size
        if end - start < M.PAGE or getattr(self, "_no_punch", False):
            return
        data = self.seg_offset(index) + L.SEG_HDR_SIZE
        a, b = start % ds, end % ds
        spans = [(a, b)] if a < b else [(a, ds), (0, b)]
        if end - start >= ds:
            spans = [(0, ds)]
        with self.live():
            for lo, hi in spans:
                lo = -(-(data + lo) // M.PAGE) * M.PAGE
                hi = (data + hi) // M.PAGE * M.PAGE
                if hi > lo and not self.map.remove_pages(lo, hi - lo):
                    self._no_punch = True  # a file system without hole punching: keep the pages
                    return


def map_checked(fd: int, path: str, magic: int, identity: Optional[Tuple[int, int]]) -> M.Mapping:
    """Map ``fd`` after checking its identity, size and header magic / version."""
    st = os.fstat(fd)
    if identity is not None and (st.st_dev, st.st_ino) != tuple(identity):
        raise RingRefused(
            "isstreamer: refusing ring file %s: it is not the file this handle was made for (replaced since)" % path
        )
    if st.st_size < L.HDR_SIZE or st.st_size % 8:
        raise RingRefused("isstreamer: refusing %s: not a ring file" % path)
    mp = M.Mapping(fd, st.st_size)
    if _Q.unpack_from(mp.mm, L.H_MAGIC)[0] != magic or _I.unpack_from(mp.mm, L.H_VERSION)[0] != L.LAYOUT_VERSION:
        mp.close()
        raise RingRefused("isstreamer: refusing %s: not a ring file of this version" % path)
    return mp
