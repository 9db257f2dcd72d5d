"""The ``isstreamer log`` and ``isstreamer demo`` commands, run as real subprocesses."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from typing import Dict, List, Optional
from urllib.parse import unquote

import requests

from isstreamer.collector.store import read_event_count, read_events
from support import ROOT


def cli_env(tmp_path, **extra: str) -> Dict[str, str]:
    """The work tree on PYTHONPATH; HOME, spool and cwd under tmp_path; no ISSTREAMER_* from outside."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ISSTREAMER_") and k != "XDG_STATE_HOME"}
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["HOME"] = str(tmp_path / "home")
    os.makedirs(env["HOME"], exist_ok=True)
    env.update(extra)
    return env


def isstreamer(
    tmp_path, *args: str, stdin: Optional[str] = None, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess:
    """Run ``python -m isstreamer.cli ARGS`` in tmp_path; output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "isstreamer.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(tmp_path),
        env=cli_env(tmp_path, **env),
    )


def by_key(events: List[dict]) -> Dict[str, object]:
    return {e["key"]: e["value"] for e in events}


# --------------------------------------------------------------------------- isstreamer log


def test_log_single_event_lands_with_its_type(tmp_path, collector):
    for key, text in (("temp", "21.5"), ("count", "7"), ("cold", "-3.5"), ("on", "TRUE"), ("state", "open")):
        r = isstreamer(
            tmp_path, "log", key, text, "--api-base", collector.url, "--access-key", "k", "--bucket-key", "shell"
        )
        assert r.returncode == 0, r.stderr
        assert "1 logged, 1 delivered, 0 dropped" in r.stderr
    got = by_key(collector.events("shell"))
    assert got == {"temp": 21.5, "count": 7, "cold": -3.5, "on": True, "state": "open"}
    assert type(got["temp"]) is float and type(got["count"]) is int


def test_log_single_event_with_epoch_and_quiet(tmp_path, collector):
    r = isstreamer(
        tmp_path,
        "log",
        "t",
        "1",
        "--epoch",
        "1700000000.5",
        "--quiet",
        "--api-base",
        collector.url,
        "--bucket-key",
        "ep",
        ISSTREAMER_ACCESS_KEY="k",
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # (--access-key would add its warning: other users can see it)
    [ev] = collector.events("ep")
    assert ev["epoch"] == 1700000000.5


def test_log_stdin_mixed_lines_bad_line_reported_exit_1(tmp_path, collector):
    lines = [
        "# a comment",
        "temperature,21.5",
        "",
        "humidity = 40",
        "door=true",
        "this line has no separator",
        "note,hello, world",
        "=5",
        "empty,",
        "   # indented comment",
        "big,123456789012345678901234567890",
    ]
    r = isstreamer(
        tmp_path,
        "log",
        "-",
        "--api-base",
        collector.url,
        "--access-key",
        "k",
        "--bucket-name",
        "Shell Lines",
        stdin="\n".join(lines) + "\n",
    )
    assert r.returncode == 1
    err = r.stderr.splitlines()
    assert any(line.startswith("isstreamer log: line 6:") and "no separator" in line for line in err), r.stderr
    assert any(line.startswith("isstreamer log: line 8:") for line in err), r.stderr
    assert any(line.startswith("isstreamer log: line 9:") for line in err), r.stderr
    assert "5 logged, 5 delivered, 0 dropped, 3 bad lines" in err[-1]
    # the bucket key is derived from the bucket name, so repeated calls share one bucket
    got = by_key(collector.events("shell-lines"))
    assert got == {
        "temperature": 21.5,
        "humidity": 40,
        "door": True,
        "note": "hello, world",
        "big": "123456789012345678901234567890",
    }
    assert [b["name"] for b in collector.buckets() if b["key"] == "shell-lines"] == ["Shell Lines"]


def test_log_stdin_all_good_exits_0(tmp_path, collector):
    r = isstreamer(
        tmp_path,
        "log",
        "-",
        "--api-base",
        collector.url,
        "--access-key",
        "k",
        "--bucket-key",
        "ok",
        stdin="".join("n,%d\n" % i for i in range(500)),
    )
    assert r.returncode == 0, r.stderr
    assert "500 logged, 500 delivered, 0 dropped" in r.stderr
    assert sorted(e["value"] for e in collector.events("ok")) == list(range(500))


def test_log_config_from_env_and_ini(tmp_path, collector):
    """Arguments > ISSTREAMER_* environment > isstreamer.ini (here: ./isstreamer.ini)."""
    (tmp_path / "isstreamer.ini").write_text(
        "[isstreamer.client_config]\naccess_key = from-ini\ndefault_bucket = Ini Bucket\n"
        "[isstreamer.api_config]\nstream_api_base = http://127.0.0.1:1\n"
    )
    r = isstreamer(tmp_path, "log", "x", "1", ISSTREAMER_API_BASE=collector.url)
    assert r.returncode == 0, r.stderr
    assert by_key(collector.events("ini-bucket")) == {"x": 1}
    r = isstreamer(
        tmp_path,
        "log",
        "y",
        "2",
        "--bucket-name",
        "Arg Bucket",
        ISSTREAMER_API_BASE=collector.url,
        ISSTREAMER_BUCKET="Env Bucket",
    )
    assert r.returncode == 0, r.stderr
    assert by_key(collector.events("arg-bucket")) == {"y": 2}


def test_log_usage_errors(tmp_path):
    r = isstreamer(tmp_path, "log", "t", "1")  # no access key anywhere
    assert r.returncode == 2 and "no access key" in r.stderr
    r = isstreamer(tmp_path, "log", "--bucketname", "b", "t", "1", "--access-key", "k")
    assert r.returncode == 2 and "no such option: --bucketname" in r.stderr
    r = isstreamer(tmp_path, "log", "-", "--epoch", "1700000000", "--access-key", "k", stdin="a,1\n")
    assert r.returncode == 2 and "--epoch" in r.stderr
    r = isstreamer(tmp_path, "log", "t", "x" * 2001, "--access-key", "k")
    assert r.returncode == 2 and "2000" in r.stderr


# --------------------------------------------------------------------------- isstreamer demo


def summary_numbers(out: str) -> Dict[str, int]:
    """``{"logged": n, "delivered": n, "dropped": n}`` from the demo's summary rows."""
    nums = {}
    for label in ("logged", "delivered", "dropped"):
        m = re.search(r"^  %s\s+([\d,]+)  " % label, out, re.MULTILINE)
        assert m, "no %r row in:\n%s" % (label, out)
        nums[label] = int(m.group(1).replace(",", ""))
    return nums


def dashboard_url(out: str) -> str:
    m = re.search(r"^Dashboard: (http://\S+/dashboard/(\S+))$", out, re.MULTILINE)
    assert m, out
    return m.group(1)


def test_demo_exit_delivers_every_event(tmp_path):
    db = tmp_path / "demo.db"
    r = isstreamer(tmp_path, "demo", "--exit", "--events", "20000", "--workers", "2", "--db", str(db), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    nums = summary_numbers(r.stdout)
    assert nums["logged"] == 25000  # 20,000 sensor readings + a quarter more from the pool
    assert nums["delivered"] == nums["logged"] and nums["dropped"] == 0
    assert "none: every event logged was delivered" in r.stdout
    assert re.search(r"^  log\(\) cost\s+[\d,]+  ns per call, (native|python) backend", r.stdout, re.MULTILINE)
    bucket = unquote(dashboard_url(r.stdout).rsplit("/", 1)[1])
    assert read_event_count(str(db), bucket) == nums["logged"]
    keys = {e["key"] for e in read_events(str(db), bucket)}
    assert {"temperature", "humidity", "pressure_hpa", "door_open"} <= keys
    assert {"pump_1_rpm", "pump_1_state", "pump_1_load", "pump_1_queue", "pump_1_ok"} <= keys  # log_object keys
    assert "Ctrl-C" not in r.stdout


def test_demo_refuses_a_shared_database_directory_with_a_message(tmp_path):
    """--db in a directory other users can write: one clear line and exit 1, no traceback (as serve)."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    for command in ("demo", "serve"):
        extra = ("--exit", "--events", "100") if command == "demo" else ()
        r = isstreamer(tmp_path, command, *extra, "--db", str(shared / "d.db"), timeout=60)
        assert r.returncode == 1, (command, r.stdout + r.stderr)
        assert "Traceback" not in r.stderr and "refusing the database directory" in r.stderr, (command, r.stderr)


def test_demo_serves_dashboard_until_sigint(tmp_path):
    err = open(tmp_path / "demo.stderr", "w+")  # a file: a full pipe would block the demo
    p = subprocess.Popen(
        [sys.executable, "-m", "isstreamer.cli", "demo", "--events", "4000", "--workers", "1"],
        stdout=subprocess.PIPE,
        stderr=err,
        text=True,
        cwd=str(tmp_path),
        env=cli_env(tmp_path, PYTHONFAULTHANDLER="1"),
    )
    try:
        assert p.stdout is not None
        out = []
        for line in p.stdout:  # ends early (EOF) if the demo exits instead of serving
            out.append(line)
            if "press Ctrl-C" in line:
                break
        text = "".join(out)
        assert "press Ctrl-C" in text, text
        assert p.poll() is None
        url = dashboard_url(text)
        resp = requests.get(url, timeout=10)
        assert resp.status_code == 200 and "<html" in resp.text.lower()
        bucket = unquote(url.rsplit("/", 1)[1])
        latest = requests.get(url.split("/dashboard/")[0] + "/api/buckets/%s/latest" % bucket, timeout=10)
        assert latest.status_code == 200 and latest.json()["latest"]
        p.send_signal(signal.SIGINT)
        try:
            rc = p.wait(timeout=30)
        except subprocess.TimeoutExpired:  # say where it hangs: faulthandler dumps every thread
            p.send_signal(signal.SIGABRT)
            p.wait(10)
            err.seek(0)
            raise AssertionError("the demo did not stop within 30 s of SIGINT:\n" + err.read()[-6000:]) from None
        assert rc == 0
        assert "Stopped." in p.stdout.read()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        err.close()


# --------------------------------------------------------------------------- access keys (issue 20 item 4)


def key_file(tmp_path, key: str, mode: int = 0o600) -> str:
    path = tmp_path / "access.key"
    path.write_text("# my Initial State key\n%s\n" % key)
    os.chmod(path, mode)
    return str(path)


def test_log_takes_the_key_from_a_key_file(tmp_path, collector):
    r = isstreamer(
        tmp_path,
        "log",
        "t",
        "1",
        "--api-base",
        collector.url,
        "--access-key-file",
        key_file(tmp_path, "from-file"),
        "--bucket-key",
        "kf",
    )
    assert r.returncode == 0, r.stderr
    assert "warning" not in r.stderr.lower()
    r = isstreamer(
        tmp_path,
        "log",
        "t",
        "2",
        "--api-base",
        collector.url,
        "--bucket-key",
        "kf",
        ISSTREAMER_ACCESS_KEY_FILE=key_file(tmp_path, "from-file"),
    )
    assert r.returncode == 0, r.stderr
    assert [e["value"] for e in collector.events("kf")] == [1, 2]
    from isstreamer.collector.store import hash_access_key

    assert {b["owner"] for b in collector.buckets()} == {hash_access_key("from-file")[:12]}


def test_access_key_on_the_command_line_warns(tmp_path, collector):
    r = isstreamer(
        tmp_path, "log", "t", "1", "--api-base", collector.url, "--access-key", "visible", "--bucket-key", "warned"
    )
    assert r.returncode == 0, r.stderr
    assert "visible to other users" in r.stderr and "--access-key-file" in r.stderr
    assert by_key(collector.events("warned")) == {"t": 1}  # still works, as in 2.0.0


def test_key_file_problems_are_usage_errors(tmp_path):
    r = isstreamer(tmp_path, "log", "t", "1", "--access-key-file", key_file(tmp_path, "k", 0o644))
    assert r.returncode == 2 and "0600 expected" in r.stderr, r.stderr
    r = isstreamer(tmp_path, "log", "t", "1", "--access-key-file", key_file(tmp_path, "k"), "--access-key", "k")
    assert r.returncode == 2 and "not both" in r.stderr, r.stderr
    empty = tmp_path / "empty.key"
    empty.write_text("# nothing\n")
    os.chmod(empty, 0o600)
    r = isstreamer(tmp_path, "log", "t", "1", "--access-key-file", str(empty))
    assert r.returncode == 2 and "no key" in r.stderr, r.stderr


def test_replay_takes_the_key_from_a_key_file(tmp_path, collector):
    from isstreamer.sender.spool import SpoolWriter, key_fingerprint

    w = SpoolWriter(str(tmp_path / "spool"))
    w.write(collector.url, "replayed", "Replayed", key_fingerprint("spool-key"), b'[{"key":"n","value":7}]')
    w.close_all()
    r = isstreamer(
        tmp_path,
        "replay",
        str(tmp_path / "spool"),
        "--access-key-file",
        key_file(tmp_path, "spool-key"),
        "--no-progress",
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "warning" not in r.stderr.lower()
    assert by_key(collector.events("replayed")) == {"n": 7}
    r = isstreamer(tmp_path, "replay", str(tmp_path / "spool"), "--access-key", "spool-key", "--no-progress")
    assert r.returncode == 0 and "visible to other users" in r.stderr, r.stderr
