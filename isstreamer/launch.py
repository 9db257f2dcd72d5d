"""Starting the sender process and keeping one alive per ring.

The sender is started with ``subprocess``, not ``multiprocessing`` (spawn and forkserver would
re-import an unguarded ``__main__``; fork is unsafe in a threaded parent), isolated (``python
-I -S``) with exactly the package directory this process imported and the directories holding the
sender's dependencies (:func:`sender_path`) first, the environment's site directories last; its settings come on stdin (the access key never
shows in ``ps``); its stderr is forwarded to ours. A sender that cannot start is reported once,
never restarted in a loop.
"""

from __future__ import annotations

import collections
import contextlib
import os
import sys
import threading
import time
from typing import Callable, Deque, Dict, Tuple

from . import lazy
from .ring import ENV_NO_EXTENSION, RingClosed, Table
from .settings import SenderSettings

log = lazy.Logger("isstreamer")

_START_FAILURES: Dict[str, int] = {}
MAX_START_FAILURES = 3
SENDER_START_WAIT = 10.0


def after_fork_in_child() -> None:
    """A fork child starts with no start failures of its parent's."""
    _START_FAILURES.clear()


def package_parent() -> str:
    """The directory holding the ``isstreamer`` package this process imported."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# The modules the sender process imports beyond the standard library (a fallback for a source
# tree that is not installed, whose distribution metadata cannot say).
SENDER_IMPORTS = (
    "requests",
    "urllib3",
    "idna",
    "charset_normalizer",
    "chardet",
    "certifi",
    "orjson",
    "_cffi_backend",
    "cffi",
)


def _script_dirs() -> set:
    """The directories a program's own imports come from first: the working directory and the
    directory of the script (``sys.path[0]`` as Python set it)."""
    out = {os.path.abspath(os.getcwd())}
    argv0 = (getattr(sys, "argv", None) or [""])[0]
    if argv0 and argv0 not in ("-c", "-m") and os.path.exists(argv0):
        out.add(os.path.dirname(os.path.abspath(argv0)))
    return out


def _writable_by_others(path: str) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return True
    return bool(st.st_mode & 0o022) or st.st_uid not in (0, os.geteuid())


def _holds_module(directory: str, names: Tuple[str, ...]) -> bool:
    """True when ``directory`` holds one of these top-level modules (a package or a module file)."""
    try:
        entries = os.listdir(directory)
    except OSError:
        return False
    for entry in entries:
        stem = entry.split(".", 1)[0]
        if stem in names and (entry == stem or entry.endswith((".py", ".so", ".pyd"))):
            return True
    return False


def sender_path() -> list:
    """The sender's import path, before its own site directories: the directory of the package
    this process imported, then the entries of this process's path that hold a module the sender
    imports (``PYTHONPATH`` or ``--target`` installs of its dependencies), never the working
    directory, the script's directory or a directory other users may write to: a module planted
    there would run inside the sender."""
    parent = package_parent()
    banned = _script_dirs()
    out = [parent]
    for p in sys.path:
        a = os.path.abspath(p) if p else ""
        if (
            a
            and a not in banned
            and a not in out
            and os.path.isdir(a)
            and not _writable_by_others(a)
            and _holds_module(a, SENDER_IMPORTS)
        ):
            out.append(a)
    return out


def site_dirs() -> list:
    """The site directories ``python -I`` would put on the sender's path (this interpreter's, a
    virtual environment's, the system's where the environment includes them), that exist."""
    try:
        dirs = (sys.modules.get("site") or lazy.load("site")).getsitepackages()
    except (ImportError, AttributeError):  # pragma: no cover - no site module, an old virtualenv's own
        return []
    return [d for d in dirs if os.path.isdir(d)]


def sender_command() -> list:
    """The sender's command line: isolated (``-I``: no working directory, no PYTHON* variables, no
    user site), with :func:`sender_path` put first on its import path and the site directories
    (:func:`site_dirs`) last, as ``site`` would have put them. ``-S``: ``site`` itself is not
    run, nor the ``.pth`` files of the environment (an editable install's finder costs more
    than the rest of the interpreter's start-up, which a one-shot script waits for at
    ``Streamer()``); what the sender imports is on the path above."""
    boot = (
        "import sys; a = sys.argv[1:]; i = a.index('--'); sys.path[:0] = a[:i]; sys.path += a[i + 1 :]; "
        "from isstreamer.sender.main import main; sys.exit(main())"
    )
    return [sys.executable, "-I", "-S", "-c", boot] + sender_path() + ["--"] + site_dirs()


class SenderProcess:
    """A started sender: its stderr forwarded to ours line by line (so the sender never holds this
    program's stderr open after it exits), the last lines kept for an error report."""

    def __init__(self, settings: SenderSettings) -> None:
        subprocess = lazy.load("subprocess")  # a producer's start-up pays it only when it starts a sender
        env = dict(os.environ)
        if not settings.native:
            env[ENV_NO_EXTENSION] = "1"
        self.proc = subprocess.Popen(
            sender_command(),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
            env=env,
        )
        self.tail: Deque[str] = collections.deque(maxlen=20)
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.write(settings.to_json())
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.close()
        self.thread = threading.Thread(target=self._forward, name="isstreamer-sender-stderr", daemon=True)
        self.thread.start()

    def _forward(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace")
            self.tail.append(line.rstrip("\n"))
            with contextlib.suppress(Exception):
                sys.stderr.write(line)
                sys.stderr.flush()
        self.proc.wait()


def ensure_sender(table: Table, settings: Callable[[], SenderSettings]) -> None:
    """Start a sender on ``table`` unless one holds its sender lock (RingClosed once the ring is gone).

    One starter at a time (the spawn lock); the new sender takes its lock before heavy imports,
    and the starter waits for that (or for it to exit). A sender that exits with an error (or does
    not answer) is reported with its last output; after a few such failures this process stops
    trying. One killed by a signal is not a failure to start: it is simply started again."""
    if table.sender_alive():
        return
    if table.closing or not os.path.exists(table.path):
        raise RingClosed(2, "isstreamer: the ring is closed", table.path)
    if _START_FAILURES.get(table.path, 0) >= MAX_START_FAILURES:
        return
    with table.spawning():
        if table.sender_alive():
            return
        if table.closing:
            raise RingClosed(2, "isstreamer: the ring is closed", table.path)
        if table.sender_pid:
            log.warning("isstreamer: the sender process died; starting a new one on the same ring")
        sp = SenderProcess(settings())
        deadline = time.monotonic() + SENDER_START_WAIT
        while not (table.sender_alive() and table.sender_pid == sp.proc.pid):  # its lock, then its pid
            rc = sp.proc.poll()
            if rc is not None or time.monotonic() > deadline:
                if rc is not None and rc <= 0:
                    # it exited cleanly (another sender serves the ring, or the ring is gone) or was
                    # killed: not a failure to start (the next check starts another if need be)
                    return
                if rc is not None:
                    sp.thread.join(1.0)
                n = _START_FAILURES[table.path] = _START_FAILURES.get(table.path, 0) + 1
                log.error(
                    "isstreamer: the sender process could not start (%s); events stay in the ring%s:\n%s",
                    "exit code %s" % rc if rc is not None else "no answer in %gs" % SENDER_START_WAIT,
                    "; not trying again" if n >= MAX_START_FAILURES else "",
                    "\n".join(sp.tail) or "(no output)",
                )
                return
            time.sleep(0.001)  # (about 30 polls of one F_GETLK while a sender starts)
