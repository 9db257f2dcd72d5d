"""Run the benchmark suite and print one comparison table (ratios from that one run).

    python benchmarks/compare.py                 # peers venv (idempotent) + whole suite + report
    python benchmarks/compare.py --quick         # smoke run: fewer rounds and events
    python benchmarks/compare.py --from-json benchmarks/results/pytest-benchmark.json   # report only

Writes ``benchmarks/results/pytest-benchmark.json`` (pytest-benchmark's own data),
``benchmarks/results/pytest.log`` (pytest's output), ``benchmarks/results/latest.json`` (the
table as data, the targets, the curves) and ``benchmarks/results/scaling.png`` (per-call cost and
throughput against the number of producer processes; needs matplotlib, a benchmark-only
dependency: ``pip install -r benchmarks/requirements.txt``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
RUN_TIMEOUT = 1200  # seconds: the whole suite is bounded

PEER_LABELS = {
    "isstreamer200-bs10": "ISStreamer 2.0.0 log(), buffer_size=10",
    "isstreamer200-bs1000": "ISStreamer 2.0.0 log(), buffer_size=1000",
    "influx-line": "influxdb-client batching write(), line string",
    "influx-point": "influxdb-client batching write(), Point",
}
PEER_SHORT = {
    "isstreamer200-bs10": "ISS-10",
    "isstreamer200-bs1000": "ISS-1000",
    "influx-line": "infl-line",
    "influx-point": "infl-Point",
}
TARGETS = {
    "log_float_ns": 400.0,
    "floor_ratio": 2.0,
    "peer_speedup": 15.0,
    "thread_mode_ratio": 2.0,
    "series_floor_ratio": 1.8,
    "oneshot_vs_200": 1.2,
    "import_over_bare_ms": 40.0,
    "flush_median_ms": 2.0,
    "flush_p99_ms": 5.0,
    "thread_mode_vs_200": 10.0,
    "producers4_ratio": 1.5,
    "e2e_events_per_s": 1_000_000.0,
    "e2e_delivered_over_log": 0.9,
    "producer_rss_mb_per_million": 1.0,
    "sender_rss_slope_mb_per_million": 1.0,
    "sender_rss_spread_mb": 5.0,
}


# ---- running ---------------------------------------------------------------------------------------
def _loadavg() -> List[float]:
    try:
        with open("/proc/loadavg") as f:
            return [float(x) for x in f.read().split()[:3]]
    except OSError:
        return []


RUN_INFO: Dict[str, Any] = {}


def run_suite(json_path: str, quick: bool, extra: List[str]) -> int:
    os.makedirs(RESULTS, exist_ok=True)
    setup = subprocess.run(["bash", os.path.join(HERE, "peers", "setup.sh")], timeout=600)
    if setup.returncode != 0:
        print("warning: the peers venv could not be set up; the peer rows will be missing", file=sys.stderr)
    cmd = (
        [
            sys.executable,
            "-m",
            "pytest",
            HERE,
            "-c",
            os.path.join(HERE, "pytest.ini"),
            "--rootdir",
            HERE,
            "--benchmark-json",
            json_path,
        ]
        + (["--quick"] if quick else [])
        + extra
    )
    log_path = os.path.join(RESULTS, "pytest.log")
    print("running: %s\n  (output in %s)" % (" ".join(cmd), os.path.relpath(log_path)), file=sys.stderr)
    t0 = time.monotonic()
    RUN_INFO["loadavg_before"] = _loadavg()
    with open(log_path, "w") as log:
        try:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, timeout=RUN_TIMEOUT).returncode
        except subprocess.TimeoutExpired:
            print("the suite took longer than %d s and was stopped" % RUN_TIMEOUT, file=sys.stderr)
            return 124
    RUN_INFO.update(loadavg_after=_loadavg(), suite_seconds=round(time.monotonic() - t0, 1), quick=quick)
    print("suite finished in %.0f s (pytest exit code %d)" % (time.monotonic() - t0, rc), file=sys.stderr)
    if rc != 0:
        with open(log_path) as f:
            tail = f.read()[-3000:]
        print(tail, file=sys.stderr)
    return rc


# ---- reading -------------------------------------------------------------------------------------------
def _per_call(b: Dict[str, Any]) -> Dict[str, float]:
    e, st = b["extra_info"], b["stats"]
    n = e.get("calls_per_round", 1)
    if "inner" in e:  # peers: the worker's own timing of the loop
        return {"median": e["inner"]["median_ns"], "min": e["inner"]["min_ns"], "cpu": e.get("cpu_median_ns")}
    return {"median": st["median"] / n * 1e9, "min": st["min"] / n * 1e9, "cpu": e.get("cpu_median_ns")}


def analyse(data: Dict[str, Any]) -> Dict[str, Any]:
    by_kind: Dict[str, List[Dict[str, Any]]] = {}
    for b in data["benchmarks"]:
        by_kind.setdefault(b["extra_info"].get("kind", "?"), []).append(b)

    out: Dict[str, Any] = {"per_call": {}, "peers": {}, "e2e": {}, "producers": {}, "growth": {}}
    for kind in ("floor-noop-call", "floor-time", "floor"):
        for b in by_kind.get(kind, []):
            out["per_call"][kind] = _per_call(b)
    for b in by_kind.get("log", []):
        e = b["extra_info"]
        mode = "-thread" if e.get("mode") == "thread" else ""
        out["per_call"]["log-%s-%s%s" % (e["value"], e["backend"], mode)] = _per_call(b)
    for b in by_kind.get("series", []):
        out["per_call"]["series-%s-%s" % (b["extra_info"]["value"], b["extra_info"]["backend"])] = _per_call(b)
    for b in by_kind.get("log_object", []):
        e = b["extra_info"]
        r = _per_call(b)
        r["per_event"] = r["median"] / e["events_per_call"]
        out["per_call"]["log_object-dict10-%s" % e["backend"]] = r
    for b in by_kind.get("peer-object", []):
        e = b["extra_info"]
        r = _per_call(b)
        r.update(delivered=e.get("delivered"), logged=e.get("logged"), version=e.get("info", {}).get("version"))
        out["peer_object"] = r
    for b in by_kind.get("peer", []):
        e = b["extra_info"]
        r = _per_call(b)
        r.update(delivered=e.get("delivered"), logged=e.get("logged"), version=e.get("info", {}).get("version"))
        out["peers"][e["peer"]] = r

    for b in by_kind.get("e2e", []):
        e = b["extra_info"]
        name = "%s-%s" % (e["server"], e["config"])
        out["e2e"][name] = {
            "events_per_s": e["events_per_round"] / b["stats"]["median"],
            "events_per_s_best": e["events_per_round"] / b["stats"]["min"],
            "events": e["events_per_round"],
            "all_delivered": e["all_delivered"],
            "loop_ns_per_call": e["loop_ns_per_call"],
            "sender_cpu_s_per_million": e["sender_cpu_s_per_million"],
            "loop_cpu_ns_per_call": e.get("loop_cpu_ns_per_call"),
            "loop_runqueue_wait_ns_per_call": e.get("loop_runqueue_wait_ns_per_call"),
            "server_cpu_s_per_million": e.get("server_cpu_s_per_million"),
            "producer_cpu_s_per_million": e["producer_cpu_s_per_million"],
            "events_per_request": e.get("events_per_request"),
            "dropped": e.get("dropped"),
            "delivered_over_log": e.get("delivered_over_log"),
            "delivered_over_log_per_round": e.get("delivered_over_log_per_round"),
        }
    for b in by_kind.get("producers", []):
        e = b["extra_info"]
        out["producers"][e["producers"]] = {
            k: e.get(k)
            for k in (
                "per_call_wall_ns",
                "per_call_cpu_ns",
                "per_call_wall_ns_max_producer",
                "per_call_runqueue_wait_ns",
                "events_per_s",
                "sender_cpu_s_per_million",
                "all_delivered",
                "events_per_producer",
                "dropped",
            )
        }

    g = out["growth"]
    for b in by_kind.get("ring-fill", []):
        g["ring_fill"] = {
            "bands": b["extra_info"]["bands"],
            "cpu_bands": b["extra_info"].get("cpu_bands", {}),
            "curves": b["extra_info"]["curves"],
        }
    for kind in ("key-length", "value-length"):
        rows = sorted(by_kind.get(kind, []), key=lambda b: b["extra_info"]["length"])
        g[kind] = [{"length": b["extra_info"]["length"], **_per_call(b)} for b in rows]
    for b in by_kind.get("streamer-churn", []):
        g["churn"] = {k: v for k, v in b["extra_info"].items() if k != "kind"}
    for b in by_kind.get("outage-memory", []):
        g["outage"] = {k: v for k, v in b["extra_info"].items() if k != "kind"}

    out["targets"] = targets(out)
    return out


def targets(r: Dict[str, Any]) -> List[Dict[str, Any]]:
    t: List[Dict[str, Any]] = []

    def add(name, value, limit, ok, fmt, note=""):
        t.append(
            {
                "target": name,
                "value": value,
                "limit": limit,
                "met": None if value is None else bool(ok),
                "text": "n/a" if value is None else fmt % value,
                "note": note,
            }
        )

    pc = r["per_call"]
    f = pc.get("log-float-native", {}).get("median")
    add(
        "log() float median < 400 ns",
        f,
        TARGETS["log_float_ns"],
        f is not None and f < TARGETS["log_float_ns"],
        "%.0f ns",
    )
    floor = pc.get("floor", {}).get("median")
    ratio = f / floor if f and floor else None
    add(
        "log() float <= 2x the floor (method call + time.time())",
        ratio,
        TARGETS["floor_ratio"],
        ratio is not None and ratio <= TARGETS["floor_ratio"],
        "%.2fx",
        "floor %.0f ns" % floor if floor else "",
    )
    h = pc.get("series-float-native", {}).get("median")
    add(
        "bound-key handle series(key).log(float) <= 1.8x the floor",
        h / floor if h and floor else None,
        TARGETS["series_floor_ratio"],
        bool(h and floor and h / floor <= TARGETS["series_floor_ratio"]),
        "%.2fx",
        "%.0f ns; log(key, float) %.0f ns" % (h, f) if h and f else "",
    )
    th = pc.get("log-float-native-thread", {}).get("median")
    if th and f:
        add(
            "thread mode log() float <= 2x the process model's",
            th / f,
            TARGETS["thread_mode_ratio"],
            th / f <= TARGETS["thread_mode_ratio"],
            "%.2fx",
            "thread mode %.0f ns" % th,
        )
    v200 = r["peers"].get("isstreamer200-bs10", {}).get("median")
    if th and v200:
        add(
            "thread mode log() float >= 10x faster than ISStreamer 2.0.0 (buffer_size 10)",
            v200 / th,
            TARGETS["thread_mode_vs_200"],
            v200 / th >= TARGETS["thread_mode_vs_200"],
            "%.0fx",
        )
    peers = {k: v["median"] for k, v in r["peers"].items()}
    if peers and f:
        best = min(peers, key=peers.get)
        sp = peers[best] / f
        add(
            ">= 15x faster than the best peer",
            sp,
            TARGETS["peer_speedup"],
            sp >= TARGETS["peer_speedup"],
            "%.1fx",
            "best peer: %s, %.0f ns" % (PEER_SHORT.get(best, best), peers[best]),
        )
    else:
        add(">= 15x faster than the best peer", None, TARGETS["peer_speedup"], False, "", "peers not measured")
    p = r["producers"]
    if 1 in p and 4 in p:
        w = p[4]["per_call_wall_ns_max_producer"] / p[1]["per_call_wall_ns"]
        c = p[4]["per_call_cpu_ns"] / p[1]["per_call_cpu_ns"]
        add(
            "4 producers each within 1.5x of a lone one (wall, slowest producer)",
            w,
            TARGETS["producers4_ratio"],
            w <= TARGETS["producers4_ratio"],
            "%.2fx",
            "2 cores for 4 producers + sender + server",
        )
        add(
            "4 producers within 1.5x of a lone one (CPU per call)",
            c,
            TARGETS["producers4_ratio"],
            c <= TARGETS["producers4_ratio"],
            "%.2fx",
            "contention on the ring itself",
        )
    e2e = r["e2e"].get("countserver-defaults")
    v = e2e["events_per_s"] if e2e else None
    add(
        ">= 1M events/s end to end (1 producer -> counting server, defaults)",
        v,
        TARGETS["e2e_events_per_s"],
        v is not None and v >= TARGETS["e2e_events_per_s"] and e2e["all_delivered"],
        "%.0f ev/s",
        "median of rounds",
    )
    v = e2e.get("delivered_over_log") if e2e else None
    add(
        ">= 90% of the producer's log() rate delivered (1 producer -> counting server, same round)",
        v,
        TARGETS["e2e_delivered_over_log"],
        v is not None and v >= TARGETS["e2e_delivered_over_log"],
        "%.2f",
        "median of rounds; benchmarks/flush_e2e.py repeats it",
    )
    for row in short_path_targets(r.get("short_paths") or {}):
        add(*row)
    o = r["growth"].get("outage")
    v = o["producer_rss_growth_mb_per_million"] if o else None
    add(
        "producer RSS growth < 1 MB per million events (outage)",
        v,
        TARGETS["producer_rss_mb_per_million"],
        v is not None and v < TARGETS["producer_rss_mb_per_million"],
        "%.2f MB/M",
        "RssAnon %.2f MB/M" % o["producer_anon_growth_mb_per_million"] if o else "",
    )
    v = o["sender_rss_growth_mb_per_million"] if o else None
    add(
        "sender RSS flat during an outage (slope < 1 MB/M, spread < 5 MB)",
        v,
        TARGETS["sender_rss_slope_mb_per_million"],
        v is not None
        and abs(v) < TARGETS["sender_rss_slope_mb_per_million"]
        and o["sender_rss_spread_mb"] < TARGETS["sender_rss_spread_mb"],
        "%.2f MB/M",
        "spread %.1f MB" % o["sender_rss_spread_mb"] if o else "",
    )
    return t


def short_path_targets(sp: Dict[str, Any]) -> List[tuple]:
    """Target rows (as ``add``'s arguments) of the one-shot script, the import and flush latency."""
    rows: List[tuple] = []
    o, fl = sp.get("oneshot"), sp.get("flush")
    if o:
        d = o["derived"]
        rows.append(
            (
                "one-shot script (import, Streamer(), log(), close()) within 1.2x of ISStreamer 2.0.0",
                d["oneshot_ratio_vs_200"],
                TARGETS["oneshot_vs_200"],
                d["oneshot_ratio_vs_200"] <= TARGETS["oneshot_vs_200"],
                "%.2fx",
                "%.0f vs %.0f ms (median wall; benchmarks/oneshot.py)"
                % (o["oneshot_ours"]["median_ms"], o["oneshot_200"]["median_ms"]),
            )
        )
        ours, theirs = d["import_over_bare_ours_ms"], d["import_over_bare_200_ms"]
        rows.append(
            (
                "import <= 40 ms over bare Python and below ISStreamer 2.0.0's",
                ours,
                TARGETS["import_over_bare_ms"],
                ours <= TARGETS["import_over_bare_ms"] and ours < theirs,
                "%.1f ms",
                "2.0.0: %.1f ms over bare" % theirs,
            )
        )
    if fl:
        rows.append(
            (
                "flush(timeout) of one event: median <= 2 ms, p99 <= 5 ms",
                fl["median_ms"],
                TARGETS["flush_median_ms"],
                fl["median_ms"] <= TARGETS["flush_median_ms"] and fl["p99_ms"] <= TARGETS["flush_p99_ms"],
                "%.2f ms",
                "p99 %.2f ms (benchmarks/flush_latency.py)" % fl["p99_ms"],
            )
        )
    return rows


def run_short_paths(quick: bool) -> Dict[str, Any]:
    """The one-shot script and import (against 2.0.0) and flush latency: their own processes."""
    import flush_latency
    import oneshot

    out: Dict[str, Any] = {}
    try:
        out["oneshot"] = oneshot.run(7 if quick else 21)
    except SystemExit as exc:  # the peers' venv is missing, or an event did not arrive
        print("one-shot benchmark not run: %s" % exc, file=sys.stderr)
    out["flush"] = flush_latency.run(100 if quick else 300)
    return out


# ---- the table --------------------------------------------------------------------------------------------
def _ns(v: Optional[float]) -> str:
    if v is None:
        return "-"
    if v >= 10_000:
        return "%.1f us" % (v / 1000)
    return "%.0f ns" % v


def _x(v: Optional[float]) -> str:
    return "-" if v is None else ("%.2fx" % v if v < 10 else "%.0fx" % v)


def _rate(v: Optional[float]) -> str:
    return "-" if v is None else "{:,.0f} ev/s".format(v)


def build_table(r: Dict[str, Any]) -> str:
    pc, peers = r["per_call"], r["peers"]
    floor = pc.get("floor", {}).get("median")
    peer_keys = [k for k in PEER_LABELS if k in peers]
    head = ["case", "median", "min", "CPU", "x FLOOR"] + ["%s/this" % PEER_SHORT[k] for k in peer_keys] + ["notes"]
    blank_peers = [""] * len(peer_keys)
    rows: List[List[str]] = []

    def section(title):
        rows.append(["## " + title])

    def per_call_row(label, m, note="", per=None):
        med = m.get("median")
        base = per if per is not None else med
        speed = [_x(peers[k]["median"] / base) if base else "-" for k in peer_keys]
        rows.append(
            [label, _ns(med), _ns(m.get("min")), _ns(m.get("cpu")), _x(med / floor) if med and floor else "-"]
            + speed
            + [note]
        )

    section(
        "per call: median and min of rounds, CPU = thread CPU time; x FLOOR = / (method call + time.time()); "
        "PEER/this = how many times faster this row is than the peer"
    )
    for k, label in (
        ("floor-noop-call", "floor: no-op method call"),
        ("floor-time", "floor: time.time()"),
        ("floor", "FLOOR: method call + time.time()"),
    ):
        if k in pc:
            per_call_row(label, pc[k])
    for backend in ("native", "python"):
        for value in ("float", "int", "str", "bool"):
            k = "log-%s-%s" % (value, backend)
            if k in pc:
                per_call_row("log(%s) %s" % (value, backend), pc[k])
    for backend in ("native", "python"):
        k = "series-float-%s" % backend
        if k in pc:
            per_call_row("series(key).log(float) %s" % backend, pc[k], "a bound-key handle")
    t, p = pc.get("log-float-native-thread"), pc.get("log-float-native")
    if t:
        note = "the thread mode (Windows; ISSTREAMER_MODE=thread)"
        if p and p.get("median"):
            note += ": %s the process model's log(float)" % _x(t["median"] / p["median"])
        per_call_row("log(float) native, thread mode", t, note)
    po = r.get("peer_object")
    for backend in ("native", "python"):
        k = "log_object-dict10-%s" % backend
        if k in pc:
            note = "%s per event; peer columns per event" % _ns(pc[k]["per_event"])
            if po:
                note += "; ISStreamer 2.0.0 log_object (bs 1000) is %s" % _x(po["median"] / pc[k]["median"])
            per_call_row("log_object(10-key dict) %s" % backend, pc[k], note, per=pc[k]["per_event"])
    if po:
        rows.append(
            [
                "ISStreamer 2.0.0 log_object(10-key dict), bs 1000",
                _ns(po["median"]),
                _ns(po["min"]),
                _ns(po.get("cpu")),
                _x(po["median"] / floor) if floor else "-",
            ]
            + blank_peers
            + ["%s/%s delivered" % (po.get("delivered"), po.get("logged"))]
        )
    for k in peer_keys:
        m = peers[k]
        rows.append(
            [
                PEER_LABELS[k],
                _ns(m["median"]),
                _ns(m["min"]),
                _ns(m.get("cpu")),
                _x(m["median"] / floor) if floor else "-",
            ]
            + blank_peers
            + [
                "%s %s; CPU incl. its threads; %s/%s delivered"
                % (
                    "ISStreamer" if "isstreamer" in k else "influxdb-client",
                    m.get("version"),
                    m.get("delivered"),
                    m.get("logged"),
                )
            ]
        )

    section(
        "end to end, one producer: events / (first log() .. flush() returned, all delivered); "
        "median round (min = best round)"
    )
    for k, label in (
        ("countserver-defaults", "-> counting server, default options"),
        ("countserver-ring64M-1producer", "-> counting server, 64 MiB ring, 1 segment"),
        ("collector-defaults", "-> collector (isstreamer serve, SQLite)"),
    ):
        e = r["e2e"].get(k)
        if not e:
            continue
        asleep = (
            e["loop_ns_per_call"]
            - (e.get("loop_cpu_ns_per_call") or 0)
            - (e.get("loop_runqueue_wait_ns_per_call") or 0)
        )
        note = (
            "%dk ev/round%s; log() %s wall = %s CPU + %s run-queue wait + %s asleep (ring full); "
            "CPU s per M ev: producer %.2f, sender %.2f, server %.2f"
            % (
                e["events"] // 1000,
                "" if e["all_delivered"] else " NOT ALL DELIVERED",
                _ns(e["loop_ns_per_call"]),
                _ns(e.get("loop_cpu_ns_per_call")),
                _ns(e.get("loop_runqueue_wait_ns_per_call")),
                _ns(max(0.0, asleep)),
                e["producer_cpu_s_per_million"],
                e["sender_cpu_s_per_million"],
                e.get("server_cpu_s_per_million") or 0,
            )
        )
        if e.get("events_per_request"):
            note += "; %.0f ev/POST" % e["events_per_request"]
        rows.append([label, _rate(e["events_per_s"]), _rate(e["events_per_s_best"]), "", ""] + blank_peers + [note])

    p = r["producers"]
    if p:
        section(
            "N producer processes sharing one Streamer (Pool initargs) -> counting server; "
            "median = per-call wall of the median producer, min column = the slowest producer"
        )
        lone = p.get(1)
        for k in sorted(p):
            x = p[k]
            rel = (x["per_call_wall_ns_max_producer"] / lone["per_call_wall_ns"]) if lone else None
            relc = (x["per_call_cpu_ns"] / lone["per_call_cpu_ns"]) if lone else None
            rows.append(
                [
                    "%d producer%s" % (k, "s" if k > 1 else ""),
                    _ns(x["per_call_wall_ns"]),
                    _ns(x["per_call_wall_ns_max_producer"]),
                    _ns(x["per_call_cpu_ns"]),
                    _x(x["per_call_wall_ns"] / floor) if floor else "-",
                ]
                + blank_peers
                + [
                    "slowest/lone %s wall, %s CPU; run-queue wait %s/call; %s%s; sender %.2f s CPU/M ev"
                    % (
                        _x(rel),
                        _x(relc),
                        _ns(x.get("per_call_runqueue_wait_ns")),
                        _rate(x["events_per_s"]),
                        "" if x["all_delivered"] else " NOT ALL DELIVERED",
                        x["sender_cpu_s_per_million"],
                    )
                ]
            )

    g = r["growth"]
    if g:
        section("cost growth (native backend)")
        rf = g.get("ring_fill")
        if rf:
            for name in ("cold", "warm"):
                b = rf["bands"].get(name, {})
                c = rf.get("cpu_bands", {}).get(name, {})
                for band in ("0-10%", "45-55%", "85-95%"):
                    rows.append(
                        [
                            "ring filling, %s pages, %s full" % (name, band),
                            _ns(b.get(band)),
                            "",
                            _ns(c.get(band)),
                            _x(b[band] / floor) if floor and b.get(band) else "-",
                        ]
                        + blank_peers
                        + ["sender paused (SIGSTOP); 16 MiB segment; median of chunks" if band == "0-10%" else ""]
                    )
        for kind, what, cut in (("key-length", "key", 250), ("value-length", "str value", 2000)):
            for x in g.get(kind, []):
                rows.append(
                    [
                        "log(): %s of %d chars" % (what, x["length"]),
                        _ns(x["median"]),
                        _ns(x["min"]),
                        _ns(x.get("cpu")),
                        _x(x["median"] / floor) if floor else "-",
                    ]
                    + blank_peers
                    + ["slow path: cut to %d" % cut if x["length"] > cut else ""]
                )
        o = g.get("outage")
        if o:
            wk = o.get("warmup_events", 0) // 1000
            rows.append(
                [
                    "outage (closed port), %.1fM events: producer RSS" % (o["events"] / 1e6),
                    "%+.2f MB/M" % o["producer_rss_growth_mb_per_million"],
                    "",
                    "",
                    "",
                ]
                + blank_peers
                + [
                    "slope after %dk ev (RssAnon %+.2f MB/M), spread %.1f MB; first %dk ev: %+.1f MB"
                    % (
                        wk,
                        o["producer_anon_growth_mb_per_million"],
                        o["producer_rss_spread_mb"],
                        wk,
                        o.get("producer_rss_warmup_growth_mb", 0),
                    )
                ]
            )
            last = o["samples"][-1]
            rows.append(
                ["outage: sender RSS", "%+.2f MB/M" % o["sender_rss_growth_mb_per_million"], "", "", ""]
                + blank_peers
                + [
                    "slope after %dk ev, spread %.1f MB, %.1f MB at the end; first %dk ev: %+.1f MB; "
                    "%s spooled, dropped %s; %s logged"
                    % (
                        wk,
                        o["sender_rss_spread_mb"],
                        last["sender_rss"] / 2**20,
                        wk,
                        o.get("sender_rss_warmup_growth_mb", 0),
                        o.get("spooled"),
                        o.get("dropped") or "none",
                        _rate(o.get("events_per_s")),
                    )
                ]
            )

        ch = g.get("churn")
        if ch:
            rows.append(
                [
                    "%d Streamers created, used, closed in turn: RssShmem" % ch["streamers"],
                    "%+.1f MB each" % ch["shmem_growth_mb_per_closed_streamer"],
                    "",
                    "",
                    "",
                ]
                + blank_peers
                + [
                    "16 MiB rings, %dk events each; RssShmem %s MB after each close"
                    % (ch["events_per_streamer"] // 1000, ", ".join("%.0f" % x for x in ch["rss_shmem_mb"]))
                ]
            )

    section("targets (from the rows above)")
    for t in r["targets"]:
        met = "n/a" if t["met"] is None else ("MET" if t["met"] else "NOT MET")
        rows.append([t["target"], t["text"], met, "", ""] + blank_peers + [t["note"]])

    ncol = len(head)
    widths = [max(len(str(row[i])) for row in rows + [head] if len(row) == ncol) for i in range(ncol)]

    def fmt(row):
        if len(row) == 1:
            return "| " + row[0][3:]
        return (
            "| "
            + " | ".join(
                str(c).ljust(widths[i]) if i in (0, ncol - 1) else str(c).rjust(widths[i]) for i, c in enumerate(row)
            ).rstrip()
        )

    line = "+" + "-" * (sum(widths[:-1]) + 3 * (ncol - 1) + 20)
    out = [line, fmt(head)]
    for row in rows:
        if len(row) == 1:
            out += [line, fmt(row)]
        else:
            out.append(fmt(row))
    out.append(line)
    return "\n".join(out)


# ---- the plot --------------------------------------------------------------------------------------------
def plot(r: Dict[str, Any], path: str, title: str) -> Optional[str]:
    p = r["producers"]
    if not p:
        return "no multi-producer data"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -r benchmarks/requirements.txt)"
    ks = sorted(p)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.8))
    wall = [p[k]["per_call_wall_ns"] for k in ks]
    worst = [p[k]["per_call_wall_ns_max_producer"] for k in ks]
    cpu = [p[k]["per_call_cpu_ns"] for k in ks]
    a1.plot(ks, wall, "o-", label="wall per call (median producer)")
    a1.plot(ks, worst, "s--", label="wall per call (slowest producer)")
    a1.plot(ks, cpu, "^-", label="CPU per call (median producer)")
    if all(p[k].get("per_call_runqueue_wait_ns") is not None for k in ks):
        a1.plot(
            ks,
            [p[k]["per_call_runqueue_wait_ns"] for k in ks],
            "x:",
            color="C4",
            label="run-queue wait per call (CPU oversubscribed)",
        )
    if 1 in p:
        a1.axhline(1.5 * p[1]["per_call_wall_ns"], color="grey", ls=":", label="1.5x lone producer (wall)")
    floor = r["per_call"].get("floor", {}).get("median")
    if floor:
        a1.axhline(floor, color="green", ls="-.", lw=1, label="floor: method call + time.time()")
    a1.set_xscale("log", base=2)
    a1.set_xticks(ks)
    a1.set_xticklabels([str(k) for k in ks])
    a1.set_xlabel("producer processes sharing one Streamer")
    a1.set_ylabel("ns per log() call")
    a1.set_ylim(bottom=0)
    a1.set_title("per-call cost of log()")
    a1.grid(alpha=0.3)
    a1.legend(fontsize=8)
    rate = [p[k]["events_per_s"] / 1e6 for k in ks]
    a2.plot(ks, rate, "o-", color="C3", label="delivered to counting server")
    one = r["e2e"].get("countserver-defaults")
    if one:
        a2.axhline(one["events_per_s"] / 1e6, color="C0", ls="--", lw=1, label="1 producer, default options (e2e test)")
    a2.axhline(1.0, color="grey", ls=":", label="target 1M events/s")
    a2.set_xscale("log", base=2)
    a2.set_xticks(ks)
    a2.set_xticklabels([str(k) for k in ks])
    a2.set_xlabel("producer processes sharing one Streamer")
    a2.set_ylabel("million events / s (log() until delivered)")
    a2.set_ylim(0, max(rate + [1.0] + ([one["events_per_s"] / 1e6] if one else [])) * 1.15)
    a2.set_title("end-to-end throughput")
    a2.grid(alpha=0.3)
    a2.legend(fontsize=8)
    import textwrap

    fig.suptitle("\n".join(textwrap.wrap(title, 120)), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# ---- main ---------------------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from-json", help="report on an existing pytest-benchmark JSON instead of running")
    ap.add_argument("--quick", action="store_true", help="smoke run: fewer rounds and events")
    ap.add_argument("--out", default=RESULTS, help="directory for latest.json and scaling.png")
    ap.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --), e.g. -- -k e2e")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rc = 0
    if args.from_json:
        json_path = args.from_json
    else:
        json_path = os.path.join(args.out, "pytest-benchmark.json")
        rc = run_suite(json_path, args.quick, args.pytest_args)
        if not os.path.exists(json_path):
            print("no benchmark data written", file=sys.stderr)
            return rc or 1
        RUN_INFO["short_paths"] = run_short_paths(args.quick)
    with open(json_path) as f:
        data = json.load(f)
    side = json_path + ".run.json"  # load average and duration of the run that wrote json_path
    if RUN_INFO:
        with open(side, "w") as f:
            json.dump(RUN_INFO, f)
    elif os.path.exists(side):
        with open(side) as f:
            RUN_INFO.update(json.load(f))
    r = analyse(data)
    r["short_paths"] = RUN_INFO.get("short_paths") or {}
    r["targets"] = targets(r)
    table = build_table(r)
    mi, ci = data.get("machine_info", {}), data.get("commit_info", {})
    title = "isstreamer benchmarks %s, commit %s%s, %s, Python %s, %s CPUs" % (
        data.get("datetime", "")[:19],
        (ci.get("id") or "?")[:10],
        " (dirty)" if ci.get("dirty") else "",
        (mi.get("cpu") or {}).get("brand_raw", mi.get("processor", "")),
        mi.get("python_version"),
        (mi.get("cpu") or {}).get("count", os.cpu_count()),
    )
    if RUN_INFO:
        title += "; suite %.0f s, load average %s before, %s after (2 cores, shared)" % (
            RUN_INFO["suite_seconds"],
            RUN_INFO["loadavg_before"][:1],
            RUN_INFO["loadavg_after"][:1],
        )
    print(title)
    print(table)
    latest = {
        "meta": {
            "title": title,
            "datetime": data.get("datetime"),
            "commit": ci,
            "machine": mi,
            "source": os.path.relpath(json_path, ROOT),
            "generated": datetime.datetime.now().isoformat(),
            "pytest_exit_code": rc,
            "run": RUN_INFO,
        },
        "targets_limits": TARGETS,
        **r,
        "table": table,
    }
    with open(os.path.join(args.out, "latest.json"), "w") as f:
        json.dump(latest, f, indent=1, default=str)
    err = plot(r, os.path.join(args.out, "scaling.png"), title)
    print(
        "wrote %s%s"
        % (
            os.path.relpath(os.path.join(args.out, "latest.json")),
            "" if err else " and " + os.path.relpath(os.path.join(args.out, "scaling.png")),
        )
    )
    if err:
        print("no plot: %s" % err, file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
