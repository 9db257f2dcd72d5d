"""Shared pytest fixtures.

Keep this file tidy: one section per area, fixtures documented, heavy imports inside fixtures.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import sys
from typing import Any, Callable, Iterator, List

import pytest

# Make the work tree importable when the package is not installed (plain `pytest` from the repo).
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)


# --------------------------------------------------------------------------- the fast run and the slow run

# End-to-end suites whose fallback variants (backend "python") run in the slow run: the fast run
# exercises the fallback through the unit-level suites (ring, twin, sender in one process,
# encoder, aggregation kernel, epochs, fuzz regressions, process model) and these suites with
# the C extension; CI runs both.
FALLBACK_IN_SLOW_RUN = {
    "test_aggregate",
    "test_crash_safety",
    "test_delivery",
    "test_hostile_config",
    "test_limits",
    "test_multiprocess",
    "test_properties",
    "test_ring_stress",
    "test_streamer",
    "test_wake_and_flush",
    "test_secrets",
}


@pytest.fixture(autouse=True)
def own_spool(tmp_path_factory: Any, monkeypatch: Any) -> None:
    """Every test (and every process it starts) spools into a directory of its own, never into
    this user's real spool (~/.local/state/isstreamer/spool): runs of the suite used to fill that
    to its 512 MiB cap, and a later run then counted drops as spool_full. A test that sets a
    spool directory itself (an argument, or its own environment) still wins."""
    monkeypatch.setenv("ISSTREAMER_SPOOL_DIR", str(tmp_path_factory.mktemp("spool")))


def pytest_collection_modifyitems(config: Any, items: List[Any]) -> None:
    """Mark the fallback variants of the end-to-end suites ``slow`` (see FALLBACK_IN_SLOW_RUN)."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if (
            callspec is not None
            and callspec.params.get("backend") == "python"
            and item.module.__name__ in FALLBACK_IN_SLOW_RUN
        ):
            item.add_marker(pytest.mark.slow)


# --------------------------------------------------------------------------- backends


@pytest.fixture(params=["native", "python"])
def backend(request: Any, monkeypatch: Any) -> str:
    """Run the test with the C extension and with the fallback, in this process and in the
    processes it starts (the Streamer reads ISSTREAMER_NO_EXTENSION when it is made)."""
    from isstreamer.ring import native_available

    if request.param == "native":
        if not native_available():
            pytest.fail("the C extension is not built (python isstreamer/_build_native.py)")
        monkeypatch.delenv("ISSTREAMER_NO_EXTENSION", raising=False)
    else:
        monkeypatch.setenv("ISSTREAMER_NO_EXTENSION", "1")
    return request.param


# --------------------------------------------------------------------------- local collector

#: The collector's storage backends. A test marked ``collector_backends`` (a whole module with
#: ``pytestmark``) runs once per backend through its collector fixtures; others use SQLite.
COLLECTOR_BACKENDS = ("sqlite", "postgres")


def pytest_generate_tests(metafunc: Any) -> None:
    """Parametrize ``collector_backend`` for tests marked ``collector_backends(*names, slow=())``
    (names: all backends when none are given). The PostgreSQL variants (and the variants named
    in ``slow``) carry the ``slow`` marker: the fast run checks the suites on SQLite, the slow
    run (CI) on both."""
    marker = metafunc.definition.get_closest_marker("collector_backends")
    if marker is None or "collector_backend" not in metafunc.fixturenames:
        return
    params = []
    for name in marker.args or COLLECTOR_BACKENDS:
        slow = name != "sqlite" or name in marker.kwargs.get("slow", ())
        params.append(pytest.param(name, marks=[pytest.mark.slow] if slow else []))
    metafunc.parametrize("collector_backend", params, indirect=True)


@pytest.fixture
def collector_backend(request: Any) -> str:
    """The storage backend of the collectors this test starts: ``sqlite`` unless parametrized."""
    return getattr(request, "param", "sqlite")


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[Any]:
    """Fresh PostgreSQL databases (``pgcluster.Databases``): on ``$ISSTREAMER_TEST_POSTGRES``, else
    on a private cluster started for the session (stopped at its end). Without PostgreSQL's
    binaries (or psycopg) the PostgreSQL variants skip, saying why; in CI they fail."""
    import pgcluster

    def unavailable(reason: str) -> None:
        if pgcluster.required():
            pytest.fail("PostgreSQL required (CI or %s) but %s" % (pgcluster.REQUIRE_ENV, reason))
        pytest.skip(reason)

    if importlib.util.find_spec("psycopg") is None:
        unavailable("psycopg is not installed (pip install -e '.[postgres]')")
    given = os.environ.get(pgcluster.URL_ENV)
    cluster = None
    if not given:
        bindir = pgcluster.find_bindir()
        if bindir is None:
            unavailable("no PostgreSQL server binaries (apt-get install postgresql, or set ISSTREAMER_PG_BINDIR)")
        cluster = pgcluster.PgCluster(bindir).start()
    databases = pgcluster.Databases(given or cluster.url())  # type: ignore[union-attr]
    try:
        yield databases
    finally:
        try:
            databases.drop_all()
        finally:
            if cluster is not None:
                cluster.stop()


@pytest.fixture
def collector_db(collector_backend: str, tmp_path: Any, request: Any) -> Iterator[Callable[[], str]]:
    """Makes databases for collectors: files under tmp_path, or new PostgreSQL databases."""
    if collector_backend == "sqlite":
        names = itertools.count()
        yield lambda: str(tmp_path / ("collector-%d.db" % next(names)))
        return
    databases = request.getfixturevalue("postgres_databases")
    yield databases.create


@pytest.fixture
def collector_factory(collector_db: Callable[[], str]) -> Iterator[Callable[..., Any]]:
    """Start ``CollectorServer(**kwargs)`` instances (each on a new database of the test's
    backend unless ``db_path`` is given); all stopped at teardown."""
    from isstreamer.collector.server import CollectorServer

    started: List[CollectorServer] = []

    def make(**kwargs: Any) -> CollectorServer:
        kwargs.setdefault("db_path", collector_db())
        server = CollectorServer(**kwargs).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def hold_writers() -> Callable[[Any, Any], None]:
    """``hold(server, gate)`` keeps every writer thread of a running collector busy until
    ``gate`` (a threading.Event) is set: the writes sent meanwhile stay in flight."""

    def hold(server: Any, gate: Any) -> None:
        store = server.store
        for _ in range(store.writers):
            store.call_write(lambda session: gate.wait(30))

    return hold


@pytest.fixture
def collector(collector_factory: Callable[..., Any]) -> Any:
    """A running local collector with default settings (any access key accepted)."""
    return collector_factory()


@pytest.fixture
def gated(collector: Any) -> Iterator[Any]:
    """A closed gate in front of the collector (support.GatedProxy): requests wait until it opens."""
    from support import GatedProxy

    proxy = GatedProxy(collector.url).start()
    yield proxy
    proxy.stop()
