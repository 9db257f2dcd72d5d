"""The thread mode's sender: the same loop as the sender process, in a thread of the process
that logs (isstreamer.models.ThreadModel), woken by an event instead of a socket."""

from __future__ import annotations

import threading
from typing import Any

from .. import lazy
from ..ring.local import LocalTable
from ..settings import SenderSettings
from .loop import Sender

log = lazy.Logger("isstreamer")


class EventDoorbell:
    """What the idle sender thread sleeps on: the table's event, set by producers (``wake``)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def armed(self) -> bool:
        """Always: producers can wake this sender."""
        return True

    def wait(self, timeout: float) -> bool:
        """Block until rung or ``timeout``; True when rung."""
        rung = self.event.wait(timeout)
        self.event.clear()
        return rung

    def close(self) -> None:
        """Nothing to release."""


def _owned_by_this_process(table: Any, seg_id: int) -> bool:
    return True  # every registered segment of a process-local ring is this (live) process's


def start_sender_thread(settings: SenderSettings, table: LocalTable) -> threading.Thread:
    """Run a :class:`~isstreamer.sender.loop.Sender` on ``table`` in a daemon thread (joined by
    the Streamer's close(), at exit too); it finishes once every segment is released and drained
    (or spooled)."""
    sender = Sender(settings, table, doorbell=EventDoorbell(table.bell), owner_alive=_owned_by_this_process)

    def run() -> None:
        try:
            sender.run()
        except Exception:  # noqa: BLE001 - reported; the Streamer's close() does not wait forever
            log.exception("isstreamer: the sender thread stopped")

    thread = threading.Thread(target=run, name="isstreamer-sender", daemon=True)
    table.sender_thread = thread
    table.stop_sender = _stopper(sender, table)
    thread.start()
    return thread


def _stopper(sender: Sender, table: LocalTable) -> Any:
    def stop() -> None:
        """The only producer let go: drain (or spool at the deadline) and finish, now."""
        sender.stop_requested = True
        table.wake()

    return stop
