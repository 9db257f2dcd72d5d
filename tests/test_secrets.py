"""The access key never leaks: console output, spool files, exception messages, repr().

Scripts run as real subprocesses (their sender processes included) against a real local
collector, a collector that refuses the key, or a port nobody listens on.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import traceback
from typing import Callable, List

import pytest

from support import script_env, wait_until, write_script

import isstreamer
from isstreamer.config import load_config
from isstreamer.settings import SenderSettings

SECRET = "ist_S3cr3tAcc3ssK3y_9f8e7d6c5b4a"
SECRET_PARTS = (SECRET, SECRET[4:], SECRET[-16:])  # also no unmasked tail or body


def assert_no_secret(text: str, where: str) -> None:
    """Fail if any recognisable part of the access key is in ``text``."""
    for part in SECRET_PARTS:
        assert part not in text, "access key found in %s:\n%s" % (where, text[:3000])


def dead_url() -> str:
    """A loopback URL where nothing listens (the port was just closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return "http://127.0.0.1:%d" % port


SCRIPT = """
    import sys
    import isstreamer
    s = isstreamer.Streamer(bucket_name="secret test", bucket_key=sys.argv[1], access_key=sys.argv[2],
                            api_base=sys.argv[3], spool_dir=sys.argv[4], debug_level=int(sys.argv[5]),
                            flush_interval=0.05, max_attempts=1, backoff_max=0.2, close_timeout=5)
    for i in range(25):
        s.log("temperature", 20.5 + i)
        s.log("state", "ok %d" % i)
    s.log("", 1)          # dropped: empty key (a warning)
    s.log("bad", float("nan"))  # dropped: non-finite (a warning)
    s.flush(timeout=10)
    print(repr(s), s)
    print(s.stats())
    s.close()
"""


def _run(tmp_path, backend: str, url: str, debug_level: int) -> subprocess.CompletedProcess:
    path = write_script(tmp_path, "secret_%d.py" % debug_level, SCRIPT)
    env = script_env(backend)
    env.pop("ISSTREAMER_ACCESS_KEY", None)
    r = subprocess.run(
        [sys.executable, path, "secret-bucket", SECRET, url, str(tmp_path / "spool"), str(debug_level)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    return r


@pytest.mark.parametrize("debug_level", [0, 1])
def test_console_output_of_a_working_stream(tmp_path, collector, backend, debug_level):
    """Delivered events, console echo (level 1), drop warnings: the key is never printed."""
    r = _run(tmp_path, backend, collector.url, debug_level)
    assert_no_secret(r.stdout + r.stderr, "stdout/stderr")
    assert collector.event_count("secret-bucket") == 50
    if debug_level == 1:
        assert "temperature 20.5" in r.stdout  # the echo really ran


@pytest.mark.parametrize("debug_level", [0, 1])
def test_console_output_when_the_key_is_refused(tmp_path, collector_factory, backend, debug_level):
    """HTTP 401 on every request: the sender's loud messages name the problem, not the key."""
    server = collector_factory(access_keys=["another-key"])
    r = _run(tmp_path, backend, server.url, debug_level)
    out = r.stdout + r.stderr
    assert_no_secret(out, "stdout/stderr")
    assert "401" in out or "refused" in out, out  # the refusal was reported


@pytest.mark.parametrize("debug_level", [0, 1])
def test_spool_files_when_the_server_is_down(tmp_path, backend, debug_level):
    """Server down: batches go to the spool; no spool file holds the key."""
    r = _run(tmp_path, backend, dead_url(), debug_level)
    assert_no_secret(r.stdout + r.stderr, "stdout/stderr")
    spool = tmp_path / "spool"
    files: List[str] = []
    for dirpath, _, names in os.walk(spool):
        files += [os.path.join(dirpath, n) for n in names]
    assert any(f.endswith(".jsonl") for f in files), "nothing was spooled: %r" % files
    spooled = b""
    for f in files:
        with open(f, "rb") as fh:
            data = fh.read()
        for part in SECRET_PARTS:
            assert part.encode() not in data, "access key in spool file %s" % f
        spooled += data
    assert b"temperature" in spooled


def test_sender_command_line_has_no_key(tmp_path, collector, backend, monkeypatch):
    """The key reaches the sender on stdin: never on its command line (visible in ps)."""
    if backend == "python":
        monkeypatch.setenv("ISSTREAMER_NO_EXTENSION", "1")
    s = isstreamer.Streamer(
        bucket_key="cmdline", access_key=SECRET, api_base=collector.url, spool_dir=str(tmp_path / "spool")
    )
    try:
        pid = s.sender_pid
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            cmdline = f.read().decode("utf-8", "replace")
        assert "isstreamer.sender.main" in cmdline
        assert_no_secret(cmdline, "the sender's command line")
    finally:
        s.close(timeout=10)


def _message(make: Callable[[], object]) -> str:
    """str, repr and traceback of the exception ``make`` raises."""
    with pytest.raises(Exception) as info:
        make()
    exc = info.value
    return "%s\n%r\n%s" % (exc, exc, "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))


def test_config_errors_do_not_show_the_key(tmp_path):
    """Bad API base, bad ini, key inside a malformed line, key in user info: never echoed."""
    bad_ini = tmp_path / "bad.ini"
    bad_ini.write_text("[isstreamer.client_config]\naccess_key = %s\nthis line is broken %s\n" % (SECRET, SECRET))
    no_section = tmp_path / "nosection.ini"
    no_section.write_text("access_key = %s\n" % SECRET)
    cases = [
        lambda: isstreamer.Streamer(access_key=SECRET, api_base="ftp://example.invalid"),
        lambda: isstreamer.Streamer(access_key=SECRET, api_base="http://user:%s@127.0.0.1:1" % SECRET),
        lambda: isstreamer.Streamer(access_key=SECRET, ini_file_location=str(bad_ini)),
        lambda: isstreamer.Streamer(ini_file_location=str(bad_ini)),
        lambda: isstreamer.Streamer(ini_file_location=str(no_section)),
        lambda: isstreamer.Streamer(access_key=SECRET, ini_file_location=str(tmp_path / "missing.ini")),
        lambda: isstreamer.Streamer(access_key=SECRET, on_full="sometimes"),
        lambda: isstreamer.Streamer(access_key=SECRET, bucket_key="bad:key"),
    ]
    for make in cases:
        text = _message(make)
        assert "isstreamer" in text or "ValueError" in text
        assert_no_secret(text, "an exception message")


def test_api_base_with_the_key_as_a_url_parameter():
    """The events API also takes ``?accessKey=``: a base URL pasted with it must not be echoed
    (the ConfigError used to repeat the whole URL)."""
    text = _message(lambda: load_config(api_base="https://groker.init.st/api/events?accessKey=%s" % SECRET))
    assert "query string" in text
    assert_no_secret(text, "the ConfigError for a base URL with a query string")


def test_strict_mode_input_errors_do_not_show_the_key(tmp_path, collector, backend, monkeypatch):
    """debug_level=2 raises for bad input; the messages talk about the input only."""
    if backend == "python":
        monkeypatch.setenv("ISSTREAMER_NO_EXTENSION", "1")
    s = isstreamer.Streamer(
        bucket_key="strict", access_key=SECRET, api_base=collector.url, spool_dir=str(tmp_path / "spool"), debug_level=2
    )
    try:
        bad = [
            (None, 1),
            ("", 1),
            ("k", float("nan")),
            ("k", None),
            ("k", [1, 2]),
            ("k", b"bytes"),
            ("k", 1j),
            ("k", 2**70),
            ("k" * 300, 1),
            ("k", object()),
            ("k\ud800", 1),
        ]
        for key, value in bad:
            assert_no_secret(
                _message(lambda key=key, value=value: s.log(key, value)), "a strict-mode error for %r" % (key,)
            )
        assert_no_secret(_message(lambda: s.log("k", 1, epoch="yesterday")), "a strict-mode epoch error")
        s.close(timeout=10)
        assert_no_secret(_message(lambda: s.log("k", 1)), "log() after close()")
    finally:
        s.close(timeout=10)


def test_reprs_do_not_show_the_key(tmp_path, collector):
    """repr()/str() of the Streamer and its configuration mask the key."""
    s = isstreamer.Streamer(
        bucket_key="repr", access_key=SECRET, api_base=collector.url, spool_dir=str(tmp_path / "spool")
    )
    try:
        for text in (repr(s), str(s), repr(load_config(access_key=SECRET)), str(load_config(access_key=SECRET))):
            assert_no_secret(text, "a repr")
    finally:
        s.close(timeout=10)
    assert_no_secret(repr(s) + str(s), "the repr of a closed Streamer")


def test_sender_settings_repr_does_not_show_the_key():
    """The sender's settings object ends up in tracebacks and debug logs: mask its key too
    (it was a plain dataclass whose repr showed the key)."""
    settings = SenderSettings(
        ring_path="/dev/shm/x.ring", api_base="http://127.0.0.1:1", access_key=SECRET, spool_dir="/tmp/spool"
    )
    assert_no_secret(repr(settings) + str(settings), "repr(SenderSettings)")


def test_sender_messages_when_auth_fails(tmp_path, collector_factory, backend):
    """A refused key: events go to the spool, the sender retries; its stderr stays clean."""
    server = collector_factory(access_keys=["another-key"])
    path = write_script(
        tmp_path,
        "auth.py",
        """
        import sys, isstreamer
        s = isstreamer.Streamer(bucket_key="auth", access_key=sys.argv[1], api_base=sys.argv[2],
                                spool_dir=sys.argv[3], flush_interval=0.05, auth_retry_interval=0.2,
                                debug_level=1)
        for i in range(10):
            s.log("n", i)
        s.flush(timeout=5)
        s.close(timeout=5)
    """,
    )
    env = script_env(backend)
    r = subprocess.run(
        [sys.executable, path, SECRET, server.url, str(tmp_path / "spool")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert_no_secret(r.stdout + r.stderr, "stdout/stderr")
    assert wait_until(
        lambda: any(n.endswith(".jsonl") for _, _, ns in os.walk(tmp_path / "spool") for n in ns), timeout=30
    ), "the refused events were not spooled"


def _command_lines() -> str:
    """Every process's command line (what any local user can read)."""
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open("/proc/%s/cmdline" % pid, "rb") as f:
                    out.append(f.read().replace(b"\0", b" ").decode("utf-8", "replace"))
            except OSError:
                pass
    return "\n".join(out)


@pytest.mark.parametrize("form", ["environment", "ini", "key file"])
def test_cli_command_lines_hold_no_key(tmp_path, collector, form):
    """``isstreamer log`` with the key in each documented place: no process shows it (the CLI, its
    sender)."""
    env = script_env("native")
    env.pop("ISSTREAMER_ACCESS_KEY", None)
    env["HOME"] = str(tmp_path)
    args = ["log", "-", "--api-base", collector.url, "--bucket-key", "cmdline-" + form.replace(" ", "-")]
    if form == "environment":
        env["ISSTREAMER_ACCESS_KEY"] = SECRET
    elif form == "ini":
        (tmp_path / "isstreamer.ini").write_text("[isstreamer.client_config]\naccess_key = %s\n" % SECRET)
    else:
        (tmp_path / "key").write_text(SECRET + "\n")
        os.chmod(tmp_path / "key", 0o600)
        args += ["--access-key-file", str(tmp_path / "key")]
    p = subprocess.Popen(
        [sys.executable, "-m", "isstreamer.cli", *args],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(tmp_path),
        env=env,
    )
    try:
        p.stdin.write("t,1\n")  # type: ignore[union-attr]
        p.stdin.flush()  # type: ignore[union-attr]
        assert wait_until(lambda: collector.event_count("cmdline-" + form.replace(" ", "-")) == 1, 60)
        assert_no_secret(_command_lines(), "a command line")
        p.stdin.close()  # type: ignore[union-attr]
        assert p.wait(60) == 0, p.stderr.read()  # type: ignore[union-attr]
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert_no_secret(p.stderr.read(), "the CLI's stderr")  # type: ignore[union-attr]
