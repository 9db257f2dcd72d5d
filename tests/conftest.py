"""Shared pytest fixtures.

Keep this file tidy: one section per area, fixtures documented, heavy imports inside fixtures.
"""
from __future__ import annotations

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
    "test_aggregate", "test_crash_safety", "test_delivery", "test_hostile_config", "test_limits",
    "test_multiprocess", "test_properties", "test_ring_stress", "test_streamer", "test_wake_and_flush",
    "test_secrets",
}


def pytest_collection_modifyitems(config: Any, items: List[Any]) -> None:
    """Mark the fallback variants of the end-to-end suites ``slow`` (see FALLBACK_IN_SLOW_RUN)."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if (callspec is not None and callspec.params.get("backend") == "python"
                and item.module.__name__ in FALLBACK_IN_SLOW_RUN):
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


@pytest.fixture
def collector_factory(tmp_path: Any) -> Iterator[Callable[..., Any]]:
    """Start ``CollectorServer(**kwargs)`` instances (db under tmp_path); all stopped at teardown."""
    from isstreamer.collector.server import CollectorServer

    started: List[CollectorServer] = []

    def make(**kwargs: Any) -> CollectorServer:
        kwargs.setdefault("db_path", str(tmp_path / ("collector-%d.db" % len(started))))
        server = CollectorServer(**kwargs).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


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
