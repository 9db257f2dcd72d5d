"""A private PostgreSQL server for the tests and the benchmark, from Debian's binaries.

:class:`PgCluster` runs ``initdb`` in a temporary directory and ``pg_ctl start`` on a Unix
socket in that directory (no TCP port), as an unprivileged user when run as root (PostgreSQL
refuses root: ``nobody``, or ``$ISSTREAMER_PG_USER``); :meth:`PgCluster.stop` stops it and
removes the directory. Its superuser ``isstreamer`` logs in without a password over that socket,
which only its owner (and root) can reach. Each test gets a database of its own
(:meth:`PgCluster.create_database`).

The binaries: ``$ISSTREAMER_PG_BINDIR``, else the newest ``/usr/lib/postgresql/*/bin`` (Debian's
``postgresql`` package), else ``initdb`` on ``PATH``. ``$ISSTREAMER_TEST_POSTGRES`` (a
``postgresql://`` URL of a superuser) points the tests at a server already running instead.

    python tests/pgcluster.py        # start one, print its URL, stop it on Ctrl-C
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from typing import Dict, List, Optional
from urllib.parse import quote

#: Set (or ``CI``): a missing PostgreSQL fails the PostgreSQL variants instead of skipping them.
REQUIRE_ENV = "ISSTREAMER_REQUIRE_POSTGRES"
#: A running server to use instead of starting one (a superuser's ``postgresql://`` URL).
URL_ENV = "ISSTREAMER_TEST_POSTGRES"
SUPERUSER = "isstreamer"
#: Settings of the throwaway cluster: no TCP, and (unless ``durable``) no waiting for the disk.
_FAST = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"


def required() -> bool:
    """Whether a missing PostgreSQL must fail rather than skip (CI)."""
    return bool(os.environ.get(REQUIRE_ENV) or os.environ.get("CI"))


def find_bindir() -> Optional[str]:
    """The directory of ``initdb`` and ``pg_ctl`` (see the module docstring), or None."""
    given = os.environ.get("ISSTREAMER_PG_BINDIR")
    candidates: List[str] = [given] if given else []
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[-2]), reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(os.path.dirname(on_path))
    for d in candidates:
        if all(os.access(os.path.join(d, tool), os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
            return d
    return None


def _run_as() -> Optional[pwd.struct_passwd]:
    """The user to run the server as: None (this one) unless we are root."""
    if os.geteuid() != 0:
        return None
    return pwd.getpwnam(os.environ.get("ISSTREAMER_PG_USER", "nobody"))


class PgCluster:
    """A throwaway PostgreSQL cluster (see the module docstring). ``durable`` keeps PostgreSQL's
    default durability (fsync on every commit), as the benchmark wants."""

    def __init__(self, bindir: str, durable: bool = False) -> None:
        self.bindir = bindir
        self.durable = durable
        self.user = _run_as()
        self.dir = ""
        self._names = itertools.count(1)

    @property
    def data(self) -> str:
        """The cluster's data directory."""
        return os.path.join(self.dir, "data")

    def _run(self, *args: str) -> None:
        kw: Dict[str, object] = {}
        if self.user is not None:
            kw = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        env = dict(os.environ, LC_ALL="C", HOME=self.dir)
        done = subprocess.run(
            [os.path.join(self.bindir, args[0])] + list(args[1:]),
            cwd=self.dir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=120,
            **kw,
        )
        if done.returncode:
            log = os.path.join(self.dir, "server.log")
            tail = open(log).read()[-2000:] if os.path.exists(log) else ""
            raise RuntimeError("%s failed (%d): %s%s" % (args[0], done.returncode, done.stdout[-2000:], tail))

    def start(self) -> "PgCluster":
        """initdb and start the server; return self."""
        self.dir = tempfile.mkdtemp(prefix="isstreamer-pg-")
        if self.user is not None:
            os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
        try:
            self._run(
                "initdb", "-D", self.data, "-U", SUPERUSER, "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"
            )
            options = "-c listen_addresses='' -k %s -c max_connections=200" % self.dir
            if not self.durable:
                options += " " + _FAST
            self._run(
                "pg_ctl",
                "-D",
                self.data,
                "-l",
                os.path.join(self.dir, "server.log"),
                "-w",
                "-t",
                "60",
                "-o",
                options,
                "start",
            )
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        return self

    def url(self, dbname: str = "postgres") -> str:
        """The URL of database ``dbname`` on this cluster (the superuser, over the socket)."""
        return "postgresql://%s@/%s?host=%s" % (SUPERUSER, dbname, quote(self.dir, safe="/"))

    def postmaster_pid(self) -> int:
        """The server's main process id."""
        with open(os.path.join(self.data, "postmaster.pid")) as f:
            return int(f.readline())

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove its directory."""
        if not self.dir:
            return
        try:
            self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "-t", "60", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = ""


class Databases:
    """Fresh databases on a server given by a superuser's URL (made and dropped with psycopg)."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self._made: List[str] = []
        self._count = itertools.count(1)

    def create(self) -> str:
        """A new empty database; return its URL."""
        import psycopg
        from psycopg.conninfo import conninfo_to_dict

        name = "isstreamer_test_%d_%d" % (os.getpid(), next(self._count))
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS %s WITH (FORCE)" % name)
            conn.execute("CREATE DATABASE %s" % name)
        self._made.append(name)
        params = conninfo_to_dict(self.admin_url)
        params.pop("dbname", None)
        user = quote(str(params.pop("user", "")), safe="")
        query = "&".join("%s=%s" % (k, quote(str(v), safe="/")) for k, v in params.items())
        return "postgresql://%s@/%s%s" % (user, name, "?" + query if query else "")

    def drop_all(self) -> None:
        """Drop every database made here (closing their connections)."""
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            for name in self._made:
                conn.execute("DROP DATABASE IF EXISTS %s WITH (FORCE)" % name)
        self._made.clear()


if __name__ == "__main__":  # pragma: no cover - a manual helper
    import signal

    found = find_bindir()
    if found is None:
        raise SystemExit("no PostgreSQL server binaries (apt-get install postgresql)")
    cluster = PgCluster(found).start()
    print(cluster.url(), flush=True)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        cluster.stop()
