"""Modules the library imports on first use (isstreamer.lazy): a fork never cuts such an import
in two, so a child never hangs on a module its parent was still importing in another thread."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import pytest

from isstreamer import lazy


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
