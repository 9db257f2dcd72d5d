"""Connection fairness: who may hold one of the collector's connections, and for how long.

Every connection is in one phase, set by the application as it handles a request
(:meth:`GuardedConnection.request_started`, :meth:`~GuardedConnection.body_started`,
:meth:`~GuardedConnection.request_done`):

* ``IDLE``: waiting for a request head. The first one must be complete within
  ``header_timeout`` of connecting, a later one within ``idle_timeout`` of the previous answer;
* ``BODY``: the handler reads the request body (its own ``body_timeout`` bounds that);
* ``BUSY``: the handler works on the request.

Across phases a connection is *stalled* while its answer waits in the send buffer for the
client to read it (asyncio paused the writing); without any progress for ``write_timeout``
seconds it is closed.

At most ``max_connections`` are open, and ``max_per_client`` of one client. A new connection
beyond either cap takes the place of the most evictable one (of that client, or of all):
stalled first, then idle after an answer, then one still sending a request head or body; among
equals the one that has been at it longest (a client that sends its whole request at once is
the newest there). A ``BUSY`` connection is never evicted: a new connection is refused only
when every one it could replace is busy. Holding connections thus gains an attacker nothing,
and a client that sends a whole request is served.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import time
from typing import Any, Dict, Iterable, Optional, Set, Tuple

from . import limits

__all__ = ["Phase", "ConnectionGuard", "GuardedConnection", "client_of"]


class Phase(enum.Enum):
    """What a connection is doing (see the module docstring)."""

    IDLE = "idle"
    BODY = "body"
    BUSY = "busy"


def client_of(peer: Any) -> str:
    """The client a connection counts against: its IPv4 address, or the /64 of an IPv6 one
    (IPv4-mapped IPv6 addresses count as IPv4); ``""`` when unknown (e.g. a Unix socket)."""
    if not isinstance(peer, tuple) or not peer:
        return ""
    try:
        addr = ipaddress.ip_address(str(peer[0]).split("%", 1)[0])
    except ValueError:
        return str(peer[0])
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.ip_network((addr, 64), strict=False))
    return str(addr)


class ConnectionGuard:
    """The caps and timeouts of the collector's connections (see the module docstring).

    Counters: ``refused`` (closed at once: nothing could make room), ``evicted`` (closed to make
    room), ``timed_out`` (a head not sent, or idle, in time) and ``write_timeouts``.
    """

    def __init__(
        self,
        max_connections: int = limits.MAX_CONNECTIONS,
        header_timeout: float = limits.HEADER_TIMEOUT,
        *,
        max_per_client: int = limits.MAX_PER_CLIENT,
        idle_timeout: float = limits.IDLE_TIMEOUT,
        write_timeout: float = limits.WRITE_TIMEOUT,
    ) -> None:
        self.max_connections = max(1, int(max_connections))
        self.max_per_client = max(1, min(int(max_per_client), self.max_connections))
        self.header_timeout = float(header_timeout)
        self.idle_timeout = float(idle_timeout)
        self.write_timeout = float(write_timeout)
        self.open: Dict["GuardedConnection", None] = {}
        self._clients: Dict[str, Set["GuardedConnection"]] = {}
        self._by_transport: Dict[Any, "GuardedConnection"] = {}
        self.refused = self.evicted = self.timed_out = self.write_timeouts = 0

    def admit(self, conn: "GuardedConnection") -> bool:
        """Register a new connection, making room if a cap is reached; False when it must be
        closed at once (everything it could replace is busy)."""
        mine = self._clients.get(conn.client, set())
        if len(mine) >= self.max_per_client and not self._evict_one(mine):
            self.refused += 1
            return False
        if len(self.open) >= self.max_connections and not self._evict_one(self.open):
            self.refused += 1
            return False
        self.open[conn] = None
        self._clients.setdefault(conn.client, set()).add(conn)
        self._by_transport[conn.transport] = conn
        return True

    def _evict_one(self, candidates: Iterable["GuardedConnection"]) -> bool:
        """Close the most evictable of ``candidates``; False when all are busy."""
        best: Optional[Tuple[Tuple[int, float], GuardedConnection]] = None
        for conn in candidates:
            rank = conn.eviction_rank()
            if rank is not None and (best is None or rank < best[0]):
                best = (rank, conn)
        if best is None:
            return False
        self.evicted += 1
        best[1].close()
        return True

    def forget(self, conn: "GuardedConnection") -> None:
        """The connection is closed (idempotent)."""
        if conn not in self.open:
            return
        del self.open[conn]
        mine = self._clients[conn.client]
        mine.discard(conn)
        if not mine:
            del self._clients[conn.client]
        self._by_transport.pop(conn.transport, None)

    def counts(self) -> Dict[str, int]:
        """Open connections and the counters (see the class docstring)."""
        return {
            "open": len(self.open),
            "refused": self.refused,
            "evicted": self.evicted,
            "timed_out": self.timed_out,
            "write_timeouts": self.write_timeouts,
        }

    def connection(self, transport: Any) -> Optional["GuardedConnection"]:
        """The guarded connection of a request's transport (None once it is closed)."""
        return self._by_transport.get(transport)


class GuardedConnection(asyncio.Protocol):
    """aiohttp's request handler protocol (``inner``) under a :class:`ConnectionGuard`."""

    def __init__(self, inner: asyncio.Protocol, guard: ConnectionGuard) -> None:
        self.inner = inner
        self.guard = guard
        self.transport: Optional[asyncio.Transport] = None
        self.client = ""
        self.phase = Phase.IDLE
        self.since = time.monotonic()  # when the current phase began
        self.answered = 0  # requests answered on this connection
        self.stalled_since: Optional[float] = None
        self._stalled_bytes = 0
        self._deadline: Optional[asyncio.TimerHandle] = None
        self._stall_check: Optional[asyncio.TimerHandle] = None
        self._admitted = False

    # ---- what the guard asks

    def eviction_rank(self) -> Optional[Tuple[int, float]]:
        """``(tier, since)``, lowest evicted first; None while busy (never evicted)."""
        if self.stalled_since is not None:
            return (0, self.stalled_since)
        if self.phase is Phase.IDLE and self.answered:
            return (1, self.since)
        if self.phase is not Phase.BUSY:  # sending its request: head or body
            return (2, self.since)
        return None

    def close(self) -> None:
        """Close now: gently when nothing waits to be sent, else abort (an unread answer would
        keep a gentle close pending forever)."""
        self.guard.forget(self)
        transport = self.transport
        if transport is None or transport.is_closing():
            if transport is not None:
                transport.abort()
            return
        if transport.get_write_buffer_size() or self.phase is not Phase.IDLE:
            transport.abort()
        else:
            transport.close()

    # ---- phases, set by the application

    def request_started(self) -> None:
        """A request head is complete and its handler runs."""
        self._set_phase(Phase.BUSY)

    def body_started(self) -> None:
        """The handler reads the request body."""
        self._set_phase(Phase.BODY)

    def body_done(self) -> None:
        """The handler has read the body (or given up on it)."""
        self._set_phase(Phase.BUSY)

    def request_done(self) -> None:
        """The answer is written (or the request failed); the next head may come."""
        self.answered += 1
        self._set_phase(Phase.IDLE)

    def _set_phase(self, phase: Phase) -> None:
        self.phase = phase
        self.since = time.monotonic()
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if phase is Phase.IDLE and self.transport is not None and not self.transport.is_closing():
            timeout = self.guard.idle_timeout if self.answered else self.guard.header_timeout
            self._deadline = asyncio.get_running_loop().call_later(timeout, self._idle_too_long)

    def _idle_too_long(self) -> None:
        self._deadline = None
        if self.phase is Phase.IDLE:
            self.guard.timed_out += 1
            self.close()

    # ---- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.client = client_of(transport.get_extra_info("peername"))
        if not self.guard.admit(self):
            transport.abort()  # type: ignore[attr-defined]
            return
        self._admitted = True
        self._set_phase(Phase.IDLE)
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._admitted:
            self.inner.data_received(data)  # type: ignore[attr-defined]

    def eof_received(self) -> Optional[bool]:
        return self.inner.eof_received() if self._admitted else None  # type: ignore[attr-defined]

    def pause_writing(self) -> None:
        if not self._admitted:
            return
        self.stalled_since = time.monotonic()
        self._stalled_bytes = self.transport.get_write_buffer_size() if self.transport is not None else 0
        self._arm_stall_check()
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        if not self._admitted:
            return
        self.stalled_since = None
        if self._stall_check is not None:
            self._stall_check.cancel()
            self._stall_check = None
        self.inner.resume_writing()

    def _arm_stall_check(self) -> None:
        loop = asyncio.get_running_loop()
        self._stall_check = loop.call_later(self.guard.write_timeout, self._check_stall)

    def _check_stall(self) -> None:
        """``write_timeout`` after the last progress: closed unless the client read some more."""
        self._stall_check = None
        if self.stalled_since is None or self.transport is None:
            return
        left = self.transport.get_write_buffer_size()
        if left < self._stalled_bytes:
            self._stalled_bytes = left
            self._arm_stall_check()
            return
        self.guard.write_timeouts += 1
        self.close()

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        for handle in (self._deadline, self._stall_check):
            if handle is not None:
                handle.cancel()
        self._deadline = self._stall_check = None
        self.guard.forget(self)
        if self._admitted:
            self._admitted = False
            self.inner.connection_lost(exc)
