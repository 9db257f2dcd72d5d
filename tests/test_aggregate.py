"""Downsampling in the sender (issue 13): what the real local collector stores equals the windows,
deadband and change reports computed independently here, for streams from several processes.

Real processes (fork and spawn pools, scripts that exit), a real collector; no timing assertions.
"""

from __future__ import annotations

import math
import multiprocessing
from collections import defaultdict
from typing import Any, Dict, List, Tuple

import pytest

import aggworkers
from aggref import expected_windows, reference_deadband
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


def _close(s: Any) -> None:
    """close(): the last process out closes every open window and returns once they are delivered."""
    s.close(timeout=60)


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
    _close(s)
    stored = collector.events("pool-" + method)
    check_windows([e for e in stored if e["key"] != "load"], expected_windows(windowed, W), ALL)
    # a key without a rule passes through unchanged: every event, its value and epoch
    plain = sorted((e["epoch"], e["value"]) for e in stored if e["key"] == "load")
    assert plain == sorted((ep, v) for k, v, ep in logged if k == "load")


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_a_pool_whose_workers_exit_gets_each_window_whole(collector, tmp_path, backend, method):
    """Issue 19 item 1: with ``maxtasksperchild=1`` every task runs in a new worker whose exit runs
    ``close()``; a worker's exit hands its events over but closes no window the others fold into,
    so each window arrives whole (once) at the end, with every event of every worker in it."""
    rules = {"temp_*": Window(W, ALL), "count_c": Window(W, ALL)}
    s = _streamer(collector, tmp_path, bucket_key="exits-" + method, rules=rules)
    ntasks, n = 5, 120
    ctx = multiprocessing.get_context(method)
    with ctx.Pool(2, initializer=aggworkers.init, initargs=(s,), maxtasksperchild=1) as pool:
        parts = pool.map(aggworkers.log_random, [(w, ntasks, n, 11) for w in range(ntasks)], chunksize=1)
        pool.close()
        pool.join()
    logged = [ev for part in parts for ev in part]
    windowed = [ev for ev in logged if ev[0] != "load"]
    assert wait_until(lambda: s.stats()["folded"] == len(windowed), 120)
    assert s.stats()["windows"] == 0  # every worker has exited: not one window was cut
    _close(s)
    stored = collector.events("exits-" + method)
    check_windows([e for e in stored if e["key"] != "load"], expected_windows(windowed, W), ALL)
    assert sorted(e["value"] for e in stored if e["key"] == "load") == sorted(v for k, v, _ in logged if k == "load")


# --------------------------------------------------------------------------- report by exception


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
    _close(s)
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
    _close(s)


def test_the_last_process_out_sends_every_window_before_close_returns(collector, tmp_path, backend):
    """No other process uses the Streamer: close() closes the open windows (nobody else folds into
    them) and returns once they are delivered, as 2.0.0's close() returns once all is sent."""
    s = _streamer(collector, tmp_path, bucket_key="last", rules={"x": Window(60.0, ("count",))})
    T0 = 60.0 * 66666667
    for i in range(100):
        s.log("x", 1.0, T0 + i)
    s.close(60)
    got = sorted((e["key"], e["epoch"], e["value"]) for e in collector.events("last"))  # no waiting
    assert got == [("x_count", T0 + 60, 60), ("x_count", T0 + 120, 40)]


@pytest.mark.parametrize("use_async", [True, False])
def test_a_log_flush_loop_sends_one_event_per_window_and_statistic(collector, tmp_path, backend, use_async):
    """Issue 19 item 2: a 2.0.0-style loop, ``log(); flush()`` every iteration (with use_async
    either way): flush() without a timeout sends what is buffered but closes no window."""
    s = _streamer(
        collector, tmp_path, bucket_key="loop", use_async=use_async, rules={"x": Window(1.0, ("mean", "count"))}
    )
    T0 = 60.0 * 66666667  # 2096: no window here closes by the clock
    events = [("x", float(i % 7), T0 + i * 0.02) for i in range(300)]  # 6 windows of 50 events
    for key, v, ep in events:
        s.log(key, v, ep)
        assert s.flush()
    assert wait_until(lambda: s.stats()["folded"] == len(events), 60)
    assert s.stats()["windows"] == 0
    _close(s)
    check_windows(collector.events("loop"), expected_windows(events, 1.0), ("mean", "count"))


@pytest.mark.parametrize("ending", ["close", "exit", "with", "os_exit"])
def test_nothing_of_a_closing_window_is_lost(collector, tmp_path, backend, ending):
    """A script logs into windows that are open when it ends (close(), plain interpreter exit, a
    with block; os._exit: no close() at all, the sender folds what it left and closes every window
    as it exits): every event is in a window that arrives, each window once."""
    end = {"close": "s.close()", "exit": "pass", "with": "pass", "os_exit": "os._exit(0)"}[ending]
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
    assert len(stored) == len(collector.events("ends"))  # each window once
    counts = {ep: v for (k, ep), v in stored.items() if k == "v_count"}
    assert sum(counts.values()) == 5000 and len(counts) == len(stored) // 2
    exp = expected_windows([("v", float(i % 97), 4.0e9 + i * 0.001) for i in range(5000)], 1.0)
    check_windows([{"key": k, "epoch": ep, "value": v} for (k, ep), v in stored.items()], exp, ("count", "sum"))


def test_mean_and_sum_do_not_overflow_midway_and_what_cannot_be_sent_is_counted(collector, tmp_path, backend):
    """Issue 19 item 5: a sum that overflows on the way but not in the end is sent; a sum that is
    not representable is counted in stats()["dropped"]["overflow"] (its mean is still sent)."""
    s = _streamer(collector, tmp_path, bucket_key="ovf", rules={"*": Window(1.0, ("mean", "sum"))})
    T0 = 4.0e9
    for key, values in (("a", [1.5e308, 1.5e308]), ("b", [1e308, 1e308, -1e308]), ("c", [-1.7e308, -1.7e308])):
        for i, v in enumerate(values):
            s.log(key, v, T0 + i * 0.1)
    assert s.flush(60)
    got = {e["key"]: e["value"] for e in collector.events("ovf")}
    assert got == {"a": 1.5e308, "b": 1e308 / 3, "b_sum": 1e308, "c": -1.7e308}
    assert s.stats()["dropped"] == {"overflow": 2}
    _close(s)


def test_integers_are_compared_and_kept_as_integers(collector, tmp_path, backend):
    """Issue 19 item 6: Deadband compares integers as integers (beyond 2^53 too); the min, max,
    first and last of a window of integers are integers, exact; a window holding a float sends floats."""
    big = [2**53, 2**53 + 1, 2**53 + 1, 2**53 + 2, 2**62, 2**62 + 1, -(2**63), 2**63 - 1]
    s = _streamer(
        collector,
        tmp_path,
        bucket_key="ints",
        rules={"d": Deadband(), "a": Deadband(absolute=1.0), "w": Window(1.0, ALL), "m": Window(1.0, ALL)},
    )
    T0 = 4.0e9
    for i, v in enumerate(big):
        s.log("d", v, T0 + i)
        s.log("a", v, T0 + i)
    wvals = [2**62 + 1, 3, -5, 2**53 + 1, 2**62 + 3]
    for i, v in enumerate(wvals):
        s.log("w", v, T0 + 0.1 * i)
    for i, v in enumerate([7, 2**53 + 1, 2.5]):
        s.log("m", v, T0 + 0.1 * i)
    _close(s)
    got = defaultdict(list)
    for e in collector.events("ints"):
        got[e["key"]].append(e["value"])
    events = [(v, T0 + i) for i, v in enumerate(big)]
    assert got["d"] == [v for v, _ in reference_deadband(events)] == sorted(set(big), key=big.index)
    assert got["a"] == [v for v, _ in reference_deadband(events, absolute=1.0)]
    assert all(type(v) is int for v in got["d"] + got["a"])
    one = {k: v[0] for k, v in got.items() if len(v) == 1}
    assert (one["w_min"], one["w_max"], one["w_first"], one["w_last"]) == (-5, 2**62 + 3, 2**62 + 1, 2**62 + 3)
    assert all(type(one[k]) is int for k in ("w_min", "w_max", "w_first", "w_last", "w_count"))
    assert one["w_sum"] == float(sum(wvals)) and one["w"] == float(sum(wvals)) / len(wvals)
    assert (one["m_min"], one["m_max"], one["m_first"], one["m_last"]) == (2.5, float(2**53 + 1), 7.0, 2.5)
    assert all(type(one[k]) is float for k in ("m_min", "m_max", "m_first", "m_last", "m_sum", "m"))


def test_many_rules_still_reach_the_sender(collector, tmp_path, backend):
    """200 glob rules do not fit the ring header's record of the settings (kept for an adopter):
    the Streamer still works and its sender applies every rule."""
    rules = {"key_%03d_*" % i: Window(1.0, ("max",)) for i in range(200)}
    s = _streamer(collector, tmp_path, bucket_key="many", rules=rules)
    for i in range(10):
        s.log("key_199_x", float(i), 4.0e9 + i * 0.01)
    _close(s)
    assert [(e["key"], e["value"], e["epoch"]) for e in collector.events("many")] == [("key_199_x_max", 9.0, 4.0e9 + 1)]
