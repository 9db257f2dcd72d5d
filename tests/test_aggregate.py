"""Downsampling in the sender (issue 13): what the real local collector stores equals the windows,
deadband and change reports computed independently here, for streams from several processes.

Real processes (fork and spawn pools, scripts that exit), a real collector; no timing assertions.
"""

from __future__ import annotations

import math
import multiprocessing
from collections import defaultdict
from typing import Any, Dict, List, Tuple

import numpy as np
import pytest

import aggworkers
import isstreamer
from isstreamer import Deadband, OnChange, Window
from isstreamer.rules import STATS, RuleSet, normalize_rules, stat_key
from support import pid_gone, script_env, wait_until, write_script

W = 0.5
ALL = ("mean", "min", "max", "last", "first", "count", "sum")


def _streamer(collector, tmp_path, **kw) -> Any:
    kw.setdefault("access_key", "test-key")
    kw.setdefault("api_base", collector.url)
    kw.setdefault("spool_dir", str(tmp_path / "spool"))
    kw.setdefault("flush_interval", 0.2)
    return isstreamer.Streamer(**kw)


def _close_and_wait(s: Any) -> None:
    """close(), then wait until the sender (which sends the last windows at exit) is gone."""
    pid = s.sender_pid
    s.close(timeout=60)
    if pid:
        assert wait_until(lambda: pid_gone(pid), 120)


def expected_windows(events: List[Tuple[str, Any, float]], seconds: float) -> Dict[Tuple[str, float], Dict[str, Any]]:
    """Per (key, window end): every statistic, computed with numpy / math.fsum from the raw events."""
    by_key: Dict[str, List[Tuple[float, Any]]] = defaultdict(list)
    for key, value, epoch in events:
        by_key[key].append((epoch, value))
    out: Dict[Tuple[str, float], Dict[str, Any]] = {}
    for key, rows in by_key.items():
        ep = np.array([r[0] for r in rows], dtype=np.float64)
        val = np.array([float(r[1]) for r in rows], dtype=np.float64)
        end = (np.floor(ep / seconds) + 1.0) * seconds
        for e in np.unique(end):
            sel = end == e
            v, t = val[sel], ep[sel]
            total = math.fsum(v.tolist())
            out[(key, float(e))] = {
                "mean": total / len(v),
                "sum": total,
                "count": int(len(v)),
                "min": float(v.min()),
                "max": float(v.max()),
                "first": float(v[np.argmin(t)]),
                "last": float(v[np.argmax(t)]),
            }
    return out


def check_windows(
    stored: List[Dict[str, Any]], expected: Dict[Tuple[str, float], Dict[str, Any]], stats: Tuple[str, ...]
) -> None:
    """Every expected statistic arrived once, exact (mean/sum: within 1e-12 relative), nothing else."""
    got: Dict[Tuple[str, float], Any] = {}
    for e in stored:
        k = (e["key"], e["epoch"])
        assert k not in got, "window sent twice: %r" % (k,)
        got[k] = e["value"]
    want = {}
    for (key, end), st in expected.items():
        for name in stats:
            want[(stat_key(key, name), end)] = st[name]
    assert set(got) == set(want)
    for k, v in want.items():
        name = next((s for s in STATS if k[0].endswith("_" + s)), "mean")
        if name in ("mean", "sum"):
            assert math.isclose(got[k], v, rel_tol=1e-12, abs_tol=0.0) or got[k] == v, (k, got[k], v)
        else:
            assert got[k] == v and type(got[k]) is type(v), (k, got[k], v)


# --------------------------------------------------------------------------- rules


def test_rule_lookup_exact_before_globs_in_order():
    rs = RuleSet(normalize_rules([("temp_*", Window(1.0)), ("temp_x", Deadband(0.5)), ("t*", OnChange())]))
    assert rs.lookup("temp_x") == 1
    assert rs.lookup("temp_y") == 0
    assert rs.lookup("tt") == 2
    assert rs.lookup("other") == -1


def test_an_exact_name_matches_literally_whatever_characters_it_holds():
    """Issue 19 item 4: ``temp[C]`` names the key ``temp[C]`` (before any glob); as a glob it still
    matches ``tempC`` too, after the exact names."""
    rs = RuleSet(normalize_rules([("t*", OnChange()), ("temp[C]", Window(1.0)), ("a?", Deadband())]))
    assert rs.lookup("temp[C]") == 1
    assert rs.lookup("tempC") == 0  # the first glob that matches, in order
    assert rs.lookup("a?") == 2 and rs.lookup("ab") == 2
    assert RuleSet(normalize_rules({"temp[C]": Window(1.0)})).lookup("temp[C]") == 0


@pytest.mark.parametrize(
    "bad",
    [
        lambda: Window(0),
        lambda: Window(1, ("median",)),
        lambda: Deadband(-1),
        lambda: OnChange(float("nan")),
        lambda: normalize_rules({"": Window(1)}),
    ],
)
def test_bad_rules_are_refused(bad):
    with pytest.raises(ValueError):
        bad()


# --------------------------------------------------------------------------- windows, several processes


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_windows_of_a_pool_equal_the_independent_computation(collector, tmp_path, backend, method):
    rules = {"temp_*": Window(W, ALL), "count_c": Window(W, ("mean", "min", "max", "count", "sum", "first", "last"))}
    s = _streamer(collector, tmp_path, bucket_key="pool-" + method, rules=rules)
    nworkers, n = 3, 600 if method == "fork" else 300
    ctx = multiprocessing.get_context(method)
    with ctx.Pool(nworkers, initializer=aggworkers.init, initargs=(s,)) as pool:
        logged = [
            ev
            for part in pool.map(aggworkers.log_random, [(w, nworkers, n, 7) for w in range(nworkers)])
            for ev in part
        ]
        pool.close()
        pool.join()
    windowed = [ev for ev in logged if ev[0] != "load"]
    assert wait_until(lambda: s.stats()["folded"] == len(windowed), 120)  # folded, not sent: no window is due
    _close_and_wait(s)
    stored = collector.events("pool-" + method)
    check_windows([e for e in stored if e["key"] != "load"], expected_windows(windowed, W), ALL)
    # a key without a rule passes through unchanged: every event, its value and epoch
    plain = sorted((e["epoch"], e["value"]) for e in stored if e["key"] == "load")
    assert plain == sorted((ep, v) for k, v, ep in logged if k == "load")


# --------------------------------------------------------------------------- report by exception


def reference_deadband(events, absolute=0.0, relative=0.0, heartbeat=0.0):
    """The events a deadband rule sends, written from the rule's definition."""
    sent = []
    last = last_ep = None
    for v, ep in events:
        if last is None:
            ok = True
        elif absolute == 0.0 and relative == 0.0:
            ok = v != last
        else:
            ok = (absolute > 0 and abs(v - last) > absolute) or (relative > 0 and abs(v - last) > relative * abs(last))
        if not ok and heartbeat > 0 and ep - last_ep >= heartbeat:
            ok = True
        if ok:
            sent.append((v, ep))
            last, last_ep = v, ep
    return sent


def test_deadband_heartbeat_and_change_rules_are_exact(collector, tmp_path, backend):
    import random

    rng = random.Random(3)
    T0 = 4.0e9
    walk, x = [], 0.0
    for i in range(3000):
        x += rng.gauss(0, 0.3)
        walk.append((x, T0 + i * 0.125))
    rel = [(100.0 * (1 + 0.02 * math.sin(i / 10.0)) + rng.random(), T0 + i * 0.125) for i in range(1000)]
    ints = [(rng.randrange(5), T0 + i * 0.125) for i in range(500)]
    strings = [(rng.choice(["open", "closed"]) if i % 5 == 0 else None, T0 + i * 0.125) for i in range(800)]
    flags = [(rng.random() < 0.2, T0 + i * 0.125) for i in range(800)]
    s = _streamer(
        collector,
        tmp_path,
        bucket_key="rbe",
        rules={
            "walk": Deadband(absolute=0.5, heartbeat=10.0),
            "rel": Deadband(relative=0.01),
            "ints": Deadband(),
            "door": OnChange(heartbeat=20.0),
            "flag": OnChange(),
        },
    )
    last_door = "open"
    door = []
    for v, ep in strings:
        last_door = v if v is not None else last_door
        door.append((last_door, ep))
    for name, seq in (("walk", walk), ("rel", rel), ("ints", ints), ("door", door), ("flag", flags)):
        for v, ep in seq:
            s.log(name, v, ep)
    _close_and_wait(s)
    stored = collector.events("rbe")
    got = defaultdict(list)
    for e in stored:
        got[e["key"]].append((e["value"], e["epoch"]))
    for k in got:
        got[k].sort(key=lambda t: t[1])
    assert got["walk"] == reference_deadband(walk, absolute=0.5, heartbeat=10.0)
    assert got["rel"] == reference_deadband(rel, relative=0.01)
    assert got["ints"] == reference_deadband(ints) and all(type(v) is int for v, _ in got["ints"])
    assert got["door"] == _on_change(door, 20.0)
    assert got["flag"] == _on_change(flags, 0.0) and all(type(v) is bool for v, _ in got["flag"])
    assert len(got["walk"]) < len(walk) / 2  # it did thin the stream


def _on_change(events, heartbeat):
    sent, last, last_ep = [], object(), None
    for v, ep in events:
        if v != last or type(v) is not type(last) or (heartbeat > 0 and ep - last_ep >= heartbeat):
            sent.append((v, ep))
            last, last_ep = v, ep
    return sent


# --------------------------------------------------------------------------- flush, close, exit


@pytest.mark.parametrize("folded_first", [False, True])
def test_flush_returns_after_the_open_windows_are_delivered(collector, tmp_path, backend, folded_first):
    """flush() returns once the windows holding its events are delivered: also when the sender had
    already folded every event (the segment was empty, the windows still open)."""
    s = _streamer(collector, tmp_path, bucket_key="flush", rules={"x": Window(60.0, ("mean", "count"))})
    T0 = 60.0 * 66666667  # a multiple of 60 in 2096: no window here closes by the clock
    for i in range(100):
        s.log("x", float(i), T0 + i)  # windows ending at T0+60 and T0+120
    if folded_first:
        assert wait_until(lambda: s.stats()["folded"] == 100 and s.stats()["pending"] == 0, 60)
    assert s.flush(60)
    stored = {(e["key"], e["epoch"]): e["value"] for e in collector.events("flush")}  # no waiting
    assert stored == {("x", T0 + 60): 29.5, ("x_count", T0 + 60): 60, ("x", T0 + 120): 79.5, ("x_count", T0 + 120): 40}
    st = s.stats()
    assert (st["folded"], st["windows"], st["aggregated"], st["aggregation_ratio"]) == (100, 2, 4, 25.0)
    _close_and_wait(s)


@pytest.mark.parametrize("ending", ["close", "exit", "with"])
def test_nothing_of_a_closing_window_is_lost(collector, tmp_path, backend, ending):
    """A script logs into windows that are open when it ends (close(), plain interpreter exit, a
    with block): every event is in a window that arrives."""
    end = {"close": "s.close()", "exit": "pass", "with": "pass"}[ending]
    script = write_script(
        tmp_path,
        "ends.py",
        '''
        import isstreamer, os, sys
        from isstreamer import Window
        def run(s):
            print(s.sender_pid, flush=True)
            for i in range(5000):
                s.log("v", float(i % 97), 4.0e9 + i * 0.001)  # 5 s of epochs, in 1 s windows
        kw = dict(bucket_key="ends", access_key="k", api_base=sys.argv[1], spool_dir=sys.argv[2],
                  rules={"v": Window(1.0, ("count", "sum"))})
        if "ENDING" == "with":
            with isstreamer.Streamer(**kw) as s:
                run(s)
        else:
            s = isstreamer.Streamer(**kw)
            run(s)
            END
    '''.replace("ENDING", ending).replace("END", end),
    )
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, script, collector.url, str(tmp_path / "spool")],
        env=script_env(backend),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    pid = int(r.stdout.split()[0])
    assert wait_until(lambda: pid_gone(pid), 120)
    stored = {(e["key"], e["epoch"]): e["value"] for e in collector.events("ends")}
    counts = {ep: v for (k, ep), v in stored.items() if k == "v_count"}
    assert sum(counts.values()) == 5000 and len(counts) == len(stored) // 2
    exp = expected_windows([("v", float(i % 97), 4.0e9 + i * 0.001) for i in range(5000)], 1.0)
    check_windows([{"key": k, "epoch": ep, "value": v} for (k, ep), v in stored.items()], exp, ("count", "sum"))


def test_many_rules_still_reach_the_sender(collector, tmp_path, backend):
    """200 glob rules do not fit the ring header's record of the settings (kept for an adopter):
    the Streamer still works and its sender applies every rule."""
    rules = {"key_%03d_*" % i: Window(1.0, ("max",)) for i in range(200)}
    s = _streamer(collector, tmp_path, bucket_key="many", rules=rules)
    for i in range(10):
        s.log("key_199_x", float(i), 4.0e9 + i * 0.01)
    _close_and_wait(s)
    assert [(e["key"], e["value"], e["epoch"]) for e in collector.events("many")] == [("key_199_x_max", 9.0, 4.0e9 + 1)]
