"""The one platform decision point: the process model, or the thread mode (as prometheus_client's
``get_value_class()`` chooses how values are kept).

* The **process model** (Linux, macOS, the BSDs): the ring is files in shared memory (or a
  private directory), one segment per process that logs, POSIX record locks say who lives, and a
  sender process drains it, for every process of a program (fork, spawn and forkserver pools).
* The **thread mode** (Windows, and anywhere the process model cannot start: no ``fcntl``, no
  private directory for ring files): the same records in this process's memory, drained by a
  sender thread of this process; each process of a pool (spawn) runs its own.

:func:`choose` decides, once per Streamer; ``ISSTREAMER_MODE=process|thread`` overrides. The
Streamer talks to either through the same methods.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import launch, registry
from .ring import Attachment, RingClosed, Table
from .ring.files import RECORD_LOCKS, default_ring_dir
from .ring.local import LocalTable
from .settings import SenderSettings

ENV_MODE = "ISSTREAMER_MODE"
JOIN_MARGIN = 2.0  # s a closing thread-mode Streamer waits past close_timeout for its sender thread


def process_model_missing() -> str:
    """Why the process model cannot run here ("" when it can)."""
    if not RECORD_LOCKS:
        return "no POSIX record locks (fcntl)"
    try:
        d = default_ring_dir()
    except (OSError, ValueError) as exc:
        return "no private directory for ring files (%s)" % exc
    if not os.access(d, os.W_OK):
        return "the ring directory %s is not writable" % d
    return ""


class ProcessModel:
    """Shared-memory files, a sender process (see isstreamer.registry and isstreamer.launch)."""

    name = "process"
    shares_ring = True  # a pickled handle maps the same ring

    def create_table(self, seg_data_size: int, meta: Dict[str, Any], native: bool) -> Table:
        return registry.create_table(seg_data_size, meta, native)

    def open_table(self, path: str, native: bool, identity: Optional[Tuple[int, int]]) -> Table:
        return registry.open_table(path, native, identity)

    def close_table(self, table: Table, budget: float, last_look: Optional[Callable[[], None]] = None) -> None:  # noqa: ARG002
        """Release this process's segment and unmap the ring; the sender process drains it on its
        own (``last_look`` is not called: what it does after this shows in no handle of ours)."""
        registry.close_table(table)

    def attachment(self, table: Table, data_size: int, total_max: int) -> Attachment:
        return registry.attachment(table, data_size, total_max)

    def own_attachment(self, table: Table) -> Optional[Attachment]:
        return registry.own_attachment(table)

    def ensure_sender(self, table: Table, settings: Callable[[], SenderSettings]) -> None:
        launch.ensure_sender(table, settings)

    def segment_counters(self, table: Table) -> Tuple[int, int, List[int]]:
        return registry.segment_counters(table)

    def last_producer(self, table: Table) -> bool:
        """No other live process (nor another handle of this one) uses the ring (registry.last_producer)."""
        return registry.last_producer(table)

    def adopt_orphans(self, settings: Callable[[Dict[str, Any]], Optional[SenderSettings]]) -> None:
        registry.adopt_orphans(default_ring_dir(), settings)


class ThreadModel:
    """This process's memory, a sender thread (see isstreamer.ring.local, isstreamer.sender.thread)."""

    name = "thread"
    shares_ring = False  # a pickled handle (a spawn pool's worker) makes a ring and a sender of its own

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._attachments: Dict[int, Attachment] = {}  # id(table) -> this process's segment of it

    def after_fork_in_child(self) -> None:
        """(fork child) The parent's rings are not the child's: it makes its own on first use."""
        self._lock = threading.Lock()
        self._attachments.clear()

    def create_table(self, seg_data_size: int, meta: Dict[str, Any], native: bool) -> Table:
        return LocalTable.create_local(seg_data_size, meta, native)

    def open_table(self, path: str, native: bool, identity: Optional[Tuple[int, int]]) -> Table:
        raise RingClosed(2, "isstreamer: a thread-mode ring is not shared between processes", path)

    def close_table(self, table: Table, budget: float, last_look: Optional[Callable[[], None]] = None) -> None:
        """Release this process's segment; wait (up to ``budget`` and a margin) for the sender
        thread to drain it and finish, call ``last_look`` (the final counters: sent, spooled...),
        then free the memory (left alone if it has not finished: the daemon thread may still
        read it)."""
        with self._lock:
            att = self._attachments.pop(id(table), None)
        if att is not None:
            att.close(table, unmap=False)
        table.stop_sender()  # type: ignore[attr-defined]
        thread = getattr(table, "sender_thread", None)
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, budget) + JOIN_MARGIN)
            if thread.is_alive():
                return
        if last_look is not None:
            last_look()
        if att is not None:
            att.unmap()
        table.close()

    def attachment(self, table: Table, data_size: int, total_max: int) -> Attachment:
        with self._lock:
            att = self._attachments.get(id(table))
            if att is None:
                size = registry.segment_size(data_size, total_max, table.data_in_use())
                att = Attachment.create_local(table, size, table.native)  # type: ignore[arg-type]
                self._attachments[id(table)] = att
            return att

    def own_attachment(self, table: Table) -> Optional[Attachment]:
        return self._attachments.get(id(table))

    def ensure_sender(self, table: Table, settings: Callable[[], SenderSettings]) -> None:
        # the HTTP stack is imported only here, once this process runs a sender (a producer of the
        # process model never imports it)
        from .sender.thread import start_sender_thread

        if table.closing:
            raise RingClosed(2, "isstreamer: the ring is closed", table.path)
        with table.spawning():
            if not table.sender_alive():
                start_sender_thread(settings(), table)  # type: ignore[arg-type]

    def segment_counters(self, table: Table) -> Tuple[int, int, List[int]]:
        """(logged, consumed, drops by reason) over this ring's segments, as the process model's."""
        with table.locked():
            logged = table.counter("logged_reclaimed")
            consumed = table.counter("consumed_reclaimed")
            drops = table.drops()
            own = self.own_attachment(table)
            for _, _, seg_id, _ in table.slots():
                if own is None or own.seg_id != seg_id or own.ring.closed:
                    continue
                logged += own.ring.logged()
                consumed += own.ring.consumed()
                for r, n in enumerate(own.ring.drop_counts()):
                    drops[r] += n
        return logged, consumed, drops

    def last_producer(self, table: Table) -> bool:  # noqa: ARG002
        """Always: a thread-mode ring is this process's alone (each process of a pool has its own)."""
        return True

    def adopt_orphans(self, settings: Callable[[Dict[str, Any]], Optional[SenderSettings]]) -> None:
        """Nothing outlives its process in the thread mode."""


PROCESS = ProcessModel()
THREAD = ThreadModel()


def choose(mode: Optional[str] = None) -> Any:
    """The model for a new Streamer: ``mode`` (a pickled handle's), else ``ISSTREAMER_MODE``,
    else the process model where it can run and the thread mode where it cannot."""
    forced = (mode or os.environ.get(ENV_MODE, "")).strip().lower()
    if forced == "thread":
        return THREAD
    missing = process_model_missing()
    if forced == "process":
        if missing:
            raise RuntimeError(
                "isstreamer: %s=process, but the process model cannot run here: %s" % (ENV_MODE, missing)
            )
        return PROCESS
    if forced:
        raise ValueError("isstreamer: %s must be 'process' or 'thread', not %r" % (ENV_MODE, forced))
    return THREAD if missing else PROCESS


def reset_after_fork() -> None:
    """(fork child) See ThreadModel.after_fork_in_child."""
    THREAD.after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=reset_after_fork)

__all__ = ["ENV_MODE", "PROCESS", "THREAD", "ProcessModel", "ThreadModel", "choose", "process_model_missing"]
