"""Per-call cost of the peers, in the same run and against the same counting server.

ISStreamer 2.0.0 and influxdb-client run in their own interpreter (the peers' venv, see
``peers/setup.sh``: ``ISStreamer`` is also the import name of isstreamer's compatibility
package), as persistent workers: each pytest-benchmark round tells the worker to run one loop of
``calls_per_round`` calls (the same loop as test_log_cost.py) and waits for its answer. The
round time pytest-benchmark records includes one pipe round trip (tens of microseconds against
rounds of milliseconds); the worker's own ``perf_counter`` figures, without it, are kept in
``extra_info["inner"]`` and are what compare.py reports.
"""

from __future__ import annotations

import pytest

import benchutil
from test_log_cost import N, N_OBJECT, OBJECT

PEERS = {
    "isstreamer200-bs10": ("drive_isstreamer.py", ["--buffer-size", "10"], "events"),
    "isstreamer200-bs1000": ("drive_isstreamer.py", ["--buffer-size", "1000"], "events"),
    "influx-line": ("drive_influx.py", ["--record", "line"], "lines"),
    "influx-point": ("drive_influx.py", ["--record", "point"], "lines"),
}


@pytest.mark.parametrize("peer", list(PEERS))
@pytest.mark.benchmark(group="per-call")
def test_peer(benchmark, peers_python, count_server, quick, peer):
    script, args, counter = PEERS[peer]
    before = benchutil.count_of(count_server, counter)
    w = benchutil.PeerWorker(peers_python, script, ["--worker", "--api-base", count_server, *args])
    try:
        rounds = 8 if quick else (20 if peer.endswith("bs10") else 60)
        benchmark.pedantic(w.run, args=(N,), rounds=rounds, warmup_rounds=2)
        closed = w.close()
    finally:
        w.kill()
    logged = N * len(w.rounds)
    got, _ = benchutil.wait_count(count_server, before + logged, counter, timeout=30)
    timed = w.rounds[-rounds:]
    inner = benchutil.per_call_summary([r["elapsed"] for r in timed], N)
    cpu = sorted(r["cpu"] / N * 1e9 for r in timed)
    benchmark.extra_info.update(
        kind="peer",
        peer=peer,
        value="float",
        calls_per_round=N,
        inner=inner,
        cpu_median_ns=cpu[len(cpu) // 2],
        info=w.ready,
        close_s=closed.get("close_s"),
        logged=logged,
        delivered=got - before,
    )


@pytest.mark.benchmark(group="per-call-object")
def test_peer_log_object(benchmark, peers_python, count_server, quick):
    """ISStreamer 2.0.0 ``log_object`` of the same 10-key dict (buffer_size 1000, its cheapest)."""
    before = benchutil.count_of(count_server)
    w = benchutil.PeerWorker(
        peers_python,
        "drive_isstreamer.py",
        ["--worker", "--api-base", count_server, "--buffer-size", "1000", "--object"],
    )
    try:
        rounds = 8 if quick else 30
        benchmark.pedantic(w.run, args=(N_OBJECT,), rounds=rounds, warmup_rounds=2)
        closed = w.close()
    finally:
        w.kill()
    logged = N_OBJECT * len(w.rounds) * len(OBJECT)
    got, _ = benchutil.wait_count(count_server, before + logged, timeout=30)
    timed = w.rounds[-rounds:]
    cpu = sorted(r["cpu"] / N_OBJECT * 1e9 for r in timed)
    benchmark.extra_info.update(
        kind="peer-object",
        peer="isstreamer200-bs1000-log_object",
        value="dict10",
        calls_per_round=N_OBJECT,
        events_per_call=len(OBJECT),
        inner=benchutil.per_call_summary([r["elapsed"] for r in timed], N_OBJECT),
        cpu_median_ns=cpu[len(cpu) // 2],
        info=w.ready,
        close_s=closed.get("close_s"),
        logged=logged,
        delivered=got - before,
    )
