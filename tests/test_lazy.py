"""Modules the library imports on first use (isstreamer.lazy): a fork never cuts such an import
in two, so a child never hangs on a module its parent was still importing in another thread."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from isstreamer import lazy


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    """``code`` run by a fresh interpreter (its own first imports); it must exit 0."""
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_fork_waits_for_a_first_import_under_way_in_another_thread(tmp_path, monkeypatch):
    (tmp_path / "slow_to_import.py").write_text("import time\ntime.sleep(0.5)\nVALUE = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    loaded = []
    t = threading.Thread(target=lambda: loaded.append(lazy.load("slow_to_import")))
    t.start()
    time.sleep(0.1)  # the thread is inside the import now
    pid = os.fork()
    if pid == 0:  # child: its own first use must not wait for a thread it does not have
        code = 1
        try:
            signal.alarm(10)
            code = 0 if lazy.load("slow_to_import").VALUE == 42 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    t.join()
    assert os.waitstatus_to_exitcode(status) == 0, "the child hung (or failed) on a module imported at the fork"
    assert loaded[0].VALUE == 42
    sys.modules.pop("slow_to_import", None)


def test_a_hook_runs_once_when_its_module_is_first_loaded(tmp_path, monkeypatch):
    (tmp_path / "hooked_module.py").write_text("VALUE = 7\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []
    lazy.when_loaded("hooked_module", lambda m: seen.append(m.VALUE))
    assert seen == []  # not loaded yet
    assert lazy.load("hooked_module").VALUE == 7 and seen == [7]
    lazy.load("hooked_module")
    assert seen == [7]  # once
    lazy.when_loaded("hooked_module", lambda m: seen.append(-m.VALUE))  # already loaded: at once
    assert seen == [7, -7]
    sys.modules.pop("hooked_module", None)


def test_the_library_and_its_sender_import_logging_only_to_write_a_message():
    """lazy.Logger: a producer, a thread-mode sender and the sender process's modules import
    ``logging`` at their first message, not at start-up; the message then goes where it went."""
    code = (
        "import sys, io; import ISStreamer.Streamer, isstreamer.sender.main, isstreamer.sender.loop, "
        "isstreamer.sender.thread, isstreamer.launch, isstreamer.registry\n"
        "before = 'logging' in sys.modules\n"
        "from isstreamer import lazy\n"
        "lazy.when_loaded('logging', lambda m: m.basicConfig(format='configured %(message)s'))\n"
        "lazy.Logger('isstreamer').warning('hello %s', 'there')\n"
        "print(before)\n"
    )
    r = _python(code)
    assert r.stdout.strip() == "False"
    assert r.stderr.strip() == "configured hello there"


def test_a_message_never_waits_for_the_lazy_lock_its_own_thread_holds(tmp_path):
    """A message may come while its thread is inside a first import through lazy.load (holding
    the lazy lock: a signal handler, a finalizer, the imported module itself): logging is then
    imported all the same, never waited for."""
    (tmp_path / "logs_at_import.py").write_text(
        "from isstreamer import lazy\nlazy.Logger('isstreamer').warning('from a first import')\n"
    )
    code = (
        "import sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from isstreamer import lazy\n"
        "assert 'logging' not in sys.modules\n"
        "lazy.load('logs_at_import')  # its import logs while this thread holds the lazy lock\n"
        "print('logging' in sys.modules)\n"
    )
    r = _python(code, str(tmp_path))
    assert r.stdout.strip() == "True" and "from a first import" in r.stderr


def test_a_module_is_never_handed_out_half_made(tmp_path):
    """A signal handler that runs in the middle of a module's first import through lazy.load
    (the CI failure: a timer handler's log() woke the sender while close() was importing
    ``socket``, and got the half-made module) gets InProgress for that module, and work it
    defers runs once the import is done."""
    (tmp_path / "half_made.py").write_text(
        "import signal\nsignal.raise_signal(signal.SIGUSR1)  # the handler runs here, mid-import\nVALUE = 1\n"
    )
    code = (
        "import signal, sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from isstreamer import lazy, reentry\n"
        "got = []\n"
        "def handler(signum, frame):\n"
        "    try:\n"
        "        m = lazy.load('half_made')\n"
        "        got.append('handed out, VALUE %s' % hasattr(m, 'VALUE'))\n"
        "    except lazy.InProgress:\n"
        "        got.append('in progress')\n"
        "    assert reentry.busy()\n"
        "    reentry.defer(lambda: got.append('deferred: VALUE %s' % lazy.load('half_made').VALUE))\n"
        "signal.signal(signal.SIGUSR1, handler)\n"
        "lazy.load('half_made')\n"
        "print(got)\n"
    )
    r = _python(code, str(tmp_path))
    assert r.stdout.strip() == "['in progress', 'deferred: VALUE 1']", r.stdout + r.stderr
