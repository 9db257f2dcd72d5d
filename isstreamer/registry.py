"""Per-process registry of rings, fork hooks, and supervision of the sender process.

A process maps each ring (table file) once, and owns at most one segment of it (an
:class:`~isstreamer.ring.Attachment`) shared by every Streamer of the process on that ring.
Fork children start with no segment (they claim their own on first use) and with every
process-local lock fresh. The sender is started isolated from the working directory and the
environment's import path, with exactly the package directory this process imported; a sender
that cannot start is reported once, never restarted in a loop. Orphaned rings (no live
producer, no live sender) of this user are adopted by the next Streamer.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import time
import weakref
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

from .ring import layout as L
from . import launch, lazy, reentry
from . import ring as R
from .ring import Attachment, RingClosed, RingRefused, Table
from .settings import SenderSettings

log = lazy.Logger("isstreamer")

_LOCK = threading.Lock()
_TABLES: Dict[str, Table] = {}
_USERS: Dict[str, int] = {}
_ATTACH: Dict[str, Attachment] = {}
_VIEWS: Dict[Tuple[str, int], R.Segment] = {}
_LIVE: "weakref.WeakSet[Any]" = weakref.WeakSet()
_ATTACH_FAILED: Dict[str, Tuple[float, Exception]] = {}  # ring path -> (retry time, the error): no attach before
_ADOPTED = False
ORPHAN_MIN_AGE = 60.0
ORPHAN_SCAN_BUDGET = 0.2  # seconds the orphan scan may take at a Streamer's creation, however many names
ATTACH_RETRY = 1.0  # seconds before a process whose attach failed (no slot, no space) tries again
SEGMENT_MIN = 1 << 20  # a new producer's segment is at least this large (while ring_size allows)


# ---- fork hooks ----------------------------------------------------------------------------------


def _before_fork() -> None:
    R.before_fork()


def _after_fork_in_parent() -> None:
    R.after_fork_in_parent()


def _after_fork_in_child() -> None:
    """A fork child owns no segment and holds no lock: reset every process-local lock, detach
    every Streamer (each claims its own segment on first use), unmap the parent's segments and
    views (nothing here uses them again: no descriptor or mapping of the parent's is kept)."""
    global _LOCK
    R.after_fork_in_child()
    reentry.after_fork_in_child()
    _LOCK = threading.Lock()
    launch.after_fork_in_child()
    _ATTACH_FAILED.clear()
    for table in _TABLES.values():
        table.reset_after_fork()
    for s in list(_LIVE):
        s.detach_after_fork()
    for att in _ATTACH.values():
        att.forget_after_fork()
    _ATTACH.clear()
    for view in _VIEWS.values():
        view.reset_after_fork()
        view.close()
    _VIEWS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)


def track(streamer: Any) -> None:
    """Detach ``streamer`` in fork children, close it at interpreter exit."""
    _LIVE.add(streamer)


def untrack(streamer: Any) -> None:
    """Forget a closed Streamer."""
    _LIVE.discard(streamer)


def live_streamers() -> list:
    """The Streamers of this process not closed yet."""
    return list(_LIVE)


# ---- tables ------------------------------------------------------------------------------------------


def create_table(seg_data_size: int, meta: Dict[str, Any], native: bool) -> Table:
    """A new ring for a new Streamer (one user in this process)."""
    table = Table.create(seg_data_size, meta, native=native)
    with reentry.held(_LOCK):
        _TABLES[table.path] = table
        _USERS[table.path] = 1
    return table


def open_table(path: str, native: bool, identity: Optional[Tuple[int, int]]) -> Table:
    """The mapping of ring ``path`` in this process (one more user); checked against ``identity``."""
    with reentry.held(_LOCK):
        table = _TABLES.get(path)
        if table is None:
            table = Table.open(path, native=native, identity=identity)
            _TABLES[path] = table
            _USERS[path] = 0
        elif identity is not None and tuple(identity) != table.identity:
            raise RingRefused("isstreamer: refusing ring file %s: not the file this handle was made for" % path)
        _USERS[path] += 1
        return table


def close_table(table: Table) -> None:
    """One user less; the last one releases this process's segment (it is unmapped once no put
    of this process can touch it) and unmaps the table: nothing of the ring stays mapped or open."""
    with reentry.held(_LOCK):
        n = _USERS.get(table.path, 0) - 1
        if n > 0:
            _USERS[table.path] = n
            return
        _USERS.pop(table.path, None)
        if _TABLES.get(table.path) is table:
            del _TABLES[table.path]
        _ATTACH_FAILED.pop(table.path, None)
        att = _ATTACH.pop(table.path, None)
        for key in [k for k in _VIEWS if k[0] == table.path]:
            _VIEWS.pop(key).close()
        unmapped = att.close(table) if att is not None else True
        with contextlib.suppress(OSError, ValueError):  # under _LOCK: no other thread reopens it meanwhile
            last_one_out(table)
        if unmapped:  # (else a fallback put this close interrupted reads the table when it resumes)
            table.close()


def last_producer(table: Table) -> bool:
    """True when this process is the only one using ``table``: no other live process owns a
    segment of it and no other handle of this process uses it (a closing Streamer may then close
    every downsampling window: nobody else folds into them). This process's own segment is never
    asked about (opening and closing its file would drop its owner lock)."""
    with reentry.held(_LOCK):
        if _USERS.get(table.path, 0) > 1:
            return False
        own = own_attachment(table)
    mine = own.seg_id if own is not None else -1
    for _, st, seg_id, _ in table.slots():
        if st == L.SLOT_OWNED and seg_id != mine and R.segment_owner_alive(table, seg_id):
            return False
    return True


def last_one_out(table: Table) -> bool:
    """Remove the ring's files if no live process owns a segment of it and every segment is
    drained (the sender does the same when it notices; this covers a sender that dies with its
    program, e.g. the init process of a container exiting). True when it removed them."""
    with table.locked():
        if table.closing:
            return False
        slots = list(table.slots())
        for _, st, seg_id, _ in slots:
            if st == L.SLOT_OWNED and R.segment_owner_alive(table, seg_id):
                return False
            try:
                seg = table.open_segment(seg_id)
            except RingClosed:
                continue
            except RingRefused:
                return False
            try:
                if seg.head() != seg.tail():
                    return False
            finally:
                seg.close()
        table.mark_closing()
        table.remove_files()
    return True


# ---- this process's segment ------------------------------------------------------------------------


def segment_size(ring_size: int, total_max: int, in_use: int) -> int:
    """Data bytes of a new producer's segment: ``ring_size``, but no more than a quarter of
    ``total_max`` (so the first processes do not take it all) or what is left of it, and never
    less than SEGMENT_MIN (or ``ring_size``, if smaller). Pages are reserved only as events
    wait, so the cap bounds the worst case, not the memory in use."""
    size = ring_size
    if total_max:
        size = min(size, max(total_max // 4, L.SEG_DATA_MIN), max(total_max - in_use, 0))
    return max(size, min(ring_size, SEGMENT_MIN), L.SEG_DATA_MIN) // 8 * 8


def attachment(table: Table, data_size: int, total_max: int) -> Attachment:
    """This process's segment of ``table``, created on first use (RingClosed once the ring is gone).

    A process that could not get one (every slot taken, no space for the file) fails fast with
    the same error until ATTACH_RETRY has passed: no file is made and removed on every call."""
    with reentry.held(_LOCK):
        att = own_attachment(table)
        if att is not None:
            return att
        failed = _ATTACH_FAILED.get(table.path)
        now = time.monotonic()
        if failed is not None and now < failed[0]:
            raise failed[1].with_traceback(None)  # the same error (ENOSPC stays ENOSPC), at once
        try:
            if not table.free_slot_left():
                raise RingRefused("isstreamer: every one of the ring's %d producer slots is in use" % table.nslots)
            size = segment_size(data_size, total_max, table.data_in_use())
            att = Attachment.create(table, size, table.native)
        except (RingRefused, OSError, ValueError) as exc:
            if not isinstance(exc, RingClosed):
                _ATTACH_FAILED[table.path] = (now + ATTACH_RETRY, exc)
            raise
        _ATTACH_FAILED.pop(table.path, None)
        _ATTACH[table.path] = att
        return att


def own_attachment(table: Table) -> Optional[Attachment]:
    """This process's segment of ``table`` if it has one."""
    att = _ATTACH.get(table.path)
    return att if att is not None and att.pid == os.getpid() else None


def segment_counters(table: Table) -> Tuple[int, int, list]:
    """(logged, consumed, drops by reason) over every segment the ring ever had: the live ones,
    plus what the sender folded into the table from freed ones. Read under the table lock, so a
    segment freed meanwhile is never counted twice (once live, once folded in)."""
    with reentry.held(_LOCK), table.locked():  # the order attachment() takes them in
        logged = table.counter("logged_reclaimed")
        consumed = table.counter("consumed_reclaimed")
        drops = table.drops()
        own = own_attachment(table)
        seen = set()
        for _, _, seg_id, _ in table.slots():
            seen.add(seg_id)
            view = own.ring if own is not None and own.seg_id == seg_id else _view(table, seg_id)
            if view is None:
                continue
            logged += view.logged()
            consumed += view.consumed()
            for r, n in enumerate(view.drop_counts()):
                drops[r] += n
        for key in [k for k in _VIEWS if k[0] == table.path and k[1] not in seen]:
            _VIEWS.pop(key).close()  # a segment freed since: its mapping goes too
    return logged, consumed, drops


def _view(table: Table, seg_id: int) -> Optional[R.Segment]:
    """Another process's segment, mapped for reading its counters (cached while the segment is
    registered; under _LOCK). It holds no descriptor (never one of our own segments: no lock of
    ours is dropped by closing it)."""
    key = (table.path, seg_id)
    view = _VIEWS.get(key)
    if view is None:
        try:
            view = table.open_segment(seg_id)
        except (RingClosed, RingRefused, OSError):
            return None
        _VIEWS[key] = view
    return view


# ---- orphans --------------------------------------------------------------------------------------------


def adopt_orphans(
    directory: str, settings: Callable[[Dict[str, Any]], Optional[SenderSettings]], min_age: float = ORPHAN_MIN_AGE
) -> int:
    """Start a sender on every ring of this user in ``directory`` that has no live producer and
    no live sender (its processes were killed; an empty ring only once ``min_age`` old): what they logged is delivered or spooled, then
    the ring is removed. ``settings(meta)`` gives the sender's settings for a ring's recorded meta
    (None: leave it). Once per process. Returns the number of rings adopted."""
    global _ADOPTED
    if _ADOPTED:
        return 0
    _ADOPTED = True
    adopted = 0
    for path in _candidate_rings(directory, time.monotonic() + ORPHAN_SCAN_BUDGET):
        try:
            table = Table.open(path)
        except (RingClosed, RingRefused, OSError, ValueError):
            continue
        try:
            meta = table.meta()
            slots = list(table.slots())
            if table.sender_alive():
                continue
            if table.closing:  # its sender was killed while removing it: finish that
                with table.locked():
                    table.remove_files()
                continue
            # a ring being created has no slot for a moment (its creator registers, then starts the
            # sender): an empty ring is an orphan only once it is old
            if not slots and time.time() - float(meta.get("created", 0)) < min_age:
                continue
            if any(R.segment_owner_alive(table, seg_id) for _, st, seg_id, _ in slots if st == L.SLOT_OWNED):
                continue
            s = settings(meta)
            if s is None:
                continue
            s.ring_path = path
            s.ring_identity = list(table.identity)
            with table.spawning():
                if table.sender_alive() or table.closing:
                    continue
                log.warning(
                    "isstreamer: adopting ring %s left by processes that were killed; its events are "
                    "delivered or spooled",
                    path,
                )
                launch.SenderProcess(s)
                adopted += 1
        finally:
            table.close()
    return adopted


def _candidate_rings(directory: str, deadline: float) -> Iterator[str]:
    """Paths of table files in ``directory`` that may be this user's orphans: regular files of
    ours named like a ring, not this process's own. The scan stops at ``deadline`` (a directory
    holding any number of planted names costs a Streamer at most ORPHAN_SCAN_BUDGET)."""
    mine = "isstreamer-%d-" % os.getpid()
    uid = os.geteuid()
    try:
        it = os.scandir(directory)
    except OSError:
        return
    with it:
        for entry in it:
            if time.monotonic() > deadline:
                return
            name = entry.name
            if not (name.startswith("isstreamer-") and name.endswith(".ring")) or name.startswith(mine):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode) or st.st_uid != uid:
                continue
            with reentry.held(_LOCK):  # never open (and close) a ring this process may hold record locks on
                if entry.path in _TABLES:
                    continue
            yield entry.path
