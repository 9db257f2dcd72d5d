"""Sender-side downsampling: per-key rules folded while the sender drains the ring.

The kernel is ``csrc/aggregate.c`` (an encoder pass that takes the records of keys with a rule
out of the batch and folds them into per-key state); :class:`PyKernel` is its pure-Python twin,
used without the extension, with the same arithmetic (Neumaier-compensated sums, exact
min/max/first/last/count; a float's value is the same to the last bit on both paths).

How the sender uses it (see ``Sender._turn`` / ``Sender._pump``, lines marked ``aggregate``):

* ``next_batch`` replaces the encoder's: records of ruled keys are folded (``Batch.folded``),
  the others are encoded as before. A batch the sender cannot release yet is read again later:
  records before ``folded_to`` (per segment) are then taken without being folded twice.
* ``turn`` (once per sender turn, before the ring is pumped): when a window is due (its end
  passed, plus :attr:`Aggregator.GRACE`) or a flush / exit is pending, every segment is folded
  up to its head first, then the due windows (all of them on flush / exit) are closed; what the
  rules emitted is delivered through ``Sender.handle`` (so: retried, paced, spooled as usual).
* ``before_commit``: while a flush / exit is pending, a batch is released only after what the
  rules emitted is delivered or spooled, so ``flush()`` returning means the windows are out.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Protocol, Tuple

from ..ring import Segment
from ..ring import layout as L
from ..ring.backend import ffi as _ffi, lib as _lib
from ..rules import KIND_CHANGE, KIND_DEADBAND, KIND_WINDOW, STATS, Deadband, OnChange, RuleSet, Window, rule_from_dict
from .ceiling import Ceiling
from .encoder import ENCODE, MIN_BATCH_BYTES, SKIP, STOP, TAKE, Batch, _dumps, encode_batch


MAX_TAKEN = 1 << 16  # records folded per batch: pages go back to the producer at least this often
MAX_KEYS = 1 << 20  # keys beyond this many pass through unchanged (as in the C kernel)
SUFFIX = ("", "_min", "_max", "_last", "_first", "_count", "_sum")
INF = float("inf")
Miss = Optional[Tuple[int, bytes]]


def rule_args(rule: Any) -> Tuple[int, int, float, float, float, float]:
    """(kind, stats mask, seconds, absolute, relative, heartbeat) of a rule, as the kernel takes them."""
    if isinstance(rule, Window):
        mask = sum(1 << STATS.index(s) for s in rule.stats)
        return KIND_WINDOW, mask, rule.seconds, 0.0, 0.0, 0.0
    if isinstance(rule, Deadband):
        return KIND_DEADBAND, 0, 0.0, rule.absolute, rule.relative, rule.heartbeat
    if isinstance(rule, OnChange):
        return KIND_CHANGE, 0, 0.0, 0.0, 0.0, rule.heartbeat
    raise TypeError(rule)


def window_end(epoch: float, seconds: float) -> float:
    """End of the window holding ``epoch``: windows are [k*W, (k+1)*W), as in the C kernel."""
    return (math.floor(epoch / seconds) + 1.0) * seconds


# --------------------------------------------------------------------------- the Python twin


@dataclass
class _Win:
    end: float
    count: int = 0
    sum: float = 0.0
    comp: float = 0.0
    min: float = 0.0
    max: float = 0.0
    first: float = 0.0
    first_ep: float = 0.0
    last: float = 0.0
    last_ep: float = 0.0
    touched: float = 0.0  # the sender's clock at the last event folded in


@dataclass
class _Entry:
    bucket: int
    key: bytes
    rule: int
    wins: List[_Win] = field(default_factory=list)
    have_sent: bool = False
    last_type: int = 0
    last_num: float = 0.0
    last_val: Any = None
    last_ep: float = 0.0


class PyKernel:
    """The aggregation kernel in Python (the fallback's twin of csrc/aggregate.c)."""

    native = False

    def __init__(self, cap: int) -> None:
        self.cap = max(int(cap), MIN_BATCH_BYTES)
        self.rules: List[Tuple[int, int, float, float, float, float]] = []
        self.ents: Dict[Tuple[int, bytes], _Entry] = {}
        self.order: List[_Entry] = []
        self.outs: Dict[int, List[bytes]] = {}
        self._next_due = INF
        self.counts = {"folded": 0, "windows": 0, "emitted": 0, "dropped": 0, "open": 0}

    def add_rule(self, kind: int, mask: int, seconds: float, absolute: float, relative: float, heartbeat: float) -> int:
        """Register a rule; returns its index."""
        self.rules.append((kind, mask, seconds, absolute, relative, heartbeat))
        return len(self.rules) - 1

    def bind(self, bucket: int, key: bytes, rule: int) -> None:
        """Give (bucket, key) a rule (-1: pass through)."""
        e = self.ents.get((bucket, key))
        if e is not None:
            e.rule = rule
        elif len(self.ents) < MAX_KEYS:
            e = _Entry(bucket, key, rule)
            self.ents[(bucket, key)] = e
            self.order.append(e)

    def next_due(self) -> float:
        return self._next_due

    def pending(self, bucket: int) -> int:
        return len(self.outs.get(bucket, ()))

    def buckets(self) -> List[int]:
        return [b for b, v in self.outs.items() if v]

    def take(self, bucket: int, max_events: int) -> Tuple[bytes, int]:
        """Up to ``max_events`` emitted events of ``bucket`` as one JSON array (within the cap)."""
        q = self.outs.get(bucket, [])
        n, used = 0, 2
        while n < len(q) and n < max_events and used + len(q[n]) + 1 <= self.cap:
            used += len(q[n]) + 1
            n += 1
        parts = q[:n]
        del q[:n]
        return b"[" + b",".join(parts) + b"]", len(parts)

    def _emit(self, bucket: int, key: bytes, suffix: str, value: Any, ep: float) -> None:
        k = key.decode("utf-8", "replace") + suffix
        part = _dumps({"key": k, "value": value})
        if math.isfinite(ep) and ep > 0:
            part = part[:-1] + b',"epoch":' + repr(ep).encode("ascii") + b"}"
        self.outs.setdefault(bucket, []).append(part)
        self.counts["emitted"] += 1

    def close(self, cutoff: float) -> int:
        """Close (emit) the windows whose end, and last event folded in (the sender's clock), are
        both <= ``cutoff``; returns how many."""
        if not self._next_due <= cutoff:
            return 0
        closed = 0
        due = INF
        for e in self.order:
            if not e.wins or e.rule < 0:
                continue
            mask = self.rules[e.rule][1]
            keep = []
            for w in sorted(e.wins, key=lambda w: w.end):
                if max(w.end, w.touched) <= cutoff:
                    self._emit_window(e, mask, w)
                    closed += 1
                else:
                    keep.append(w)
                    due = min(due, max(w.end, w.touched))
            e.wins = keep
        self._next_due = due
        self.counts["open"] -= closed
        return closed

    def _emit_window(self, e: _Entry, mask: int, w: _Win) -> None:
        total = w.sum + w.comp
        for i in range(7):
            if not mask & (1 << i):
                continue
            if i == 5:
                self._emit(e.bucket, e.key, SUFFIX[i], w.count, w.end)
                continue
            v = (total / w.count, w.min, w.max, w.last, w.first, 0.0, total)[i]
            if not math.isfinite(v):
                self.counts["dropped"] += 1
                continue
            self._emit(e.bucket, e.key, SUFFIX[i], v, w.end)
        self.counts["windows"] += 1

    def _fold_window(self, e: _Entry, seconds: float, x: float, ep: float, now: float) -> None:
        end = window_end(ep, seconds)
        for w in e.wins:
            if w.end == end:
                w.touched = now
                if x < w.min:
                    w.min = x
                if x > w.max:
                    w.max = x
                if ep < w.first_ep:
                    w.first, w.first_ep = x, ep
                if ep >= w.last_ep:
                    w.last, w.last_ep = x, ep
                break
        else:
            w = _Win(end, 0, 0.0, 0.0, x, x, x, ep, x, ep, now)
            e.wins.append(w)
            if max(end, now) < self._next_due:
                self._next_due = max(end, now)
            self.counts["open"] += 1
        w.count += 1
        s = w.sum
        t = s + x
        if abs(s) >= abs(x):
            w.comp += (s - t) + x
        else:
            w.comp += (x - t) + s
        w.sum = t

    def _filter(
        self, ctx: Dict[str, Any], rtype: int, bucket: int, key: bytes, value: Any, epoch: float, pos: int
    ) -> int:
        pass_ = SKIP if ctx["fold_only"] else ENCODE
        e = self.ents.get((bucket, key))
        if e is None:
            if len(self.ents) >= MAX_KEYS:
                return pass_
            ctx["miss"] = (bucket, key)
            return STOP
        if e.rule < 0:
            return pass_
        if ctx["taken"] >= ctx["max_taken"]:
            return STOP
        ctx["taken"] += 1
        if pos < ctx["fold_from"]:
            return TAKE
        kind, _mask, seconds, absolute, relative, heartbeat = self.rules[e.rule]
        numeric = rtype in (L.T_F64, L.T_I64)
        x = float(value) if numeric else 0.0
        ep = epoch if (math.isfinite(epoch) and epoch > 0.0) else ctx["now"]
        if numeric and kind == KIND_WINDOW:
            self._fold_window(e, seconds, x, ep, ctx["now"])
        else:
            if numeric and kind == KIND_DEADBAND:
                was_num = e.last_type in (L.T_F64, L.T_I64)
                if not e.have_sent or not was_num:
                    send = True
                elif absolute == 0.0 and relative == 0.0:
                    send = x != e.last_num
                else:
                    d = abs(x - e.last_num)
                    send = (absolute > 0.0 and d > absolute) or (relative > 0.0 and d > relative * abs(e.last_num))
            else:
                send = not (
                    e.have_sent and e.last_type == rtype and (rtype in (L.T_TRUE, L.T_FALSE) or e.last_val == value)
                )
            if not send and heartbeat > 0.0 and ep - e.last_ep >= heartbeat:
                send = True
            if send:
                e.have_sent, e.last_type, e.last_num, e.last_val, e.last_ep = True, rtype, x, value, ep
                self._emit(e.bucket, e.key, "", value, epoch)
        self.counts["folded"] += 1
        return TAKE

    def encode(
        self, ring: Segment, start: int, max_events: int, fold_from: int, fold_only: bool, max_taken: int, now: float
    ) -> Tuple[Batch, int, Miss]:
        """The encoder's pass over segment 0 of ``ring`` with the rules' filter (see the C twin)."""
        ctx: Dict[str, Any] = {
            "fold_only": fold_only,
            "fold_from": fold_from,
            "max_taken": max_taken,
            "taken": 0,
            "now": now,
            "miss": None,
        }

        def keep(rtype: int, bucket: int, key: bytes, value: Any, epoch: float, pos: int) -> int:
            return self._filter(ctx, rtype, bucket, key, value, epoch, pos)

        b = encode_batch(ring, 0, start, max_events, self.cap, keep)
        return b, ctx["taken"], ctx["miss"]


# --------------------------------------------------------------------------- the C kernel


class NativeKernel:
    """csrc/aggregate.c through cffi: the same interface as :class:`PyKernel`."""

    native = True

    def __init__(self, cap: int) -> None:
        assert _ffi is not None and _lib is not None
        self.cap = max(int(cap), MIN_BATCH_BYTES)
        self.a = _ffi.gc(_lib.iss_agg_new(), _lib.iss_agg_free)
        if self.a == _ffi.NULL:
            raise MemoryError("isstreamer: cannot allocate the aggregation kernel")
        self._out = _ffi.new("char[]", self.cap)
        self._info = _ffi.new("iss_batch *")
        self._ai = _ffi.new("iss_agg_info *")
        self._n = _ffi.new("uint32_t *")
        self._c = _ffi.new("iss_agg_counters *")

    def add_rule(self, kind: int, mask: int, seconds: float, absolute: float, relative: float, heartbeat: float) -> int:
        r = _lib.iss_agg_add_rule(self.a, kind, mask, seconds, absolute, relative, heartbeat)
        if r < 0:
            raise ValueError("isstreamer: the aggregation kernel refused a rule")
        return r

    def bind(self, bucket: int, key: bytes, rule: int) -> None:
        _lib.iss_agg_bind(self.a, bucket, key, len(key), rule)

    def next_due(self) -> float:
        return _lib.iss_agg_next_due(self.a)

    def pending(self, bucket: int) -> int:
        return _lib.iss_agg_pending(self.a, bucket)

    def buckets(self) -> List[int]:
        return [b for b in range(_lib.iss_agg_nbuckets(self.a)) if _lib.iss_agg_pending(self.a, b)]

    def take(self, bucket: int, max_events: int) -> Tuple[bytes, int]:
        n = _lib.iss_agg_take(self.a, bucket, max_events, self._out, self.cap, self._n)
        if n < 0:
            raise ValueError("isstreamer: an emitted event does not fit a batch")
        return _ffi.buffer(self._out, n)[:], self._n[0]

    def close(self, cutoff: float) -> int:
        return _lib.iss_agg_close(self.a, cutoff)

    @property
    def counts(self) -> Dict[str, int]:
        _lib.iss_agg_counts(self.a, self._c)
        c = self._c
        return {"folded": c.folded, "windows": c.windows, "emitted": c.emitted, "dropped": c.dropped, "open": c.open}

    def encode(
        self, ring: Segment, start: int, max_events: int, fold_from: int, fold_only: bool, max_taken: int, now: float
    ) -> Tuple[Batch, int, Miss]:
        n = _lib.iss_agg_encode_batch(
            self.a,
            ring.ptr,
            ring.size,
            0,
            start,
            max_events,
            self._out,
            self.cap,
            self._info,
            fold_from,
            1 if fold_only else 0,
            max_taken,
            now,
            self._ai,
        )
        if n < 0:
            raise ValueError("isstreamer: encoder refused segment 0 (code %d)" % n)
        i, ai = self._info, self._ai
        b = Batch(_ffi.buffer(self._out, n)[:], 0, start, i.end, i.nevents, i.bucket, bool(i.corrupt), i.skipped)
        miss = (ai.miss_bucket, _ffi.buffer(ai.miss_key, ai.miss_keylen)[:]) if ai.miss else None
        return b, ai.taken, miss


# --------------------------------------------------------------------------- the sender's side


class Host(Protocol):
    """What the aggregator asks of its sender (and nothing else: tests give it a fake one)."""

    def segments(self) -> List[Segment]:
        """The mapped segments registered now."""

    def flush_seq(self) -> int:
        """The table's flush request number."""

    def exiting(self) -> bool:
        """True once the sender is finishing (every window closes)."""

    def deliver(self, batch: Batch, force: bool) -> bool:
        """Send, spool or reject one batch of emitted events: True when it is settled."""

    def count(self, name: str, n: int = 1) -> None:
        """Add to a table counter (stats())."""

    def report(self, message: str) -> None:
        """A loud message."""

    def held_backlog(self) -> int:
        """Events waiting in the ring while the API's rate limit holds sending back (else 0)."""


class Aggregator:
    """The rules of one sender: folds records while it drains, closes and delivers windows."""

    GRACE = 0.25  # seconds past a window's end before it closes (a producer's time-to-publish)
    TICK = 0.1  # seconds between the checks of _tick while the sender drains without a pause
    COUNTERS = (("folded", "folded"), ("windows", "windows"), ("emitted", "aggregated"))

    def __init__(
        self,
        host: Host,
        rules: List[List[Any]],
        max_batch_bytes: int,
        max_batch_events: int,
        flush_interval: float,
        native: bool,
        ceiling: Optional[Dict[str, Any]] = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.host = host
        self.clock = clock
        self.wall = wall
        self.rules = RuleSet(rules)
        use_c = bool(native and _lib is not None)
        self.kernel: Any = NativeKernel(max_batch_bytes) if use_c else PyKernel(max_batch_bytes)
        for r in self.rules.rules:
            self.kernel.add_rule(*rule_args(r))
        c = ceiling or {}
        self.ceiling: Optional[Ceiling] = None
        if c.get("max_events_per_second") or c.get("monthly_budget") or c.get("fallback"):
            self.ceiling = Ceiling(
                c.get("max_events_per_second", 0.0),
                c.get("monthly_budget", 0),
                max_batch_events,
                clock=clock,
                wall=wall,
            )
        fb = c.get("fallback")
        self.fallback_rule = rule_from_dict(fb) if fb else None
        self.fallback = self.kernel.add_rule(*rule_args(self.fallback_rule)) if fb else -1  # kernel index
        self.fallback_on = False
        self.unfit_reported = False
        self.passthrough: set = set()  # (bucket, key) bound to no rule: the fallback's, once on
        # the flush_seq for which every window was closed: 0, the value of a new ring (the sender's
        # first turn is forced, but closing then would only split the first windows)
        self._closed_for = 0
        self.max_events = max(1, int(max_batch_events))
        self.flush_interval = flush_interval
        self.folded_to: Dict[str, int] = {}  # segment file -> position folded up to
        self.held: List[Batch] = []  # emitted batches the sender could not hand over yet
        self._since: Optional[float] = None  # when output started waiting
        self._counted = {name: 0 for name, _ in self.COUNTERS}
        self._next_tick = 0.0

    @classmethod
    def for_settings(
        cls, s: Any, host: Host, clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time
    ) -> Optional["Aggregator"]:
        """An aggregator for these sender settings, or None when they have no rule."""
        rules = getattr(s, "rules", None)
        ceiling = getattr(s, "ceiling", None)
        if not rules and not ceiling:
            return None
        return cls(
            host,
            rules or [],
            s.max_batch_bytes,
            s.max_batch_events,
            s.flush_interval,
            s.native,
            ceiling,
            clock=clock,
            wall=wall,
        )

    def _bind(self, miss: Tuple[int, bytes]) -> None:
        bucket, kb = miss
        idx = self.rules.lookup(kb.decode("utf-8", "replace"))
        if idx < 0 and self.fallback_on:
            idx = self.fallback
        elif idx < 0 and len(self.passthrough) < MAX_KEYS:
            self.passthrough.add((bucket, kb))
        self.kernel.bind(bucket, kb, idx)

    def _check_ceiling(self) -> None:
        """Report once when the stream does not fit; then apply the fallback rule (if any) to
        every key without a rule, instead of letting a backlog grow."""
        if self.ceiling is None or self.unfit_reported:
            return
        why = self.ceiling.unfit(self.host.held_backlog())
        if why is None:
            return
        self.unfit_reported = True
        host = self.host
        host.count("unfit")
        if self.fallback >= 0:
            self.fallback_on = True
            for bucket, kb in self.passthrough:
                self.kernel.bind(bucket, kb, self.fallback)
            self.passthrough.clear()
            host.count("fallback")
            host.report(
                "isstreamer: the stream does not fit (%s); from now on keys without a rule are sent as %r"
                % (why, self.fallback_rule)
            )
        else:
            host.report(
                "isstreamer: the stream does not fit (%s); a backlog will grow (spooled when the ring "
                "fills): set rules=, or fallback= to downsample keys without a rule" % why
            )

    # ---- the ring ----------------------------------------------------------------------------
    def next_batch(self, seg: Segment, tail: int, max_events: int) -> Batch:
        """The encoder's next batch of ``seg`` from ``tail``, ruled records folded (``.folded``)."""
        path = seg.path
        while True:
            ft = self.folded_to.get(path, 0)
            b, taken, miss = self.kernel.encode(seg, tail, max_events, max(ft, tail), False, MAX_TAKEN, self.wall())
            if b.end > ft:
                self.folded_to[path] = b.end
            if miss is not None:
                self._bind(miss)
                if b.end == tail and not b.nevents and not b.corrupt:
                    continue  # nothing done yet: again, with the key known
            b.folded = taken
            if self.ceiling is not None:
                self.ceiling.observe(b.nevents)
            self._tick()
            return b

    def _tick(self) -> None:
        """While the sender drains without a pause (a producer as fast as it), every TICK: what
        ``turn`` would do between turns (close the due windows, check the ceiling)."""
        now = self.clock()
        if now < self._next_tick:
            return
        self._next_tick = now + self.TICK
        cutoff = self.wall() - self.GRACE
        if self.kernel.next_due() <= cutoff:
            self.fold_all()
            self.kernel.close(cutoff)
        self.count()
        self._check_ceiling()

    def fold_all(self) -> None:
        """Fold every segment's ruled records up to its head (nothing is released)."""
        now = self.wall()
        for seg in self.host.segments():
            head = seg.head()
            pos = max(seg.tail(), self.folded_to.get(seg.path, 0))
            while pos < head:
                b, _taken, miss = self.kernel.encode(seg, pos, 1, pos, True, 1 << 31, now)
                if miss is not None:
                    self._bind(miss)
                if b.end > pos:
                    self.folded_to[seg.path] = pos = b.end
                elif miss is None:
                    break
                if b.corrupt:
                    break

    # ---- closing and delivering ---------------------------------------------------------------
    def turn(self, force: bool) -> bool:
        """Once per sender turn: close the due windows (every one when ``force``: a flush or exit
        is pending), after folding every segment up to its head; deliver what is due."""
        worked = False
        host = self.host
        self._next_tick = self.clock() + self.TICK
        # every window closes once per flush request (a flush that takes several turns must not
        # split the windows opened meanwhile) and at every turn of the exit
        seq = host.flush_seq()
        close_all = host.exiting() or (force and seq != self._closed_for)
        if close_all:
            self._closed_for = seq
        cutoff = INF if close_all else self.wall() - self.GRACE
        if self.kernel.next_due() <= cutoff:
            self.fold_all()
            worked = self.kernel.close(cutoff) > 0
        worked |= self.deliver(-1, force)[0]
        self.count()
        self._check_ceiling()
        if len(self.folded_to) > 4096:  # forget segments that are gone
            live = {seg.path for seg in host.segments()}
            self.folded_to = {p: v for p, v in self.folded_to.items() if p in live}
        return worked

    def deliver(self, slot: int, force: bool) -> Tuple[bool, bool]:
        """Hand what the rules emitted to the sender when due. (did work, nothing left)."""
        pending = self.held or self.kernel.buckets()
        if not pending:
            self._since = None
            return False, True
        now = self.clock()
        if self._since is None:
            self._since = now
        if not (
            force
            or now - self._since >= self.flush_interval
            or self.held
            or any(self.kernel.pending(b) >= self.max_events for b in self.kernel.buckets())
        ):
            return False, False
        worked = False
        while True:
            if not self.held:
                buckets = self.kernel.buckets()
                if not buckets:
                    break
                body, n = self.kernel.take(buckets[0], self.max_events)
                self.held.append(Batch(body, slot, -1, -1, n, buckets[0], False, 0))
            b = self.held[0]
            b.seg = slot
            if not self.host.deliver(b, force):
                return worked, False
            self.held.pop(0)
            worked = True
        self._since = None
        return worked, True

    def before_commit(self, slot: int, force: bool) -> bool:
        """Before a batch is released: what the rules emitted goes out when due (so it also flows
        while the sender drains without a pause); while a flush or exit is pending, True only
        once all of it is handed over."""
        done = self.deliver(slot, force)[1]
        return done or not force

    def due_in(self) -> float:
        """Seconds until a window is due or the output waiting is due for sending (the idle sleep)."""
        t = self.kernel.next_due() + self.GRACE - self.wall()
        if self.held or self.kernel.buckets():
            now = self.clock()
            since = self._since if self._since is not None else now
            t = min(t, since + self.flush_interval - now)
        return max(0.0, t)

    def settled(self, exiting: bool) -> bool:
        """Nothing waits to be sent (and, when ``exiting``, no window is open). A flush needs no
        more: ``turn`` closed every window after folding every segment up to its head."""
        return not self.held and not self.kernel.buckets() and not (exiting and self.kernel.counts["open"])

    def count(self) -> None:
        """Move the kernel's tallies to the ring's header counters (stats())."""
        c = self.kernel.counts
        for name, counter in self.COUNTERS:
            d = c[name] - self._counted[name]
            if d:
                self.host.count(counter, d)
                self._counted[name] = c[name]
                if name == "emitted" and self.ceiling is not None:
                    self.ceiling.observe(d)
