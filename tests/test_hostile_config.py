"""Hostile configuration: unreadable ini, ``%`` in values, a base URL with a path prefix, a spool
directory that cannot be created or is full. Each gives a clear message; none crashes the loop
that logs (scripts run as subprocesses, with their sender processes, against real servers).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from typing import List

import pytest

from support import ProxyServer, script_env, write_script

import isstreamer
from isstreamer.config import ConfigError, load_config


def dead_url() -> str:
    """A loopback URL where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return "http://127.0.0.1:%d" % port


class PrefixProxy(ProxyServer):
    """Serves ``<prefix>/...`` by forwarding it to ``target/...``.

    Stands for a reverse proxy that publishes the events API under a path prefix; ``paths``
    records every request path it was asked for.
    """

    def __init__(self, target: str, prefix: str) -> None:
        super().__init__(target)
        self.prefix = prefix.rstrip("/")
        self.paths: List[str] = []

    async def handle(self, request):  # -> web.Response
        from aiohttp import web

        self.paths.append(request.path)
        if not request.path.startswith(self.prefix + "/"):
            return web.Response(status=404, text="not under the prefix")
        return await self.forward(
            request, self.target + request.path[len(self.prefix) :], ("content-type", "retry-after", "x-request-id")
        )


# --------------------------------------------------------------------------- ini files


def test_ini_path_that_is_a_directory(tmp_path):
    """ini_file_location naming a directory: a ConfigError that names the file and the reason."""
    d = tmp_path / "isstreamer.ini"
    d.mkdir()
    with pytest.raises(ConfigError) as info:
        isstreamer.Streamer(ini_file_location=str(d), access_key="k")
    msg = str(info.value)
    assert str(d) in msg and "cannot read config file" in msg and "directory" in msg.lower()


def test_searched_ini_that_is_a_directory(tmp_path):
    """The ini found by the default search (home, then cwd) is a directory: same clear error."""
    home = tmp_path / "home"
    (home / "isstreamer.ini").mkdir(parents=True)
    with pytest.raises(ConfigError, match="cannot read config file .*isstreamer.ini.*[Dd]irectory"):
        load_config(home=str(home), cwd=str(tmp_path), environ={})


def test_unreadable_ini_in_a_script_is_one_clear_line(tmp_path):
    """A user's script with HOME/isstreamer.ini unreadable fails at construction, saying why."""
    home = tmp_path / "home"
    (home / "isstreamer.ini").mkdir(parents=True)
    path = write_script(
        tmp_path,
        "ini.py",
        """
        import isstreamer
        try:
            isstreamer.Streamer(bucket_key="b")
        except isstreamer.config.ConfigError as exc:
            print("ERROR", exc)
    """,
    )
    env = script_env("python", HOME=str(home))
    r = subprocess.run([sys.executable, path], env=env, capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "ERROR isstreamer: cannot read config file" in r.stdout and "isstreamer.ini" in r.stdout


def test_percent_signs_in_ini_values(tmp_path, collector, backend):
    """'%' is data, not interpolation: key, bucket name and base URL come through unchanged."""
    ini = tmp_path / "isstreamer.ini"
    ini.write_text(
        "[isstreamer.client_config]\n"
        "access_key = ist_100%%key%(x)s\n"
        "default_bucket = 100% sure %s %(name)s\n"
        "[isstreamer.api_config]\n"
        "stream_api_base = " + collector.url + "\n"
    )
    cfg = load_config(ini_file_location=str(ini), environ={})
    assert cfg.access_key == "ist_100%%key%(x)s"
    assert cfg.bucket_name == "100% sure %s %(name)s"
    s = isstreamer.Streamer(bucket_key="pct", ini_file_location=str(ini), spool_dir=str(tmp_path / "spool"))
    try:
        s.log("load %", "50%")
        assert s.flush(timeout=60)
    finally:
        s.close(timeout=10)
    assert [(e["key"], e["value"]) for e in collector.events("pct")] == [("load %", "50%")]
    assert [b["name"] for b in collector.buckets() if b["key"] == "pct"] == ["100% sure %s %(name)s"]


# --------------------------------------------------------------------------- base URL prefix


def test_base_url_with_a_path_prefix(tmp_path, collector, backend):
    """Events and buckets go to <base>/api/events and <base>/api/buckets under the prefix."""
    proxy = PrefixProxy(collector.url, "/ingest/v1").start()
    try:
        s = isstreamer.Streamer(
            bucket_name="prefixed",
            bucket_key="prefix",
            access_key="k",
            api_base=proxy.url + "/ingest/v1/",
            spool_dir=str(tmp_path / "spool"),
            flush_interval=0.1,
        )
        try:
            assert s.StreamApiBase == proxy.url + "/ingest/v1"  # trailing slash dropped
            for i in range(30):
                s.log("n", i)
            assert s.flush(timeout=60)
        finally:
            s.close(timeout=10)
    finally:
        proxy.stop()
    assert sorted(e["value"] for e in collector.events("prefix")) == list(range(30))
    assert "/ingest/v1/api/events" in proxy.paths and "/ingest/v1/api/buckets" in proxy.paths
    assert all(p.startswith("/ingest/v1/api/") for p in proxy.paths), proxy.paths
    assert not any(e["path"] != "/api/events" and "events" in e["path"] for e in collector.requests_log())


# --------------------------------------------------------------------------- spool directory

LOOP_SCRIPT = """
    import sys, isstreamer
    s = isstreamer.Streamer(bucket_key="spool-test", access_key="k", api_base=sys.argv[1],
                            spool_dir=sys.argv[2], flush_interval=0.05, max_attempts=1, max_batch_events=50,
                            backoff_max=0.1, close_timeout=5, spool_max_bytes=int(sys.argv[4]))
    for i in range(int(sys.argv[3])):
        s.log("reading", "value %06d " % i + "x" * 100)
    print("flushed", s.flush(timeout=2))  # False when the spool cannot take the events
    s.close(timeout=2)
    print("loop done", s.stats())
"""


def _loop(tmp_path, backend: str, spool_dir: str, n: int, cap: int = 512 * 1024 * 1024) -> subprocess.CompletedProcess:
    path = write_script(tmp_path, "loop.py", LOOP_SCRIPT)
    r = subprocess.run(
        [sys.executable, path, dead_url(), spool_dir, str(n), str(cap)],
        env=script_env(backend),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0, r.stderr
    assert "loop done" in r.stdout, r.stdout + r.stderr
    return r


@pytest.mark.slow
def test_spool_dir_under_a_regular_file(tmp_path, backend):
    """makedirs fails (root ignores chmod, so a regular file stands in the path): the sender
    says it cannot write the spool, counts the events as failed, and the loop runs on."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a regular file")
    r = _loop(tmp_path, backend, str(blocker / "spool"), 200)
    assert "cannot write the spool" in r.stderr, r.stderr
    assert "Not a directory" in r.stderr and str(blocker) in r.stderr
    assert blocker.read_text() == "a regular file"


@pytest.fixture
def tiny_fs(tmp_path):
    """A 64 KiB tmpfs (needs mount rights: root in a container with CAP_SYS_ADMIN), else skip."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if r.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (%s): spool-full test needs mount rights" % r.stderr.strip())
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.slow
def test_spool_on_a_full_filesystem(tmp_path, backend, tiny_fs):
    """ENOSPC while spooling: a clear message, the loop completes, no torn line left behind."""
    r = _loop(tmp_path, backend, str(tiny_fs / "spool"), 3000)
    assert "No space left on device" in r.stderr, r.stderr
    lines = 0
    for dirpath, _, names in os.walk(tiny_fs / "spool"):
        for n in names:
            if n.endswith(".jsonl"):
                with open(os.path.join(dirpath, n), "rb") as f:
                    for line in f:
                        assert line.endswith(b"\n")
                        assert isinstance(json.loads(line), list)
                        lines += 1
    assert lines > 0, "some batches should have fit before the filesystem filled up"


def test_spool_size_cap(tmp_path, backend):
    """spool_max_bytes reached: 'spool is full' once, drops counted, the loop completes."""
    r = _loop(tmp_path, backend, str(tmp_path / "spool"), 2000, cap=20_000)
    assert "is full" in r.stderr, r.stderr
    assert "'spool_full':" in r.stdout, r.stdout


@pytest.mark.slow
def test_spool_write_errors_are_reported_once(tmp_path, tiny_fs):
    """A full disk is one message, not one line per batch for as long as it stays full
    (the sender used to print one line per failed batch)."""
    r = _loop(tmp_path, "python", str(tiny_fs / "spool"), 3000)
    assert "No space left on device" in r.stderr
    assert r.stderr.count("cannot write the spool") <= 3, r.stderr.count("cannot write the spool")


def test_max_batch_events_zero_is_refused_or_works(tmp_path, collector, backend):
    """A batch size of 0 is either refused at construction or still delivers the events."""
    import signal

    try:
        s = isstreamer.Streamer(
            bucket_key="zero-batch",
            access_key="k",
            api_base=collector.url,
            spool_dir=str(tmp_path / "spool"),
            max_batch_events=0,
            close_timeout=1,
        )
    except ValueError as exc:
        assert "max_batch_events" in str(exc)
        return
    pid = s.sender_pid
    try:
        s.log("n", 1)
        delivered = s.flush(timeout=5)
    finally:
        s.close(timeout=1)
        try:  # never leave a spinning sender behind
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert delivered and [e["value"] for e in collector.events("zero-batch")] == [1]
