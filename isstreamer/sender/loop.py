"""The sender process: drains the ring, batches, POSTs, spools and replays.

Started by a Streamer as ``python -m isstreamer.sender`` (a fresh interpreter: it never
re-imports the user's ``__main__`` and is safe to start from a threaded parent), with its
settings as JSON on stdin (so the access key never shows in ``ps``). It runs in its own
session, so a Ctrl-C in the terminal does not kill it before it has drained. It exits when no
live process owns a segment of the ring any more, after delivering or spooling everything.
What it spools (outage, 401, a long Retry-After, a full ring...) it replays itself as soon as
the API takes requests again; replay stops at the exit deadline (``close_timeout``), and what
is left is replayed by the next sender using the same spool directory, API base and access
key (or by ``isstreamer replay``).
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from .. import ids, lazy
from ..ring import RingClosed, RingRefused, Segment, Table, segment_owner_alive
from ..ring import layout as L
from ..options import REJECTED_FILE
from ..settings import SenderSettings
from .aggregate import Aggregator
from .delivery import Delivery, Kind, Policy, Result
from .encoder import Batch, Encoder
from .replay import Stop, StreamReplay, count_events
from .spool import ReplayFile, SpoolFull, SpoolWriter, StreamMeta, check_root, key_fingerprint, pending_files, streams
from .doorbell import Doorbell
from .transport import Transport
from .watched import WatchedTransport

log = lazy.Logger("isstreamer")


class Sender:
    """The drain / deliver / spool / replay loop over one ring."""

    LIVENESS_EVERY = 1.0
    SPOOL_SCAN_EVERY = 5.0
    REPLAY_BUDGET = 0.05  # seconds of replay per loop turn while live events wait
    GIVE_UP_AFTER = 30.0  # seconds past the exit deadline after which a failing sender exits anyway

    def __init__(
        self,
        s: SenderSettings,
        table: Table,
        transport: Optional[Any] = None,
        *,
        doorbell: Optional[Any] = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        owner_alive: Callable[[Table, int], bool] = segment_owner_alive,
        wall: Callable[[], float] = time.time,
    ) -> None:
        """``transport``: what the delivery sends through (post_events, create_bucket, close,
        api_base); by default HTTP in a worker thread that calls :meth:`while_request_out`.
        ``doorbell``: what an idle sender sleeps on (default: the table's wake socket).
        ``clock`` and ``sleep``: monotonic seconds and a pause; ``wall``: the time of day (the
        epochs of the downsampling windows); ``owner_alive(table, seg_id)``: whether a segment's
        producer lives (the kernel's record lock). The thread mode gives its own doorbell and
        liveness; tests give fakes, and run a sender inside the process that logs."""
        self.settings = s
        self.owner_alive = owner_alive
        self.table = table  # the table file: counters, buckets, producer slots
        self.clock = clock
        self.sleep = sleep
        self.segs: Dict[int, Tuple[int, Segment]] = {}  # slot -> (segment id, mapping)
        self.encoder = Encoder(None, s.max_batch_bytes, s.native)
        if transport is None:
            transport = WatchedTransport(
                Transport(s.api_base, s.access_key, s.request_timeout, s.use_gzip), self.while_request_out
            )
        self.transport = transport
        self.inflight: Optional[Batch] = None  # the ring batch whose request is out
        # spool-only (an adopted ring of another key): its events are spooled under the ring's key
        self.fingerprint = s.fingerprint if s.spool_only and s.fingerprint else key_fingerprint(s.access_key)
        self.spool = SpoolWriter(s.spool_dir, s.spool_max_bytes)
        self.delivery = Delivery(
            self.transport,
            Policy.of(s),
            os.path.join(s.spool_dir, REJECTED_FILE),
            self.report,
            clock=clock,
            sleep=sleep,
        )
        self.created: Set[int] = set()
        self.first_seen: Dict[int, float] = {}
        self.attempts: Dict[Tuple[int, int], int] = {}
        self.seen_flush = -1  # a new sender first sends whatever waits in the ring (flush requests
        # made before it ran, e.g. by a producer blocked on a full segment, would be missed)
        self.exit_deadline: Optional[float] = None
        self.stop_requested = False
        self.live_owners = True
        self._last_liveness = 0.0
        self._last_scan = -1e9
        self._replay_streams = []  # type: list
        self._replay_buckets: Set[str] = set()
        self._was_blocked = False
        self._reported_spool_full = False
        self._bucket_status = 0  # status of the last bucket creation request
        self._errors = 0
        self._spool_error_reported = False
        self.bell = doorbell if doorbell is not None else Doorbell(table)
        self.wakeups = 0  # sleeps that ended (woken or timed out): the idle cost
        self._sleep_seq = ids.random_id63() >> 1  # see _sleep (a new sender never repeats the last value)
        self.spilled_path: Optional[str] = None  # the spool file holding the in-flight batch's copy
        self._spilling = False
        self._open_error_reported = False
        self.agg = Aggregator.for_settings(s, self, clock=clock, wall=wall)  # aggregate: per-key rules (None without)
        self._space_seen = table.counter("space_short")

    # ---- reporting --------------------------------------------------------------------------
    def report(self, msg: str) -> None:
        """A loud message: stderr and the ``isstreamer`` logger (never contains the access key)."""
        log.warning(msg)

    # ---- main loop ----------------------------------------------------------------------------
    def run(self) -> int:
        """Loop until every owner is gone and everything is delivered or spooled."""
        table = self.table
        table.set_sender_pid(os.getpid())
        while True:
            now = self.clock()
            if now - self._last_liveness >= self.LIVENESS_EVERY:
                self._last_liveness = now
                self.live_owners = self._any_live_owner()
            if self.exit_deadline is None and (self.stop_requested or not self.live_owners):
                self.exit_deadline = now + self.settings.close_timeout
            try:
                worked, drained = self.turn()
            except Exception as exc:  # noqa: BLE001 - the sender must outlive any one bad turn
                worked, drained = False, False
                self._errors += 1
                if self._errors == 1 or self.settings.debug_level >= 2:
                    log.exception("isstreamer: sender error (%s); it keeps running", type(exc).__name__)
                self.sleep(0.05)
            if self.exit_deadline is not None:
                give_up = now > self.exit_deadline + self.GIVE_UP_AFTER
                if (drained or give_up) and self._close_ring(remove=drained):
                    break
                if self.stop_requested and (drained or give_up):
                    break  # SIGTERM: what was logged is out; live producers start a new sender if need be
                if not self.stop_requested and self._any_live_owner():
                    self.exit_deadline = None  # a producer joined while we were finishing
            if not worked:
                self._sleep(self._sleep_budget())
        self._shutdown()
        return 0

    IDLE_MAX = 1.0  # the longest sleep: liveness of the producers, spool scans, replay probes

    def _sleep_budget(self) -> float:
        """Seconds until something is due: the earliest flush_interval of a waiting segment, the
        delivery's wait (backoff, Retry-After), or IDLE_MAX; a few ms while exiting."""
        if self.exit_deadline is not None or self.stop_requested:
            return 0.005
        t = self.IDLE_MAX
        if self.first_seen:
            t = min(t, min(self.first_seen.values()) + self.settings.flush_interval - self.clock())
            t = max(t, min(self.delivery.wait_time(), self.IDLE_MAX))
        if self.agg is not None:  # aggregate: the next window due, or its output's flush_interval
            t = min(t, max(self.agg.due_in(), min(self.delivery.wait_time(), self.IDLE_MAX)))
        return max(0.001, t)

    def _sleep(self, timeout: float) -> None:
        """Sleep until ``timeout`` or a producer rings (flush(), a put seeing ``sleeping``)."""
        table = self.table
        if not self.bell.armed():
            self.sleep(min(timeout, 0.02))
            return
        if self.first_seen:
            # events already wait (due by buffer_size or flush_interval): poll, so that producers
            # ring only the first event after an idle stretch, not every event; a producer that
            # waits in flush(timeout) rings anyway (Table.request_flush), and ends the pause
            self.bell.wait(min(timeout, 0.02))
            return
        self._sleep_seq = (self._sleep_seq + 1) & ((1 << 62) - 1) or 1
        table.sleep_begin(self._sleep_seq)  # a number new to this sleep: producers ring once
        try:
            # re-check after the barrier (a flush() or put before it did not see us asleep)
            if (table.flush_seq != self.seen_flush and self.delivery.ready()) or self._due_now():
                return
            self.bell.wait(timeout)
            self.wakeups += 1
        finally:
            table.sleep_end()

    def _due_now(self) -> bool:
        """Anything published that this sender has not seen waiting yet, or due by buffer_size
        (never while the delivery must wait: the sleep then lasts until it may send)."""
        if not self.delivery.ready():
            return False
        for slot, _, seg_id, _ in self.table.slots():
            have = self.segs.get(slot)
            if have is None or have[0] != seg_id:
                return True  # a segment new to us
            seg = have[1]
            if seg.head() != seg.tail():
                if slot not in self.first_seen or seg.waiting() >= self.settings.buffer_size:
                    return True
        return False

    def turn(self) -> Tuple[bool, bool]:
        """One pass: buckets, ring -> API, spool replay, reclaim. Returns (did work, drained)."""
        table = self.table
        flush_seq = table.flush_seq
        force = flush_seq != self.seen_flush or self.exit_deadline is not None
        self._sync_buckets()
        agg_worked = self.agg is not None and self.agg.turn(force)  # aggregate: due windows out
        worked, drained = self._pump(force)
        if drained:
            self._space_seen = table.counter("space_short")
        if self.agg is not None:  # aggregate: its output (and at exit, open windows) pending
            worked, drained = worked or agg_worked, drained and self.agg.settled(self.exit_deadline is not None)
        if flush_seq != self.seen_flush and drained:
            self.seen_flush = flush_seq
            table.set_flush_done(flush_seq)  # aggregate: served (flush() with rules waits for it)
        blocked = self.delivery.outage or self.delivery.auth_blocked
        if self._was_blocked and not blocked:
            self.spool.close_all()  # our own spool files become replayable
            self.spool.forget_size()
            self._last_scan = -1e9
        self._was_blocked = blocked
        worked |= self._replay()
        self._count_requests()
        self._reclaim()
        return worked, drained

    def _close_ring(self, remove: bool) -> bool:
        """Finish: under the table lock, unless a live producer appeared, mark the ring closing (no
        producer may join after) and remove its files (``remove``: everything was delivered or
        spooled; otherwise the files stay for an adopter). False when a producer is alive."""
        table = self.table
        with table.locked():
            for slot, st, seg_id, _ in table.slots():
                if st == L.SLOT_OWNED and self._owner_alive(slot, seg_id, may_free=False):
                    return False
            if not remove:
                return True
            table.mark_closing()
            self.bell.close()
            table.remove_files()
        return True

    def _shutdown(self) -> None:
        self.bell.close()
        self.spool.close_all()
        self.transport.close()
        table = self.table
        if table.sender_pid == os.getpid():
            table.set_sender_pid(0)
        for _, seg in self.segs.values():
            seg.close()
        self.segs.clear()

    # ---- what the aggregator asks of its sender (aggregate.Host) ----------------------------------
    def segments(self) -> List[Segment]:
        """The mapped segments registered now."""
        out = []
        for slot, _, seg_id, _ in list(self.table.slots()):
            seg = self.segment(slot, seg_id)
            if seg is not None:
                out.append(seg)
        return out

    def cut_seq(self) -> int:
        """The table's cut request number."""
        return self.table.cut_seq

    def exiting(self) -> bool:
        """True once this sender is finishing."""
        return self.exit_deadline is not None

    def deliver(self, batch: Batch, force: bool) -> bool:
        """Send, spool or reject a batch that is not in the ring (emitted by the rules)."""
        if not self.handle(batch, force):
            return False
        self.attempts.pop((batch.seg, batch.start), None)
        return True

    def count(self, name: str, n: int = 1) -> None:
        """Add to a table counter."""
        self.table.count(name, n)

    def count_drop(self, reason: str, n: int = 1) -> None:
        """Count dropped events where every stats() sees them."""
        self.table.count_drop(reason, n)

    def held_backlog(self) -> int:
        """Events waiting in the ring while the API's rate limit holds sending back (else 0)."""
        if not self.delivery.rate_limited():
            return 0
        return sum(seg.waiting() for _, seg in list(self.segs.values()))

    # ---- segments ------------------------------------------------------------------------------
    def segment(self, slot: int, seg_id: int, may_free: bool = True) -> Optional[Segment]:
        """The mapping of the segment registered in ``slot`` (opened, and checked, on first use).

        A file that is not ours is dropped from the registry (``may_free``: never under the table
        lock); any other error (no fd left, no memory) leaves the slot alone: None this time."""
        have = self.segs.get(slot)
        if have is not None and have[0] == seg_id:
            return have[1]
        if have is not None:
            have[1].close()
            del self.segs[slot]
        path = self.table.seg_path(seg_id)
        try:
            seg = self.table.open_segment(seg_id)  # mapped: no descriptor kept
        except RingClosed:
            return None
        except RingRefused as exc:
            if may_free:
                self.report("isstreamer: %s; that producer slot is dropped" % exc)
                self.table.free_slot(slot, seg_id, None)
            return None
        except OSError as exc:
            if not self._open_error_reported:
                self._open_error_reported = True
                self.report("isstreamer: cannot open segment file %s (%s); retrying" % (path, exc))
            return None
        if seg.nsegs != 1:
            seg.close()
            if may_free:
                self.report("isstreamer: refusing segment file %s: not a one-segment ring" % path)
                self.table.free_slot(slot, seg_id, None)
            return None
        if seg.recover():  # a commit a killed sender left half done: finished, never read again
            self.table.count("recovered_commits")
        self.segs[slot] = (seg_id, seg)
        return seg

    def _owner_alive(self, slot: int, seg_id: int, may_free: bool = True) -> bool:
        """The kernel's word: does a process hold the owner lock of this segment file? (A file that
        exists but cannot be opened now counts as alive: never reclaim on a doubt.)"""
        self.segment(slot, seg_id, may_free)  # a file that is not ours is dropped from the registry
        return self.owner_alive(self.table, seg_id)

    def _any_live_owner(self) -> bool:
        alive = False
        for slot, st, seg_id, _ in self.table.slots():
            if st == L.SLOT_OWNED and self._owner_alive(slot, seg_id):
                alive = True
        return alive

    def _reclaim(self) -> None:
        for slot, st, seg_id, _ in list(self.table.slots()):
            seg = self.segment(slot, seg_id)
            if seg is None:
                if not self.table.segment_exists(seg_id):
                    self.table.free_slot(slot, seg_id, None)
                continue
            if st == L.SLOT_RELEASED or (st == L.SLOT_OWNED and not self._owner_alive(slot, seg_id)):
                if seg.head() == seg.tail() and self.table.free_slot(slot, seg_id, seg):
                    self.first_seen.pop(slot, None)
                    self.segs.pop(slot, None)
                    seg.close()

    # ---- buckets ------------------------------------------------------------------------------
    def _sync_buckets(self) -> None:
        if self.settings.spool_only:
            return
        used = self.table.buckets_used()
        if len(self.created) >= used or not self.delivery.ready():
            return
        if self.delivery.outage or self.delivery.auth_blocked:
            return
        for i in range(used):
            if i not in self.created:
                self._ensure_bucket(i)

    def _ensure_bucket(self, index: int) -> bool:
        if index in self.created:
            return True
        b = self.table.bucket(index)
        if b is None:
            return False
        if self._create_bucket(*b):
            self.created.add(index)
            return True
        return False

    def _create_bucket(self, key: str, name: str) -> bool:
        """Create a bucket through the delivery policy; True when settled (created or refused)."""
        r = self.delivery.create_bucket(key, name, self._finish_deadline())
        self._bucket_status = r.answer.status if r.answer is not None else 0
        if r.kind is Kind.DELIVERED:
            self.table.count("buckets_created")
        return r.kind.settled

    # ---- ring -> API ----------------------------------------------------------------------------
    def _pump(self, force: bool) -> Tuple[bool, bool]:
        """Send what is due. Returns (did work, every segment empty)."""
        s = self.settings
        now = self.clock()
        worked, drained = False, True
        for slot, st, seg_id, _ in list(self.table.slots()):
            seg = self.segment(slot, seg_id)
            if seg is None:
                continue
            pending = seg.waiting()
            if seg.head() == seg.tail():
                self.first_seen.pop(slot, None)
                continue
            fs = self.first_seen.setdefault(slot, now)
            due = (
                force
                or pending >= s.buffer_size
                or now - fs >= s.flush_interval
                or st == L.SLOT_RELEASED
                or self._occupancy(slot) > 0.5
            )  # before producers block
            if not due:
                drained = False
                continue
            while True:
                tail = seg.tail()
                if tail == seg.head():
                    self.first_seen.pop(slot, None)
                    break
                b = (
                    self.agg.next_batch(seg, tail, s.max_batch_events)
                    if self.agg is not None  # aggregate
                    else self.encoder.next_batch(0, tail, s.max_batch_events, ring=seg)
                )
                b.seg = slot
                if b.corrupt:
                    self._commit(b, corrupt=True)
                    continue
                if b.end == tail:  # no progress possible (cannot happen with max_batch_events >= 1)
                    drained = False
                    break
                if self.agg is not None and not self.agg.before_commit(slot, force):  # aggregate
                    drained = False
                    break
                if b.nevents and not self.handle(b, force):
                    drained = False
                    break
                self._commit(b)
                worked = True
        return worked, drained

    def _commit(self, b: Batch, corrupt: bool = False) -> None:
        """Release a handled batch back to its producer (``Segment.release``: a journal, the pages,
        then ``tail``, safe against this process's death at any step).

        ``corrupt``: the records from the batch's start to the head cannot be read; they are
        counted as dropped (``corrupt``, with their number) before they are released, never
        skipped silently (a death in between counts them twice, never zero times)."""
        if b.skipped:
            self.table.count("skipped_records", b.skipped)
        have = self.segs.get(b.seg)
        if have is None:
            return
        seg = have[1]
        if seg.tail() != b.start:
            return  # released already (spilled while its request was out)
        if corrupt:
            consumed = seg.logged()
            lost = consumed - seg.consumed()
            seg.count_lost(lost)
            self.table.count("corrupt_records")
            self.report(
                "isstreamer: unreadable record in ring segment %d: %d bytes holding %d event(s) skipped, "
                "counted in stats()['dropped']['corrupt']" % (b.seg, b.end - b.start, lost)
            )
        else:
            consumed = seg.consumed() + b.nevents + b.skipped + b.folded  # folded: aggregate
        seg.release(0, b.start, b.end, consumed)
        self.attempts.pop((b.seg, b.start), None)

    def _occupancy(self, slot: int) -> float:
        have = self.segs.get(slot)
        if have is None:
            return 0.0
        return have[1].fill()

    def handle(self, b: Batch, force: bool) -> bool:
        """Deliver, reject or spool one batch: True when the ring may release it."""
        bucket = self.table.bucket(b.bucket)
        if bucket is None:
            self.table.count("corrupt_records", b.nevents)
            return True
        key, name = bucket
        d = self.delivery
        left = self._exit_budget()
        if d.auth_blocked or self.settings.spool_only or (d.outage and not (left is not None and left > 0)):
            return self._to_spool([b.body], b.nevents, key, name)
        if not d.ready():
            # cannot send now: keep it in the ring unless the ring fills up, someone waits (for
            # longer than a second), or the wait outlasts what is left of the exit budget
            if left is not None:
                urgent = d.wait_time() >= left
            else:
                urgent = self._occupancy(b.seg) > 0.5 or self._space_pressure() or (force and d.wait_time() > 1.0)
            if urgent:
                return self._to_spool([b.body], b.nevents, key, name)
            return False
        self.inflight, self.spilled_path = b, None  # (the spill path treats it as out from here)
        try:
            if not self._ensure_bucket(b.bucket):
                if self.spilled_path is not None:
                    return True  # spilled while the bucket request was out: the spool has it
                # the bucket creation failed: it counts as a failed attempt at this batch
                if d.auth_blocked:
                    return self._to_spool([b.body], b.nevents, key, name)
                return self._failed_attempt(b, [b.body], self._bucket_status == 429, key, name)
            if self.spilled_path is not None:
                return True
            r = d.send(key, b.body, b.nevents, self._finish_deadline())
        finally:
            self.inflight = None
        self._account(r)
        if self.spilled_path is not None:  # the ring let it go while the request was out
            return self._after_spill(r, self.spilled_path)
        if r.kind.settled:
            return True
        leftover = r.leftover or [b.body]
        if r.kind is Kind.DEFERRED:
            return self._failed_attempt(b, leftover, True, key, name)
        partial = r.delivered + r.rejected > 0
        if r.kind is Kind.AUTH or partial:
            return self._to_spool(leftover, None, key, name)
        return self._failed_attempt(b, leftover, r.kind is Kind.RATE_LIMITED, key, name)

    # ---- the ring keeps moving while a request is out (a hanging API never stalls log()) ----------
    SPILL_AFTER = 5.0  # seconds a request may be out before the ring is drained to the spool
    SPILL_FILL = 0.9  # ... or SPILL_SOON seconds, once a segment is this full (its producer is at risk)
    SPILL_SOON = 1.0

    def while_request_out(self, started: float) -> None:
        """Called every few ms by the HTTP worker's waiter while a request is out. Once it has been
        out SPILL_AFTER seconds (SPILL_SOON if a segment passes SPILL_FILL), the in-flight batch is copied to
        a spool file of its own and released, and every segment is drained to the spool: the
        producers never wait on the network. If that request is then delivered after all, its
        copy is removed again (see _after_spill)."""
        if self._spilling:
            return
        out = self.clock() - started
        if out < self.SPILL_SOON or (
            out < self.SPILL_AFTER
            and not self._space_pressure()
            and not any(self._occupancy(slot) > self.SPILL_FILL for slot in list(self.segs))
        ):
            return
        self._spilling = True
        try:
            b = self.inflight
            if b is not None and self.spilled_path is None:
                bucket = self.table.bucket(b.bucket)
                if bucket is not None:
                    self.spool.close_all()  # the copy gets a file of its own
                    try:
                        path = self.spool.write(self.settings.api_base, bucket[0], bucket[1], self.fingerprint, b.body)
                    except OSError:
                        return  # the spool cannot take it: the batch stays in the ring
                    self.spool.close_all()
                    self.table.count("spooled", b.nevents)
                    self.spilled_path = path
                    self._commit(b)
            for slot, _, seg_id, _ in list(self.table.slots()):
                if b is not None and slot == b.seg and self.spilled_path is None:
                    continue  # its head batch is the one out
                self._drain_to_spool(slot, seg_id)
            self._last_scan = -1e9  # replay what was spilled as soon as the API answers
        finally:
            self._spilling = False

    def _drain_to_spool(self, slot: int, seg_id: int) -> None:
        """Spool (and release) what waits in one segment, batch by batch."""
        seg = self.segment(slot, seg_id)
        if seg is None:
            return
        while True:
            tail = seg.tail()
            if tail == seg.head():
                return
            b = (
                self.agg.next_batch(seg, tail, self.settings.max_batch_events)
                if self.agg is not None  # aggregate
                else self.encoder.next_batch(0, tail, self.settings.max_batch_events, ring=seg)
            )
            b.seg = slot
            if b.corrupt or b.end == tail:
                return  # left to _pump, which reports it
            bucket = self.table.bucket(b.bucket)
            if b.nevents and (bucket is None or not self._to_spool([b.body], b.nevents, bucket[0], bucket[1])):
                return
            self._commit(b)

    def _after_spill(self, r: Result, path: str) -> bool:
        """The in-flight batch was copied to ``path`` and released while its request was out. If the
        API took it after all, take the copy back (unless a replay already holds it: then it is
        sent twice, the documented at-least-once case); otherwise the copy waits in the spool."""
        if r.kind.settled:
            rf = ReplayFile(path)
            if rf.acquire():
                try:
                    rf.finish()
                finally:
                    rf.release()
        return True  # already released: _commit leaves it alone

    def _failed_attempt(self, b: Batch, leftover, rate_limited: bool, key: str, name: str) -> bool:
        """After a failed attempt (nothing delivered): keep the batch in the ring or spool it.

        While exiting, the batch stays in the ring as long as the exit budget outlasts the wait
        (short backoff, see Delivery.finish_by) and is spooled after; otherwise it is spooled
        after ``max_attempts`` (not counting 429s) or when the ring fills up.
        """
        d = self.delivery
        n = self.attempts.get((b.seg, b.start), 0) + 1
        self.attempts[(b.seg, b.start)] = n
        left = self._exit_budget()
        if left is not None:
            if left > d.wait_time():
                return False
            return self._to_spool(leftover, None, key, name)
        if not rate_limited and (d.outage or n >= d.policy.max_attempts):
            d.enter_outage()
            return self._to_spool(leftover, None, key, name)
        if self._occupancy(b.seg) > 0.5 or self._space_pressure():
            return self._to_spool(leftover, None, key, name)
        return False

    def _space_pressure(self) -> bool:
        """A producer found the ring directory too full to reserve pages since the ring was last
        drained: what waits goes to the spool now (its pages are returned as it is released)."""
        return self.table.counter("space_short") != self._space_seen

    def _finish_deadline(self) -> Optional[float]:
        """The time by which what waits must be delivered: the exit deadline, else the latest
        deadline of a producer waiting in close() (the table's close_by), if still ahead."""
        if self.exit_deadline is not None:
            return self.exit_deadline
        by = self.table.close_by
        return by if by > self.clock() else None

    def _exit_budget(self) -> Optional[float]:
        """Seconds left before the exit deadline (None while not exiting; negative once past),
        keeping the delivery's finish_by deadline in step with it."""
        deadline = self._finish_deadline()
        if self.delivery.deadline != deadline:
            self.delivery.finish_by(deadline)
        return None if deadline is None else deadline - self.clock()

    def _account(self, r: Result) -> None:
        table = self.table
        if r.delivered:
            table.count("sent", r.delivered)
        if r.kind in (Kind.DELIVERED, Kind.REJECTED):
            table.count("batches")
        if r.rejected:
            table.count("rejected", r.rejected)
        self._count_requests()

    def _count_requests(self) -> None:
        """Move the delivery's tallies to the ring: event requests, and retries (bucket creations too)."""
        d = self.delivery
        if d.requests or d.retries:
            self.table.count("requests", d.requests)
            self.table.count("retries", d.retries)
            d.requests = d.retries = 0

    def _to_spool(self, bodies, nevents: Optional[int], key: str, name: str) -> bool:
        """Spool batches. True when the ring may release them: written, or counted as lost.

        A whole batch (``nevents`` given) that cannot be written stays in the ring while the
        sender runs (False), so an unwritable spool costs nothing until the ring itself is full;
        at exit, or for the leftovers of a partly delivered split, it is counted as ``failed``.
        One report per episode of write errors.
        """
        total = 0
        for body in bodies:
            n = nevents if nevents is not None and len(bodies) == 1 else count_events(body)
            try:
                self.spool.write(self.settings.api_base, key, name, self.fingerprint, body)
            except SpoolFull as exc:
                if self._spilling:
                    return False  # a spill only moves events: with the spool full they wait in the ring
                if not self._reported_spool_full:
                    self.report("%s; further events are dropped and counted as dropped['spool_full']" % exc)
                    self._reported_spool_full = True
                self.table.count_drop("spool_full", n)
                continue
            except OSError as exc:
                keep = nevents is not None and self.exit_deadline is None
                if not self._spool_error_reported:
                    self._spool_error_reported = True
                    self.report(
                        "isstreamer: cannot write the spool in %s (%s); %s"
                        % (self.settings.spool_dir, exc, "events wait in the ring" if keep else "%d event(s) lost" % n)
                    )
                if keep:
                    return False
                self.table.count("failed", n)
                continue
            self._spool_error_reported = False
            total += n
        if total:
            self.table.count("spooled", total)
        return True

    # ---- spool -> API -------------------------------------------------------------------------------
    def _replay(self) -> bool:
        """Replay our stream's spool files (the loop shared with ``isstreamer replay``): a short
        turn while live events may wait; when exiting with no producer left, patiently (waiting
        out backoffs, retrying through an outage) up to the exit deadline, so that what an
        outage shorter than close_timeout spooled is delivered before the sender exits."""
        if self.settings.spool_only:
            return False  # an adopted ring of another access key: its spool waits for that key
        d = self.delivery
        patient = self.exit_deadline is not None and not self.live_owners and self._ring_empty()
        now = self.clock()
        if (patient and self._last_scan <= now) or now - self._last_scan >= self.SPOOL_SCAN_EVERY:
            self._last_scan = now
            try:
                check_root(self.settings.spool_dir)
                found = streams(self.settings.spool_dir)
            except FileNotFoundError:
                found = []
            except OSError as exc:
                if not self._spool_error_reported:
                    self._spool_error_reported = True
                    self.report("isstreamer: the spool in %s is not replayed (%s)" % (self.settings.spool_dir, exc))
                found = []
            self._replay_streams = [
                m
                for m in found
                if m.api_base == self.settings.api_base and m.fingerprint == self.fingerprint and pending_files(m.path)
            ]
        self._exit_budget()  # at exit, a pending backoff is shortened first
        if not d.ready() and not patient:
            return False
        if self.spool.open_files:
            # our own spool files are locked while we append to them: unlock them so that they are
            # replayed (in an outage the oldest spooled batch is then the probe)
            self.spool.close_all()
            self.spool.forget_size()
            self._last_scan = -1e9
            return self._replay()
        if not self._replay_streams:
            return False
        limit = self.exit_deadline if self.exit_deadline is not None else self.clock() + self.REPLAY_BUDGET
        if self.clock() >= limit:
            return False

        def respool(m: StreamMeta, body: bytes) -> None:
            self.spool.write(m.api_base, m.bucket_key, m.bucket_name, m.fingerprint, body)
            self.table.count("spooled", count_events(body))

        def on_result(r: Result) -> None:
            self._account(r)
            if r.delivered:
                self.table.count("replayed", r.delivered)

        loop = StreamReplay(
            d,
            respool,
            patient=patient,
            persist=patient,
            on_result=on_result,
            warn=self.report,
            deadline=lambda: self.exit_deadline,
            keep_going=lambda: not self._any_live_owner(),
        )  # a producer joined: back to the ring
        for m in list(self._replay_streams):
            files = pending_files(m.path)
            if not files:
                self._replay_streams.remove(m)
                continue
            if m.bucket_key not in self._replay_buckets:
                if not (loop.bucket(m, until=limit) if patient else self._create_bucket(m.bucket_key, m.bucket_name)):
                    break
                self._replay_buckets.add(m.bucket_key)
            stop = loop.run(m, files, limit)
            if loop.counts.finished:
                self.spool.forget_size()
            if stop is Stop.FAULT:
                # the spool cannot record progress (disk full...): the file is kept; pause replay
                # for a while rather than send its first lines again every turn
                self.report("isstreamer: %s; replay pauses for %gs" % (loop.why, REPLAY_FAULT_PAUSE))
                self._replay_streams = []
                self._last_scan = self.clock() + REPLAY_FAULT_PAUSE - self.SPOOL_SCAN_EVERY
                break
            if stop is not Stop.DONE:
                break
        return bool(loop.counts.batches or loop.counts.finished)

    def _ring_empty(self) -> bool:
        """True when no segment holds an event (everything sent or spooled)."""
        for slot, _, seg_id, _ in list(self.table.slots()):
            seg = self.segment(slot, seg_id)
            if seg is not None and seg.head() != seg.tail():
                return False
        return True


REPLAY_FAULT_PAUSE = 30.0  # seconds without replay after the spool could not record progress
