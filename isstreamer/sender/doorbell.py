"""The idle sender's wake-up: a datagram socket beside the ring that producers ring (``Table.wake``)."""

from __future__ import annotations

import errno
import os
import select
import socket
import stat
from typing import Optional

from ..ring import Table


class Doorbell:
    """The idle sender's datagram socket at ``<ring>.wake``: producers send a byte to wake it
    (``Table.wake``). No socket (a path too long, or taken by another user): the sender polls."""

    def __init__(self, table: Table) -> None:
        self.path = table.wake_path
        self.sock: Optional[socket.socket] = None
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        except OSError:
            return
        for _ in range(2):
            try:
                old = os.umask(0o177)
                try:
                    sock.bind(self.path)
                finally:
                    os.umask(old)
                sock.setblocking(False)
                self.sock = sock
                return
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or not self._remove_stale():
                    break
        sock.close()

    def _remove_stale(self) -> bool:
        """A socket of ours left by a sender that died: remove it (anything else is left alone)."""
        try:
            st = os.lstat(self.path)
        except OSError:
            return False
        if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.geteuid():
            return False
        try:
            os.unlink(self.path)
        except OSError:
            return False
        return True

    def armed(self) -> bool:
        """True when producers can wake this sender."""
        return self.sock is not None

    def wait(self, timeout: float) -> bool:
        """Block until rung or ``timeout``; True when rung (every pending ring is consumed)."""
        assert self.sock is not None
        try:
            ready, _, _ = select.select([self.sock], [], [], timeout)
        except (OSError, ValueError):
            return False
        rung = False
        while ready:
            try:
                self.sock.recv(64)
                rung = True
            except OSError:
                break
        return rung

    def close(self) -> None:
        """Stop listening and remove the socket file."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            try:
                os.unlink(self.path)
            except OSError:
                pass
