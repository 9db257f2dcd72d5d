"""Paths planted by another local user (issue 20, items 3 and 5): the collector's database and its
``-wal``/``-shm``/``-journal`` files, key files, the offline-mode CSV.

Another user is played by uid/gid 65534 (``nobody``): the tests that need to give a file away run
as root only.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from typing import Any

import pytest
import requests

from isstreamer.collector.server import CollectorServer
from isstreamer.safefile import Refused
from support import ROOT

OTHER = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")


def serve(tmp_path: Any, *args: str) -> subprocess.CompletedProcess:
    """``isstreamer serve ARGS``, expected to refuse to start: still serving after 10 s is
    reported as exit status 0."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "isstreamer.cli", "serve", "--port", "0", *args]
    try:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=10, cwd=str(tmp_path))
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(cmd, 0, "", "still serving after 10 s")


def planted(path: Any, mode: int = 0o666, owner: int = OTHER) -> None:
    """A file another user created first."""
    path.write_bytes(b"")
    os.chown(path, owner, owner)
    os.chmod(path, mode)


# --------------------------------------------------------------------------- the database


def test_world_writable_directory_refused(tmp_path: Any) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)  # like /tmp: anyone may create the -wal and -shm names first
    r = serve(tmp_path, "--db", str(shared / "collector.db"))
    assert r.returncode != 0 and "writable by other users" in r.stderr, r.stderr
    assert os.listdir(shared) == []
    with pytest.raises(Refused, match="writable by other users"):
        CollectorServer(db_path=str(shared / "c.db")).start()


def test_private_directory_under_a_shared_one_refused(tmp_path: Any) -> None:
    shared = tmp_path / "shared"
    (shared / "mine").mkdir(parents=True)
    os.chmod(shared, 0o777)  # no sticky bit: another user may rename "mine" and put their own there
    os.chmod(shared / "mine", 0o700)
    r = serve(tmp_path, "--db", str(shared / "mine" / "collector.db"))
    assert r.returncode != 0 and "without the sticky bit" in r.stderr, r.stderr
    os.chmod(shared, 0o1777)  # like /tmp: safe, the names inside it cannot be taken over
    with CollectorServer(db_path=str(shared / "mine" / "collector.db")) as server:
        assert server.running


@as_root
def test_directory_of_another_user_refused(tmp_path: Any) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, OTHER, OTHER)
    r = serve(tmp_path, "--db", str(theirs / "collector.db"))
    assert r.returncode != 0 and "owned by uid %d" % OTHER in r.stderr, r.stderr


@as_root
@pytest.mark.parametrize("suffix", ["", "-wal", "-shm", "-journal"])
def test_planted_database_files_refused(tmp_path: Any, suffix: str) -> None:
    db = tmp_path / "collector.db"
    victim = tmp_path / ("collector.db" + suffix)
    planted(victim)
    r = serve(tmp_path, "--db", str(db))
    assert r.returncode != 0 and "owned by uid %d" % OTHER in r.stderr and str(victim) in r.stderr, r.stderr
    assert os.stat(victim).st_uid == OTHER and victim.read_bytes() == b""  # untouched


@pytest.mark.parametrize("suffix", ["", "-wal", "-shm", "-journal"])
def test_planted_symlinks_refused(tmp_path: Any, suffix: str) -> None:
    target = tmp_path / "precious"
    target.write_bytes(b"root's data")
    os.chmod(target, 0o644)
    db = tmp_path / "collector.db"
    (tmp_path / ("collector.db" + suffix)).symlink_to(target)
    r = serve(tmp_path, "--db", str(db))
    assert r.returncode != 0 and "symbolic link" in r.stderr, r.stderr
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o644 and target.read_bytes() == b"root's data"


def test_database_in_a_directory_reached_through_your_symlink(tmp_path: Any) -> None:
    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(tmp_path / "real")  # e.g. a data directory on another disk
    with CollectorServer(db_path=str(tmp_path / "link" / "c.db")) as server:
        assert server.store is not None and server.store.path == str(tmp_path / "real" / "c.db")
        assert (
            requests.post(
                server.url + "/api/events",
                json={"key": "t", "value": 1},
                headers={"X-IS-AccessKey": "k", "X-IS-BucketKey": "b"},
            ).status_code
            == 204
        )
    assert (tmp_path / "real" / "c.db").exists()


def test_database_created_private(tmp_path: Any) -> None:
    with CollectorServer(db_path=str(tmp_path / "new.db")) as server:
        assert (
            requests.post(
                server.url + "/api/events",
                json={"key": "t", "value": 1},
                headers={"X-IS-AccessKey": "k", "X-IS-BucketKey": "b"},
            ).status_code
            == 204
        )
        for name in ("new.db", "new.db-wal", "new.db-shm"):
            assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o600, name


# --------------------------------------------------------------------------- key files


def test_key_file_must_be_private(tmp_path: Any) -> None:
    keys = tmp_path / "keys"
    keys.write_text("a-key\n")
    os.chmod(keys, 0o644)
    r = serve(tmp_path, "--db", str(tmp_path / "c.db"), "--access-key-file", str(keys))
    assert r.returncode != 0 and "0600 expected" in r.stderr, r.stderr
    link = tmp_path / "link"
    os.chmod(keys, 0o600)
    link.symlink_to(keys)
    r = serve(tmp_path, "--db", str(tmp_path / "c.db"), "--access-key-file", str(link))
    assert r.returncode != 0 and "symbolic link" in r.stderr, r.stderr


@as_root
def test_key_file_of_another_user_refused(tmp_path: Any) -> None:
    keys = tmp_path / "keys"
    keys.write_text("their-key\n")
    os.chown(keys, OTHER, OTHER)
    os.chmod(keys, 0o600)
    r = serve(tmp_path, "--db", str(tmp_path / "c.db"), "--admin-key-file", str(keys))
    assert r.returncode != 0 and "owned by uid %d" % OTHER in r.stderr, r.stderr


# --------------------------------------------------------------------------- the offline CSV


def _offline(tmp_path: Any, name: str, **kw: Any) -> Any:
    import isstreamer

    return isstreamer.Streamer(bucket_key="off", offline=True, offline_file=str(tmp_path / name), **kw)


def test_offline_csv_created_private(tmp_path: Any) -> None:
    old = os.umask(0o022)
    try:
        s = _offline(tmp_path, "out.csv")
    finally:
        os.umask(old)
    s.log("t", 1)
    s.close()
    assert stat.S_IMODE(os.stat(tmp_path / "out.csv").st_mode) == 0o600
    assert "t" in (tmp_path / "out.csv").read_text()


def test_offline_csv_symlink_refused(tmp_path: Any) -> None:
    target = tmp_path / "precious"
    target.write_text("keep me\n")
    (tmp_path / "out.csv").symlink_to(target)
    with pytest.raises(Refused, match="symbolic link"):
        _offline(tmp_path, "out.csv")
    assert target.read_text() == "keep me\n"


def test_offline_csv_handle_appends_through_no_symlink(tmp_path: Any) -> None:
    import pickle

    s = _offline(tmp_path, "out.csv")
    s.log("t", 1)
    state = pickle.dumps(s)
    s.close()
    os.rename(tmp_path / "out.csv", tmp_path / "moved.csv")
    (tmp_path / "out.csv").symlink_to(tmp_path / "moved.csv")
    with pytest.raises(Refused, match="symbolic link"):
        pickle.loads(state)


@as_root
def test_offline_csv_of_another_user_refused(tmp_path: Any) -> None:
    planted(tmp_path / "out.csv")
    with pytest.raises(Refused, match="owned by uid %d" % OTHER):
        _offline(tmp_path, "out.csv")
    assert (tmp_path / "out.csv").read_bytes() == b""


def test_own_older_offline_csv_made_private(tmp_path: Any) -> None:
    path = tmp_path / "out.csv"
    path.write_text("old,row\n")
    os.chmod(path, 0o644)
    s = _offline(tmp_path, "out.csv")
    s.log("t", 1)
    s.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
