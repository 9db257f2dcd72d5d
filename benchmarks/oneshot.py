"""The one-shot script and the import, against ISStreamer 2.0.0 in the same run.

A cron job on a Pi reading one sensor a minute runs, each time: ``import``, ``Streamer()``, one
``log()``, ``close()``. The same script text runs under both libraries (2.0.0 from the peers'
venv, ``bash benchmarks/peers/setup.sh``), runs interleaved, each a fresh interpreter, against
``benchmarks/countserver.py`` (every run's event must arrive: checked). Wall time of the whole
process (what the cron job costs), and the import alone against a bare interpreter.

    python benchmarks/oneshot.py [--runs 21] [--json benchmarks/results/oneshot.json]

Run it with the interpreter of an environment where isstreamer is installed (or this checkout
is on the path: it is put first).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PEERS_PY = os.path.join(HERE, ".peers-venv", "bin", "python")

SCRIPT = """
import sys
from ISStreamer.Streamer import Streamer
streamer = Streamer(bucket_name="oneshot", bucket_key="oneshot", access_key="bench", ini_file_location=sys.argv[1])
streamer.log("temperature", 21.5)
streamer.close()
"""
IMPORT = "from ISStreamer.Streamer import Streamer"


def _env(ours: bool, mode: str = "") -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ISSTREAMER_", "PYTHON"))}
    if ours:
        env["PYTHONPATH"] = ROOT  # this checkout's isstreamer and ISStreamer alias first
        if mode:
            env["ISSTREAMER_MODE"] = mode
    return env


def _timed(cmd: List[str], env: Dict[str, str], cwd: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _imported_from(py: str, env: Dict[str, str], cwd: str) -> str:
    code = "import ISStreamer.Streamer as m; print(m.__file__)"
    return subprocess.run([py, "-c", code], env=env, cwd=cwd, check=True, capture_output=True, text=True).stdout


def _count(url: str) -> int:
    with urllib.request.urlopen(url + "/count", timeout=10) as r:
        return int(json.load(r)["events"])


def summary(xs: List[float]) -> Dict[str, float]:
    """Median and spread of wall times, in ms."""
    xs = sorted(x * 1e3 for x in xs)
    return {"median_ms": statistics.median(xs), "min_ms": xs[0], "p90_ms": xs[int(0.9 * (len(xs) - 1))]}


def run(runs: int, mode: str = "") -> Dict[str, Any]:
    """Measure; returns the figures (and raises if an event went missing)."""
    if not os.path.exists(PEERS_PY):
        raise SystemExit("the peers' venv is missing: bash benchmarks/peers/setup.sh")
    server = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "countserver.py"), "0"], stdout=subprocess.PIPE, text=True
    )
    assert server.stdout is not None
    url = server.stdout.readline().strip()
    tmp = tempfile.mkdtemp(prefix="isstreamer-oneshot-")
    ini = os.path.join(tmp, "isstreamer.ini")
    with open(ini, "w") as f:
        f.write(
            "[isstreamer.client_config]\naccess_key = bench\ndefault_bucket = bench\noffline_mode = false\n"
            "[isstreamer.api_config]\nstream_api_base = %s\n" % url
        )
    ours_py, peer_py = sys.executable, PEERS_PY
    kinds = {
        "bare_ours": ([ours_py, "-c", "pass"], _env(True)),
        "bare_200": ([peer_py, "-c", "pass"], _env(False)),
        "import_ours": ([ours_py, "-c", IMPORT], _env(True)),
        "import_200": ([peer_py, "-c", IMPORT], _env(False)),
        "oneshot_ours": ([ours_py, "-c", SCRIPT, ini], _env(True, mode)),
        "oneshot_200": ([peer_py, "-c", SCRIPT, ini], _env(False)),
    }
    times: Dict[str, List[float]] = {k: [] for k in kinds}
    # the scripts run in an empty directory: "-c" puts the working directory first on the path,
    # and this checkout's ISStreamer alias must not stand in for 2.0.0
    peer_from, ours_from = _imported_from(peer_py, _env(False), tmp), _imported_from(ours_py, _env(True), tmp)
    if "site-packages" not in peer_from or not ours_from.startswith(ROOT):
        raise SystemExit("one-shot: wrong libraries (2.0.0 from %s, ours from %s)" % (peer_from, ours_from))
    try:
        for cmd, env in kinds.values():  # warm-up: bytecode caches, page cache
            subprocess.run(cmd, env=env, cwd=tmp, check=True, stdout=subprocess.DEVNULL)
        sent = _count(url)
        load = os.getloadavg()
        for _ in range(runs):
            for k, (cmd, env) in kinds.items():
                times[k].append(_timed(cmd, env, tmp))
        want = sent + 2 * runs
        deadline = time.monotonic() + 30  # our senders deliver after the script exits at the latest
        while _count(url) < want and time.monotonic() < deadline:
            time.sleep(0.05)
        got = _count(url)
    finally:
        server.terminate()
        server.wait()
    if got != want:
        raise SystemExit("one-shot: %d events arrived, %d expected" % (got - sent, want - sent))
    out: Dict[str, Any] = {k: summary(v) for k, v in times.items()}
    med = {k: v["median_ms"] for k, v in out.items()}
    out["derived"] = {
        "oneshot_ratio_vs_200": med["oneshot_ours"] / med["oneshot_200"],
        "import_over_bare_ours_ms": med["import_ours"] - med["bare_ours"],
        "import_over_bare_200_ms": med["import_200"] - med["bare_200"],
    }
    out["runs"] = runs
    out["mode"] = mode or "default"
    out["loadavg"] = list(load) + list(os.getloadavg())
    return out


def table(r: Dict[str, Any]) -> str:
    """The figures as text."""
    d = r["derived"]
    rows = [
        "one-shot script (import, Streamer(), log(), close()), wall ms, median of %d (p90), mode %s:"
        % (r["runs"], r["mode"]),
        "  isstreamer %.0f (%.0f)   ISStreamer 2.0.0 %.0f (%.0f)   ratio %.2fx (target <= 1.2x)"
        % (
            r["oneshot_ours"]["median_ms"],
            r["oneshot_ours"]["p90_ms"],
            r["oneshot_200"]["median_ms"],
            r["oneshot_200"]["p90_ms"],
            d["oneshot_ratio_vs_200"],
        ),
        "import of ISStreamer.Streamer over a bare interpreter, wall ms (median):",
        "  isstreamer %.1f   ISStreamer 2.0.0 %.1f   (target <= 40 and below 2.0.0)"
        % (d["import_over_bare_ours_ms"], d["import_over_bare_200_ms"]),
        "load average before / after: %s" % " ".join("%.2f" % x for x in r["loadavg"]),
    ]
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=21)
    ap.add_argument("--mode", default="", choices=["", "process", "thread"], help="ISSTREAMER_MODE for isstreamer")
    ap.add_argument("--json", default=os.path.join(HERE, "results", "oneshot.json"))
    args = ap.parse_args()
    r = run(args.runs, args.mode)
    print(table(r))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
