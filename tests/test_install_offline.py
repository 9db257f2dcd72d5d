"""Offline mode as a 2.0.0 script meets it: an ``isstreamer.ini`` in the working directory,
``from ISStreamer.Streamer import Streamer``, a fresh interpreter.

2.0.0 wrote to ``offline_file + ".csv"`` (``isstreamer_out.csv.csv`` by default); isstreamer
writes ``offline_file`` as named (the design card's fix), and the README tells 2.0.0 users to
name the old file to keep reading it. Both halves are checked here, end to end.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = """
from ISStreamer.Streamer import Streamer
s = Streamer(bucket_name="Garden", access_key="k")
assert s.Offline
s.log("temperature", 21.5, epoch=1700000000.5)
s.log("door", "open", epoch=1700000001.0)
s.close()
"""


def run_offline(tmp_path: Path, ini_extra: str = "") -> Path:
    """Run SCRIPT in a fresh interpreter from ``tmp_path/work`` (HOME: an empty directory)."""
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    (work / "isstreamer.ini").write_text(
        "[isstreamer.client_config]\naccess_key = k\noffline_mode = true\n" + ini_extra
    )
    env = dict(os.environ, HOME=str(home), PYTHONPATH=str(ROOT))
    for name in ("ISSTREAMER_OFFLINE", "ISSTREAMER_ACCESS_KEY", "ISSTREAMER_BUCKET"):
        env.pop(name, None)
    subprocess.run([sys.executable, "-c", SCRIPT], cwd=work, env=env, check=True, timeout=120)
    return work


def csv_files(work: Path) -> list:
    return sorted(p.name for p in work.iterdir() if p.name.endswith(".csv"))


def test_default_offline_file_is_isstreamer_out_csv(tmp_path):
    work = run_offline(tmp_path)
    assert csv_files(work) == ["isstreamer_out.csv"]  # not 2.0.0's isstreamer_out.csv.csv
    rows = (work / "isstreamer_out.csv").read_text().splitlines()
    assert rows == ["1700000000.5,temperature,21.5", "1700000001.0,door,open"]


def test_naming_the_2_0_0_file_keeps_old_readers_working(tmp_path):
    work = run_offline(tmp_path, "offline_file = isstreamer_out.csv.csv\n")
    assert csv_files(work) == ["isstreamer_out.csv.csv"]
    rows = (work / "isstreamer_out.csv.csv").read_text().splitlines()
    assert rows[0] == "1700000000.5,temperature,21.5"
