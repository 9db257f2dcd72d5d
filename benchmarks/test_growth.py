"""How the cost grows: ring occupancy, key length, value length, and memory in a long outage.

* ring fill: the sender is paused (SIGSTOP) and one producer fills its segment to 95 % in 40
  chunks; ``extra_info["curves"]`` has (occupancy, wall ns, CPU ns) per call of each chunk.
  Round 1 writes pages of the mapping for the first time (page faults), rounds 2 and 3, each
  after a full drain, run over warm pages and wrap around the end of the segment.
* key length / value length: per-call cost of ``log()`` for keys of 8..1000 characters (keys
  over 250 characters are cut to 250, 2.0.0's limit, on the slow path) and string values of
  8..8000 characters (over 2000 are cut to 2000, on the slow path).
* outage: ``api_base`` is a closed port on 127.0.0.1, so the sender cannot deliver and spools to
  disk. 8 million floats are logged in chunks of 100k; after each chunk the resident memory
  of the producer (this process) and of the sender is read from /proc/<pid>/status. Growth per
  million events is the least-squares slope over the samples after the first 3 million (the
  warm-up: the producer's segment fills, since log() writes faster than the sender spools, and
  its pages count in the producer's RssShmem up to the segment's 64 MiB; the sender's imports,
  batch buffers and spool file reach their plateau too; with the C hot path the plateau comes
  at about 2.5 M events); "flat" also looks at the spread (max - min) of those
  samples (the sender's RSS jitters by ~1.5 MB as batch buffers come and go, so the slope needs
  a few million events to mean anything; over 10M events it stays within 38-40 MB). The growth
  over the first million is reported too.
"""

from __future__ import annotations

import os
import signal
import statistics
import time

import pytest

import benchutil

MB = 1024 * 1024


# ---- ring fill --------------------------------------------------------------------------------
@pytest.mark.benchmark(group="growth-ring-fill")
def test_ring_fill(benchmark, make_streamer, count_server, quick):
    s = make_streamer("native", api_base=count_server, ring_size=16 * MB, full_timeout=60.0)
    s.log("temperature", 21.5)
    assert s.flush(60)
    spid = benchutil.sender_pid(s)
    rec = 48  # bytes of one record: 24 header + 8 value + 11 key, padded to 8
    seg = 16 * MB
    chunk = int(seg * 0.95 / rec / 40)
    curves = []

    def setup():
        os.kill(spid, signal.SIGSTOP)
        curves.append([])

    def fill():
        log = s.log
        perf, cpu = time.perf_counter, time.thread_time
        for _ in range(40):
            c0 = cpu()
            t0 = perf()
            for _ in range(chunk):
                log("temperature", 21.5)
            dt = perf() - t0
            dc = cpu() - c0
            curves[-1].append((round(benchutil.segment_fill(s), 4), dt / chunk * 1e9, dc / chunk * 1e9))

    def teardown():
        os.kill(spid, signal.SIGCONT)
        assert s.flush(120)

    try:
        benchmark.pedantic(fill, setup=setup, teardown=teardown, rounds=3, warmup_rounds=0)
    finally:
        os.kill(spid, signal.SIGCONT)
    st = s.stats()
    assert not st["dropped"], st["dropped"]

    def band(curves, lo, hi, col):
        xs = [pt[col] for c in curves for pt in c if lo <= pt[0] < hi]
        return statistics.median(xs) if xs else None

    def bands(curves, col):
        return {
            "0-10%": band(curves, 0, 0.1, col),
            "45-55%": band(curves, 0.45, 0.55, col),
            "85-95%": band(curves, 0.85, 0.96, col),
        }

    benchmark.extra_info.update(
        kind="ring-fill",
        calls_per_round=chunk * 40,
        segment_bytes=seg,
        curves=curves,
        bands={"cold": bands(curves[:1], 1), "warm": bands(curves[1:], 1)},
        cpu_bands={"cold": bands(curves[:1], 2), "warm": bands(curves[1:], 2)},
    )


# ---- key and value length ---------------------------------------------------------------------
def _per_call(benchmark, s, key, value, quick, calls):
    """Rounds of ``calls`` calls on a warm 16 MiB segment that holds every record of the test."""
    benchutil.prefault(s)
    log = s.log
    log(key, value)
    cpu = []

    def run():
        c0 = time.thread_time()
        for _ in range(calls):
            log(key, value)
        cpu.append(time.thread_time() - c0)

    benchmark.pedantic(run, rounds=10 if quick else 60, warmup_rounds=2)
    assert s.flush(120)
    st = s.stats()
    assert not st["dropped"], st["dropped"]
    benchmark.extra_info.update(calls_per_round=calls, cpu_median_ns=statistics.median(cpu) / calls * 1e9)


@pytest.mark.parametrize("key_len", [8, 32, 128, 250, 251, 1000])
@pytest.mark.benchmark(group="growth-key-length")
def test_key_length(benchmark, make_streamer, count_server, quick, key_len):
    s = make_streamer("native", api_base=count_server, ring_size=16 * MB, full_timeout=60.0)
    _per_call(benchmark, s, ("k" * key_len), 21.5, quick, 1000)
    benchmark.extra_info.update(kind="key-length", length=key_len)


@pytest.mark.parametrize("value_len", [8, 64, 512, 2000, 2001, 8000])
@pytest.mark.benchmark(group="growth-value-length")
def test_value_length(benchmark, make_streamer, count_server, quick, value_len):
    s = make_streamer("native", api_base=count_server, ring_size=16 * MB, full_timeout=60.0)
    _per_call(benchmark, s, "status", "v" * value_len, quick, 200)
    benchmark.extra_info.update(kind="value-length", length=value_len)


# ---- memory during a long outage --------------------------------------------------------------
@pytest.mark.benchmark(group="growth-outage-memory")
def test_outage_memory(benchmark, make_streamer, tmp_path, quick):
    closed = "http://127.0.0.1:%d" % benchutil.free_port_closed()
    s = make_streamer(
        "native", api_base=closed, spool_dir=str(tmp_path / "spool"), full_timeout=60.0, request_timeout=2.0
    )
    chunk = 100_000
    chunks = 20 if quick else 80
    # chunks of warm-up: until the producer has filled its 64 MiB segment (the sender spools
    # more slowly than log() writes) and the sender's buffers have reached their size; with the
    # C hot path that takes about 2.5 M events (1 M before it), then 5 M events are measured
    warm = 10 if quick else 30
    spid = benchutil.sender_pid(s)
    me = os.getpid()
    samples = []

    def sample(n):
        samples.append(
            {
                "events": n,
                "t": time.perf_counter(),
                "producer": benchutil.proc_mem(me),
                "sender": benchutil.proc_mem(spid),
            }
        )

    def run():
        log = s.log
        sample(0)
        for i in range(chunks):
            for _ in range(chunk):
                log("temperature", 21.5)
            sample((i + 1) * chunk)

    benchmark.pedantic(run, rounds=1, warmup_rounds=0)
    st = s.stats()
    after = samples[warm:]

    def growth(who, field):
        return benchutil.slope([x["events"] / 1e6 for x in after], [x[who][field] / MB for x in after])

    def spread(who, field):
        vals = [x[who][field] for x in after]
        return (max(vals) - min(vals)) / MB

    benchmark.extra_info.update(
        kind="outage-memory",
        events=chunks * chunk,
        calls_per_round=chunks * chunk,
        samples=[
            {
                "events": x["events"],
                "producer_rss": x["producer"]["VmRSS"],
                "producer_anon": x["producer"]["RssAnon"],
                "producer_shmem": x["producer"]["RssShmem"],
                "sender_rss": x["sender"]["VmRSS"],
                "sender_anon": x["sender"]["RssAnon"],
            }
            for x in samples
        ],
        producer_rss_growth_mb_per_million=growth("producer", "VmRSS"),
        producer_rss_spread_mb=spread("producer", "VmRSS"),
        producer_anon_growth_mb_per_million=growth("producer", "RssAnon"),
        sender_rss_growth_mb_per_million=growth("sender", "VmRSS"),
        sender_rss_spread_mb=spread("sender", "VmRSS"),
        sender_anon_growth_mb_per_million=growth("sender", "RssAnon"),
        events_per_s=chunks * chunk / (samples[-1]["t"] - samples[0]["t"]),
        producer_rss_first_chunk_mb=(samples[1]["producer"]["VmRSS"] - samples[0]["producer"]["VmRSS"]) / MB,
        warmup_events=samples[warm]["events"],
        sender_rss_warmup_growth_mb=(samples[warm]["sender"]["VmRSS"] - samples[0]["sender"]["VmRSS"]) / MB,
        producer_rss_warmup_growth_mb=(samples[warm]["producer"]["VmRSS"] - samples[0]["producer"]["VmRSS"]) / MB,
        spooled=st.get("spooled"),
        dropped=st["dropped"],
        logged=st["logged"],
    )


# ---- memory of Streamers created and closed in one process --------------------------------------
@pytest.mark.benchmark(group="growth-streamer-churn")
def test_streamer_churn_memory(benchmark, make_streamer, count_server, quick):
    """Resident memory after creating, using and closing Streamers one after another.

    Each Streamer maps its own ring; this shows whether a closed Streamer's mapping (and the ring
    pages it touched, which count in RssShmem) is given back.
    """
    streamers = 3 if quick else 5
    events = 200_000  # ~9.2 MiB of records: touches most of a 16 MiB ring's pages
    me = os.getpid()
    samples = [benchutil.proc_mem(me)]

    def run():
        for _ in range(streamers):
            s = make_streamer("native", api_base=count_server, ring_size=16 * MB)
            log = s.log
            for _ in range(events):
                log("temperature", 21.5)
            s.close(timeout=60)
            samples.append(benchutil.proc_mem(me))

    benchmark.pedantic(run, rounds=1, warmup_rounds=0)
    shm = [x["RssShmem"] / MB for x in samples]
    benchmark.extra_info.update(
        kind="streamer-churn",
        streamers=streamers,
        events_per_streamer=events,
        calls_per_round=streamers * events,
        rss_shmem_mb=shm,
        rss_mb=[x["VmRSS"] / MB for x in samples],
        shmem_growth_mb_per_closed_streamer=(shm[-1] - shm[0]) / streamers,
    )
