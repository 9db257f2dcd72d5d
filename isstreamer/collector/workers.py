"""``isstreamer serve --workers N``: N collector processes on one port.

The supervisor prepares the database (schema, migrations) once, then opens N listening sockets
on the same address with ``SO_REUSEPORT`` (the kernel spreads new connections over them) and
forks one worker per socket; each worker is a whole collector with its own event loop, writer
and reader threads and connections. The supervisor keeps every socket open: a worker that dies
is forked again on the same socket, and the connections queued on it meanwhile wait for it
instead of being refused. SIGINT or SIGTERM stops the workers (each finishes its in-flight
requests) and then the supervisor.

Only where it is safe: on Linux, where the kernel lets only processes of the same user listen
on a port with ``SO_REUSEPORT`` (elsewhere another user could take a share of the
connections). Each worker applies the connection limits on its own; the database applies the
quotas (and, on PostgreSQL, the rate limit) to all of them together: with SQLite the rate limit
is kept in each process's memory, so ``--rate-limit`` is refused with several workers there.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
import traceback
from typing import Callable, Dict, List

from .app import CollectorConfig
from .store import open_database

__all__ = ["run_workers", "reuse_port_safe", "WorkersRefused"]

#: A worker that dies sooner than this after its start is restarted only after this long.
RESTART_BACKOFF = 1.0


class WorkersRefused(ValueError):
    """Several workers cannot run here (the platform, or an option kept per process)."""


class _Stop(Exception):
    """SIGINT or SIGTERM reached the supervisor."""


def reuse_port_safe() -> bool:
    """Whether ``SO_REUSEPORT`` shares a port only between processes of the same user (Linux)."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def check_workers(config: CollectorConfig, shared_database: bool, workers: int) -> None:
    """Refuse ``workers`` processes where that is not safe (see the module docstring)."""
    if workers <= 1:
        return
    if not reuse_port_safe():
        raise WorkersRefused("--workers needs Linux's SO_REUSEPORT (only processes of the same user share the port)")
    if config.rate_limit and not shared_database:
        raise WorkersRefused(
            "--rate-limit is counted in each process's memory with SQLite: use one worker, "
            "or PostgreSQL (it counts in the database)"
        )


def run_workers(
    config: CollectorConfig,
    db: str,
    host: str,
    port: int,
    workers: int,
    shutdown_timeout: float,
    say: Callable[[str], None],
) -> None:
    """Run ``workers`` collector processes on ``host:port`` until SIGINT or SIGTERM."""
    from .server import announcement, bind, open_store, serve_socket, warn_if_exposed

    database = open_database(db)
    check_workers(config, database.shared, workers)
    database.prepare()
    socks: List[socket.socket] = [bind(host, port, reuse_port=True)]
    port = socks[0].getsockname()[1]
    socks += [bind(host, port, reuse_port=True) for _ in range(workers - 1)]

    def start(index: int) -> int:
        pid = os.fork()
        if pid:
            return pid
        code = 0
        try:  # the worker
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, signal.SIG_DFL)
            for i, other in enumerate(socks):
                if i != index:
                    other.close()
            serve_socket(config, open_store(config, db), socks[index], shutdown_timeout)
        except BaseException:  # noqa: BLE001 - reported, then the worker exits
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def stop(*_: object) -> None:
        raise _Stop()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    running: Dict[int, int] = {}
    started: Dict[int, float] = {}
    try:
        for i in range(workers):
            running[start(i)] = i
            started[i] = time.monotonic()
        warn_if_exposed(socks[0], config)
        say(announcement(socks[0], database.label, workers))
        while True:
            pid, status = os.wait()
            index = running.pop(pid, None)
            if index is None:
                continue
            print(
                "isstreamer serve: worker %d (pid %d) ended (%s); starting it again" % (index, pid, _describe(status)),
                file=sys.stderr,
                flush=True,
            )
            if time.monotonic() - started[index] < RESTART_BACKOFF:
                time.sleep(RESTART_BACKOFF)
            running[start(index)] = index
            started[index] = time.monotonic()
    except _Stop:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _stop_all(running, shutdown_timeout + 5.0)
        for sock in socks:
            sock.close()


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return "signal %d" % os.WTERMSIG(status)
    return "exit status %d" % os.WEXITSTATUS(status) if os.WIFEXITED(status) else "status %d" % status


def _stop_all(running: Dict[int, int], timeout: float) -> None:
    """SIGTERM every worker, wait up to ``timeout`` seconds, then SIGKILL the rest."""
    for pid in running:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    left = set(running)
    while left and time.monotonic() < deadline:
        for pid in list(left):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                left.discard(pid)
        time.sleep(0.05)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
