"""Helpers for the tests: subprocess scripts, bounded waits, the repo root."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from typing import Callable, Dict, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def script_env(backend: str, **extra: str) -> Dict[str, str]:
    """Environment for a child Python running the work tree with the given backend."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if backend == "python":
        env["ISSTREAMER_NO_EXTENSION"] = "1"
    else:
        env.pop("ISSTREAMER_NO_EXTENSION", None)
    env.update(extra)
    return env


def write_script(tmp_path, name: str, code: str) -> str:
    """Write a dedented script file and return its path."""
    path = os.path.join(str(tmp_path), name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(textwrap.dedent(code))
    return path


def run_script(path: str, env: Dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a script to completion; output captured as text."""
    return subprocess.run([sys.executable, path], env=env, capture_output=True, text=True, timeout=timeout)


def wait_until(cond: Callable[[], bool], timeout: float = 60.0, every: float = 0.05) -> bool:
    """Poll ``cond`` until it is true or ``timeout`` seconds pass; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(every)


def int_values_summary(db_path: str, bucket_key: str, key: Optional[str] = None) -> Tuple[int, int, float, float, float]:
    """(count, distinct values, min, max, sum) of the numeric events of a bucket in a collector DB."""
    con = sqlite3.connect(db_path, timeout=30)
    try:
        q = ("SELECT COUNT(*), COUNT(DISTINCT e.value_json), MIN(e.value_num), MAX(e.value_num), SUM(e.value_num) "
             "FROM events e JOIN buckets b ON b.id = e.bucket_id WHERE b.bucket_key = ?")
        args = [bucket_key]
        if key is not None:
            q += " AND e.key = ?"
            args.append(key)
        return con.execute(q, args).fetchone()
    finally:
        con.close()


def pid_gone(pid: int) -> bool:
    """True when pid is not a live process (zombies count as gone)."""
    from isstreamer.procutil import pid_alive

    return not pid_alive(pid)
