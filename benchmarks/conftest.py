"""Benchmark fixtures: servers in their own processes, so they never share the GIL with the loop.

Run the suite with ``python -m pytest benchmarks`` (``benchmarks/pytest.ini`` enables the
benchmarks; the project's own pytest configuration skips them), or through
``python benchmarks/compare.py``, which also prints the comparison table.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Iterator, List

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _p in (ROOT, HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import benchutil  # noqa: E402


def pytest_addoption(parser):
    parser.addoption(
        "--quick",
        action="store_true",
        default=False,
        help="fewer rounds and events (a smoke run of the suite, numbers are rougher)",
    )


@pytest.fixture(scope="session")
def quick(request) -> bool:
    return bool(request.config.getoption("--quick"))


@pytest.fixture(scope="session")
def count_server() -> Iterator[str]:
    """URL of a server that only counts the events (and InfluxDB lines) it receives."""
    p, url = benchutil.start_count_server()
    yield url
    benchutil.stop(p)


@pytest.fixture
def collector_server(tmp_path) -> Iterator["tuple[str, int]"]:
    """(URL, pid) of the real collector (``isstreamer serve``, SQLite) on a fresh database."""
    p, url = benchutil.start_collector(str(tmp_path / "collector.db"))
    yield url, p.pid
    import signal

    benchutil.stop(p, signal.SIGINT)


@pytest.fixture
def make_streamer(tmp_path) -> Iterator[Callable[..., "object"]]:
    """``make_streamer(backend, **options)``: a Streamer on the native or the pure-Python backend.

    The backend is chosen with ``ISSTREAMER_NO_EXTENSION`` (read at construction). Every Streamer
    made here is closed after the test.
    """
    import isstreamer
    from isstreamer.ring import native_available

    made: List[object] = []

    def make(backend: str = "native", **opts):
        if backend == "native" and not native_available():
            pytest.skip("the C extension is not built (python isstreamer/_build_native.py)")
        opts.setdefault("spool_dir", str(tmp_path / "spool"))
        opts.setdefault("access_key", "bench")
        opts.setdefault("bucket_name", "bench")
        old = os.environ.get("ISSTREAMER_NO_EXTENSION")
        if backend == "python":
            os.environ["ISSTREAMER_NO_EXTENSION"] = "1"
        else:
            os.environ.pop("ISSTREAMER_NO_EXTENSION", None)
        try:
            s = isstreamer.Streamer(**opts)
        finally:
            if old is None:
                os.environ.pop("ISSTREAMER_NO_EXTENSION", None)
            else:
                os.environ["ISSTREAMER_NO_EXTENSION"] = old
        assert s.stats()["backend"] == backend
        made.append(s)
        return s

    yield make
    for s in made:
        s.close(timeout=30)  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def peers_python() -> str:
    """The interpreter of the peers' venv (``benchmarks/peers/setup.sh`` creates it if needed)."""
    py = benchutil.peers_python()
    if py is None:
        pytest.skip("the peers venv could not be created (bash benchmarks/peers/setup.sh)")
    return py
