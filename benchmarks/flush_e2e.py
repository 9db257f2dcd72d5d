"""Issue 10's "Must show", two of its benchmarks, repeated in trials with the load average of each.

* flush: a ``log_object(a 10-key dict); flush()`` loop, isstreamer against ISStreamer 2.0.0 (its
  own interpreter, the peers' venv, a persistent ``PeerWorker``), against one counting server, in
  the same trial, in a rotating order. isstreamer runs twice: ``flush()`` (use_async=True: hands
  over to the sender and returns without waiting on the network) and ``flush(timeout=10)`` (waits
  until the API accepted the events). 2.0.0's ``flush()`` pops its queue and POSTs it in the
  caller's thread, on a new connection, and returns after the response (``Streamer.flush`` ->
  ``ship_to_api`` -> ``getresponse()``; its ``use_async`` only moves the ``buffer_size``-triggered
  shipments of ``log()`` to threads), so ``flush(timeout=10)`` is the like-for-like comparison;
  the async ``flush()`` row is what a user gets by default. After the async loop a
  ``flush(timeout=60)`` waits for the backlog; its time is reported apart ("drain").
  Target: isstreamer at least as fast (ratio of 2.0.0's per-iteration time to isstreamer's >= 1).
  A fourth row, a diagnostic and not an API: ``flush()`` then polling the segment every 0.1 ms
  until released, to tell the delivery pipeline's latency from ``flush(timeout)``'s polling.
* e2e: one producer logs ``--events`` floats as fast as it can, then ``flush(timeout=120)`` waits
  until the counting server accepted them all. Log rate = events / loop time; delivered rate =
  events / (loop + wait for delivery), from the same round. Target: delivered >= 90% of log.
  Default ring (64 MiB: a round fits) and a 1 MiB ring (a round does not fit: a slow sender would
  make the producer wait, which shows as "slept" time of the loop, wall - CPU - run-queue wait;
  the ratio is then near 1 because the producer runs at the sender's pace, so read it with the
  slept share).

    python benchmarks/flush_e2e.py [--trials 5] [--iters 400] [--events 1000000] [--json FILE]

Every figure is from this machine as it is (2 shared cores, other users' load): compare ratios
from the same trial, not absolute times across runs. Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]

import benchutil  # noqa: E402
import isstreamer  # noqa: E402
from test_log_cost import OBJECT  # noqa: E402  (the dict drive_isstreamer.py --object logs too)


def _wait_server(url: str, target: int, timeout: float = 60.0) -> int:
    return benchutil.wait_count(url, target, timeout=timeout)[0]


def flush_trials(url: str, peers_py: str, trials: int, iters: int, spool: str) -> List[Dict[str, Any]]:
    out: List[Dict[str, Any]] = []
    peer = benchutil.PeerWorker(
        peers_py,
        "drive_isstreamer.py",
        ["--worker", "--api-base", url, "--buffer-size", "10", "--object", "--flush-each"],
    )
    s = isstreamer.Streamer(
        access_key="bench", bucket_name="bench", bucket_key="flush-loop", api_base=url, spool_dir=spool
    )
    try:
        # warm both: connections, bucket creation, key caches
        peer.run(20)
        s.log_object(OBJECT)
        assert s.flush(timeout=30)
        lo, fl = s.log_object, s.flush

        def iso_async(n: int) -> Dict[str, float]:
            t0 = time.perf_counter()
            for _ in range(n):
                lo(OBJECT)
                fl()
            t1 = time.perf_counter()
            ok = fl(timeout=60)
            return {"elapsed": t1 - t0, "drain": time.perf_counter() - t1, "ok": ok}

        def iso_timeout(n: int) -> Dict[str, float]:
            fails = 0
            t0 = time.perf_counter()
            for _ in range(n):
                lo(OBJECT)
                if not fl(timeout=10):
                    fails += 1
            return {"elapsed": time.perf_counter() - t0, "drain": 0.0, "ok": fails == 0, "timeouts": fails}

        att = s._att  # read only: this process's segment (head = logged, tail = released by the sender)

        def iso_finepoll(n: int) -> Dict[str, float]:
            """Diagnostic, not an API: flush() (async nudge), then poll the segment every 0.1 ms
            until the sender released it: the delivery pipeline's latency without flush(timeout)'s
            back-off polling (0.5 ms growing x1.5 to 20 ms)."""
            t0 = time.perf_counter()
            for _ in range(n):
                lo(OBJECT)
                fl()
                target = att.head()
                while att.tail() < target:
                    time.sleep(0.0001)
            return {"elapsed": time.perf_counter() - t0, "drain": 0.0, "ok": True}

        def peer_run(n: int) -> Dict[str, float]:
            r = peer._cmd("run %d" % n)
            return {"elapsed": r["elapsed"], "drain": 0.0, "ok": True, "cpu": r["cpu"]}

        runs = {
            "isstreamer200_flush": peer_run,
            "isstreamer_flush_async": iso_async,
            "isstreamer_flush_timeout10": iso_timeout,
            "diag_isstreamer_flush_finepoll": iso_finepoll,
        }
        names = list(runs)
        for t in range(trials):
            rec: Dict[str, Any] = {"trial": t, "loadavg_before": benchutil.loadavg(), "iters": iters}
            order = names[t % len(names) :] + names[: t % len(names)]
            for name in order:
                before = benchutil.count_of(url)
                c0 = time.process_time()
                r = runs[name](iters)
                cpu = r.pop("cpu", time.process_time() - c0)
                got = _wait_server(url, before + iters * len(OBJECT)) - before
                rec[name] = dict(
                    r,
                    us_per_iter=r["elapsed"] / iters * 1e6,
                    cpu_us_per_iter=cpu / iters * 1e6,
                    delivered=got,
                    expected=iters * len(OBJECT),
                )
            rec["order"] = order
            rec["loadavg_after"] = benchutil.loadavg()
            base = rec["isstreamer200_flush"]["us_per_iter"]
            rec["speedup_timeout10"] = base / rec["isstreamer_flush_timeout10"]["us_per_iter"]
            rec["speedup_finepoll_diag"] = base / rec["diag_isstreamer_flush_finepoll"]["us_per_iter"]
            rec["speedup_async"] = base / rec["isstreamer_flush_async"]["us_per_iter"]
            rec["speedup_async_incl_drain"] = (
                base
                * iters
                / ((rec["isstreamer_flush_async"]["elapsed"] + rec["isstreamer_flush_async"]["drain"]) * 1e6)
            )
            out.append(rec)
            print(
                "flush trial %d  load %s: 2.0.0 %.0f us/iter | flush(timeout=10) %.0f us (%.2fx) | "
                "flush() async %.1f us (%.1fx; with drain %.1fx) | diag fine poll %.0f us (%.2fx)"
                % (
                    t,
                    rec["loadavg_before"],
                    base,
                    rec["isstreamer_flush_timeout10"]["us_per_iter"],
                    rec["speedup_timeout10"],
                    rec["isstreamer_flush_async"]["us_per_iter"],
                    rec["speedup_async"],
                    rec["speedup_async_incl_drain"],
                    rec["diag_isstreamer_flush_finepoll"]["us_per_iter"],
                    rec["speedup_finepoll_diag"],
                ),
                flush=True,
            )
    finally:
        try:
            peer.close()
        finally:
            peer.kill()
            s.close(30)
    return out


def e2e_trials(url: str, trials: int, events: int, spool: str) -> List[Dict[str, Any]]:
    out: List[Dict[str, Any]] = []
    server_pid = benchutil.count_of(url, "pid")
    configs = {"ring_default": {}, "ring_1MiB": {"ring_size": 1 << 20, "full_timeout": 60.0}}
    streamers = {
        name: isstreamer.Streamer(
            access_key="bench", bucket_name="bench", bucket_key="e2e-" + name, api_base=url, spool_dir=spool, **opts
        )
        for name, opts in configs.items()
    }
    try:
        for s in streamers.values():
            s.log("temperature", 21.5)
            assert s.flush(timeout=30)
        for t in range(trials):
            rec: Dict[str, Any] = {"trial": t, "loadavg_before": benchutil.loadavg(), "events": events}
            for name, s in streamers.items():
                log = s.log
                spid = benchutil.sender_pid(s)
                before = benchutil.count_of(url)
                scpu0 = benchutil.proc_cpu_seconds(spid)
                vcpu0, req0 = benchutil.proc_cpu_seconds(server_pid), benchutil.count_of(url, "requests")
                c0, w0 = benchutil.thread_schedstat()
                t0 = time.perf_counter()
                for _ in range(events):
                    log("temperature", 21.5)
                t1 = time.perf_counter()
                c1, w1 = benchutil.thread_schedstat()
                ok = s.flush(timeout=120)
                t2 = time.perf_counter()
                got = _wait_server(url, before + events) - before
                loop_s, total_s = t1 - t0, t2 - t0
                rec[name] = {
                    "loop_s": loop_s,
                    "flush_wait_s": t2 - t1,
                    "flushed": ok,
                    "delivered": got,
                    "log_rate": events / loop_s,
                    "delivered_rate": events / total_s,
                    "delivered_over_log": loop_s / total_s,
                    "loop_cpu_ns": (c1 - c0) / events * 1e9,
                    "loop_runqueue_ns": (w1 - w0) / events * 1e9,
                    "loop_slept_ns": max(0.0, loop_s - (c1 - c0) - (w1 - w0)) / events * 1e9,
                    "sender_cpu_s_per_million": (benchutil.proc_cpu_seconds(spid) - scpu0) / events * 1e6,
                    "server_cpu_s_per_million": (benchutil.proc_cpu_seconds(server_pid) - vcpu0) / events * 1e6,
                    "events_per_request": events / max(1, benchutil.count_of(url, "requests") - req0),
                    "loop_slept_share": max(0.0, loop_s - (c1 - c0) - (w1 - w0)) / loop_s,
                    "dropped": s.stats()["dropped"],
                }
                print(
                    "e2e trial %d %-12s load %s: log %.0f k/s, delivered %.0f k/s (%.1f%%), tail %.3f s; "
                    "loop per call: cpu %.0f ns, run-queue %.0f ns, slept %.0f ns; CPU s/M sender %.2f server %.2f; "
                    "%.0f ev/request; delivered %d/%d"
                    % (
                        t,
                        name,
                        rec["loadavg_before"],
                        rec[name]["log_rate"] / 1e3,
                        rec[name]["delivered_rate"] / 1e3,
                        100 * rec[name]["delivered_over_log"],
                        t2 - t1,
                        rec[name]["loop_cpu_ns"],
                        rec[name]["loop_runqueue_ns"],
                        rec[name]["loop_slept_ns"],
                        rec[name]["sender_cpu_s_per_million"],
                        rec[name]["server_cpu_s_per_million"],
                        rec[name]["events_per_request"],
                        got,
                        events,
                    ),
                    flush=True,
                )
            rec["loadavg_after"] = benchutil.loadavg()
            out.append(rec)
    finally:
        for s in streamers.values():
            s.close(30)
    return out


def _spread(xs: List[float]) -> Dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--iters", type=int, default=400, help="log_object+flush iterations per loop")
    ap.add_argument("--events", type=int, default=1_000_000, help="events per e2e round")
    ap.add_argument("--only", choices=["flush", "e2e"], default="")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    spool = tempfile.mkdtemp(prefix="isstreamer-bench-spool-")
    res: Dict[str, Any] = {
        "loadavg_before": benchutil.loadavg(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    proc, url = benchutil.start_count_server()
    try:
        if a.only in ("", "flush"):
            py = benchutil.peers_python()
            if py is None:
                print("the peers venv could not be created (bash benchmarks/peers/setup.sh)", file=sys.stderr)
                return 1
            res["flush"] = fl = flush_trials(url, py, a.trials, a.iters, spool)
            res["flush_summary"] = {
                k: _spread([r[k] for r in fl])
                for k in ("speedup_timeout10", "speedup_async", "speedup_async_incl_drain", "speedup_finepoll_diag")
            }
            res["flush_summary"].update(
                {
                    k + "_us_per_iter": _spread([r[k]["us_per_iter"] for r in fl])
                    for k in (
                        "isstreamer200_flush",
                        "isstreamer_flush_async",
                        "isstreamer_flush_timeout10",
                        "diag_isstreamer_flush_finepoll",
                    )
                }
            )
            res["flush_summary"]["all_delivered"] = all(
                r[k]["delivered"] == r[k]["expected"]
                for r in fl
                for k in (
                    "isstreamer200_flush",
                    "isstreamer_flush_async",
                    "isstreamer_flush_timeout10",
                    "diag_isstreamer_flush_finepoll",
                )
            )
        if a.only in ("", "e2e"):
            res["e2e"] = e2e = e2e_trials(url, a.trials, a.events, spool)
            res["e2e_summary"] = {
                name: {
                    k: _spread([r[name][k] for r in e2e])
                    for k in (
                        "log_rate",
                        "delivered_rate",
                        "delivered_over_log",
                        "loop_slept_ns",
                        "loop_slept_share",
                        "loop_cpu_ns",
                        "sender_cpu_s_per_million",
                        "server_cpu_s_per_million",
                    )
                }
                for name in ("ring_default", "ring_1MiB")
            }
    finally:
        benchutil.stop(proc)
    res["loadavg_after"] = benchutil.loadavg()
    print()
    if "flush_summary" in res:
        f = res["flush_summary"]
        print("log_object(10 keys); flush() per iteration, median [min..max] of %d trials:" % f["speedup_async"]["n"])
        for k, label in (
            ("isstreamer200_flush", "ISStreamer 2.0.0 flush()"),
            ("isstreamer_flush_timeout10", "isstreamer flush(timeout=10)"),
            ("isstreamer_flush_async", "isstreamer flush() (async)"),
            ("diag_isstreamer_flush_finepoll", "diag: nudge + poll every 0.1 ms"),
        ):
            v = f[k + "_us_per_iter"]
            print("  %-30s %9.1f us [%.1f..%.1f]" % (label, v["median"], v["min"], v["max"]))
        for k, label in (
            ("speedup_timeout10", "2.0.0 / flush(timeout=10) (like for like)"),
            ("speedup_async", "2.0.0 / flush() async"),
            ("speedup_async_incl_drain", "2.0.0 / flush() async incl. final drain"),
            ("speedup_finepoll_diag", "diag: 2.0.0 / nudge + 0.1 ms poll"),
        ):
            v = f[k]
            print(
                "  %-44s %.2fx [%.2f..%.2f]  target >= 1: %s"
                % (
                    label,
                    v["median"],
                    v["min"],
                    v["max"],
                    "met" if v["min"] >= 1 else ("met in the median" if v["median"] >= 1 else "NOT met"),
                )
            )
        print("  every event delivered:", f["all_delivered"])
    if "e2e_summary" in res:
        print("e2e, one producer, delivered / log rate, median [min..max]:")
        for name, v in res["e2e_summary"].items():
            d = v["delivered_over_log"]
            print(
                "  %-12s log %.0f k/s, delivered %.0f k/s, ratio %.1f%% [%.1f..%.1f]  target >= 90%%: %s"
                % (
                    name,
                    v["log_rate"]["median"] / 1e3,
                    v["delivered_rate"]["median"] / 1e3,
                    100 * d["median"],
                    100 * d["min"],
                    100 * d["max"],
                    "met" if d["min"] >= 0.9 else ("met in the median" if d["median"] >= 0.9 else "NOT met"),
                )
            )
            print(
                "  %-12s producer slept (waited for ring room) %.0f%% of its loop; CPU per event: producer %.0f ns, "
                "sender %.0f ns, server %.0f ns"
                % (
                    "",
                    100 * v["loop_slept_share"]["median"],
                    v["loop_cpu_ns"]["median"],
                    v["sender_cpu_s_per_million"]["median"] * 1e3,
                    v["server_cpu_s_per_million"]["median"] * 1e3,
                )
            )
    print("load average before / after: %s / %s" % (res["loadavg_before"], res["loadavg_after"]))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(res, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
