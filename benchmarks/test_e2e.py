"""End to end: events per second from ``log()`` until the server has them.

* one producer into the counting server (the client's ceiling) and into the real collector
  (``isstreamer serve``, SQLite): a round logs ``events`` floats as fast as it can, then
  ``flush()`` waits until the sender has delivered them all; the round time is log + delivery,
  and the server's own count is checked. The sender's CPU (utime + stime from /proc) over the
  round gives its CPU cost per million events.
* 1, 2, 4 and 8 producer processes sharing one Streamer (handed to a ``multiprocessing.Pool``
  through ``initargs``): each producer waits on a barrier, logs ``n`` floats, then flushes. Per
  producer: wall and CPU time per call; overall: events / (last flush done - first start).

On this 2-core machine the producers, the sender and the server share two cores, so wall time
per call grows with the number of runnable processes; CPU time per call shows contention on the
ring itself (shared cache lines, locks), which is what a producer costs on a machine with a
core to spare.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import time

import pytest

import benchutil

VALUE = 21.5


def _log_and_flush(s, n):
    log = s.log
    c0, w0 = benchutil.thread_schedstat()
    t0 = time.perf_counter()
    for _ in range(n):
        log("temperature", VALUE)
    t1 = time.perf_counter()
    c1, w1 = benchutil.thread_schedstat()
    ok = s.flush(300)
    t2 = time.perf_counter()
    return {"loop_s": t1 - t0, "round_s": t2 - t0, "flushed": ok, "loop_cpu_s": c1 - c0, "loop_wait_s": w1 - w0}


def _one_producer(benchmark, s, events, rounds, server_count, server_pid, requests=None):
    s.log("temperature", VALUE)  # attach, cache the key, create the bucket
    assert s.flush(60)
    spid = benchutil.sender_pid(s)
    stats = []

    def snapshot():
        return {
            "count": server_count(),
            "sender_cpu": benchutil.proc_cpu_seconds(spid),
            "server_cpu": benchutil.proc_cpu_seconds(server_pid),
            "cpu": time.process_time(),
            "requests": requests() if requests else 0,
        }

    def setup():
        stats.append({"before": snapshot()})

    def run():
        stats[-1].update(_log_and_flush(s, events))

    benchmark.pedantic(run, setup=setup, rounds=rounds, warmup_rounds=0)
    end = snapshot()
    # a round's counters run from its setup to the next round's setup (the last one: to now)
    for i, st in enumerate(stats):
        a, b = st["before"], (stats[i + 1]["before"] if i + 1 < len(stats) else end)
        st.update({k: b[k] - a[k] for k in a})
    med = statistics.median

    def per_million(k):
        return med(st[k] for st in stats) / events * 1e6

    benchmark.extra_info.update(
        kind="e2e",
        events_per_round=events,
        delivered_per_round=[st["count"] for st in stats],
        all_delivered=all(st["count"] == events for st in stats),
        loop_ns_per_call=med(st["loop_s"] for st in stats) / events * 1e9,
        loop_cpu_ns_per_call=med(st["loop_cpu_s"] for st in stats) / events * 1e9,
        loop_runqueue_wait_ns_per_call=med(st["loop_wait_s"] for st in stats) / events * 1e9,
        sender_cpu_s_per_million=per_million("sender_cpu"),
        producer_cpu_s_per_million=per_million("cpu"),
        server_cpu_s_per_million=per_million("server_cpu"),
        events_per_request=(events / med(st["requests"] for st in stats)) if requests else None,
        dropped=s.stats()["dropped"],
        # issue 10: delivered events/s (first log() until flush(timeout) saw them delivered) against
        # the same round's log() rate; target >= 0.9 (the sender is never the bottleneck)
        log_rate_per_s=med(events / st["loop_s"] for st in stats),
        delivered_rate_per_s=med(events / st["round_s"] for st in stats),
        delivered_over_log_per_round=[st["loop_s"] / st["round_s"] for st in stats],
        delivered_over_log=med(st["loop_s"] / st["round_s"] for st in stats),
        loadavg=benchutil.loadavg(),
    )


@pytest.mark.parametrize("config", ["defaults", "ring64M-1producer"])
@pytest.mark.benchmark(group="e2e-countserver")
def test_e2e_countserver(benchmark, make_streamer, count_server, quick, config):
    opts = {} if config == "defaults" else {"ring_size": 64 * 1024 * 1024}
    s = make_streamer("native", api_base=count_server, **opts)
    events = 200_000 if quick else 1_000_000
    _one_producer(
        benchmark,
        s,
        events,
        2 if quick else 5,
        lambda: benchutil.count_of(count_server),
        benchutil.count_of(count_server, "pid"),
        lambda: benchutil.count_of(count_server, "requests"),
    )
    benchmark.extra_info.update(server="countserver", config=config)


@pytest.mark.benchmark(group="e2e-collector")
def test_e2e_collector(benchmark, make_streamer, collector_server, quick):
    url, pid = collector_server
    s = make_streamer("native", api_base=url)
    events = 50_000 if quick else 200_000
    _one_producer(
        benchmark, s, events, 2 if quick else 3, lambda: int(benchutil.get_json(url + "/api/stats")["events"]), pid
    )
    benchmark.extra_info.update(server="collector", config="defaults")


# ---- several producer processes sharing one Streamer -------------------------------------------
_S = None
_BARRIER = None


def _pool_init(streamer, barrier):
    global _S, _BARRIER
    _S, _BARRIER = streamer, barrier


def _producer_task(n):
    s = _S
    s.log("temperature", VALUE)  # attach this process's segment before the clock starts
    s.flush(60)
    _BARRIER.wait(60)
    c0, w0 = benchutil.thread_schedstat()
    start = time.perf_counter()
    log = s.log
    for _ in range(n):
        log("temperature", VALUE)
    loop_end = time.perf_counter()
    c1, w1 = benchutil.thread_schedstat()
    ok = s.flush(300)
    return {
        "pid": os.getpid(),
        "start": start,
        "loop_s": loop_end - start,
        "cpu_s": c1 - c0,
        "wait_s": w1 - w0,
        "flushed_at": time.perf_counter(),
        "flushed": ok,
        "n": n,
    }


@pytest.mark.parametrize("producers", [1, 2, 4, 8])
@pytest.mark.benchmark(group="e2e-producers")
def test_e2e_producers(benchmark, make_streamer, count_server, quick, producers):
    # 16 MiB per segment: a producer's events of a round fit, so the per-call figures are the
    # producer's own cost, not waits for the sender; the throughput is the delivery rate.
    s = make_streamer("native", api_base=count_server, ring_size=16 * 1024 * 1024, full_timeout=60.0)
    n = 50_000 if quick else 300_000
    ctx = multiprocessing.get_context()
    barrier = ctx.Barrier(producers)
    spid = benchutil.sender_pid(s)
    results = []
    with ctx.Pool(producers, initializer=_pool_init, initargs=(s, barrier)) as pool:

        def run():
            before = benchutil.count_of(count_server)
            c0 = benchutil.proc_cpu_seconds(spid)
            res = pool.map(_producer_task, [n] * producers, chunksize=1)
            got, _ = benchutil.wait_count(count_server, before + producers * n + producers, timeout=60)
            results.append(
                {"res": res, "delivered": got - before, "sender_cpu_s": benchutil.proc_cpu_seconds(spid) - c0}
            )

        benchmark.pedantic(run, rounds=2 if quick else 3, warmup_rounds=0)
    per_call_wall, per_call_cpu, per_call_wait, rates = [], [], [], []
    for r in results:
        res = r["res"]
        assert len({x["pid"] for x in res}) == producers, "a worker ran two producers' tasks"
        per_call_wall.append(statistics.median(x["loop_s"] / x["n"] for x in res) * 1e9)
        per_call_cpu.append(statistics.median(x["cpu_s"] / x["n"] for x in res) * 1e9)
        per_call_wait.append(statistics.median(x["wait_s"] / x["n"] for x in res) * 1e9)
        span = max(x["flushed_at"] for x in res) - min(x["start"] for x in res)
        rates.append(producers * n / span)
    med = statistics.median
    benchmark.extra_info.update(
        kind="producers",
        producers=producers,
        events_per_producer=n,
        per_call_wall_ns=med(per_call_wall),
        per_call_cpu_ns=med(per_call_cpu),
        per_call_runqueue_wait_ns=med(per_call_wait),
        per_call_wall_ns_max_producer=med(max(x["loop_s"] / x["n"] for x in r["res"]) * 1e9 for r in results),
        events_per_s=med(rates),
        sender_cpu_s_per_million=med(r["sender_cpu_s"] for r in results) / (producers * n) * 1e6,
        all_delivered=all(r["delivered"] >= producers * (n + 1) for r in results),
        dropped=s.stats()["dropped"],
    )
