"""Benchmark fixtures: servers in their own processes, so they never share the GIL with the loop."""
from __future__ import annotations

import os
import subprocess
import sys
from typing import Iterator

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def _start(args) -> "tuple[subprocess.Popen, str]":
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env)
    assert p.stdout is not None
    url = p.stdout.readline().strip()
    return p, url


@pytest.fixture(scope="session")
def count_server() -> Iterator[str]:
    """URL of a server that only counts the events it receives."""
    p, url = _start([sys.executable, os.path.join(ROOT, "benchmarks", "countserver.py")])
    yield url
    p.terminate()
    p.wait(10)
