"""Sender-side downsampling: per-key rules folded while the sender drains the ring.

The kernel is ``csrc/aggregate.c`` (an encoder pass that takes the records of keys with a rule
out of the batch and folds them into per-key state); :class:`PyKernel` is its pure-Python twin,
used without the extension, with the same arithmetic and the same order of what it emits
(integers summed exactly, floats with a Neumaier-compensated sum scaled by 2^-64 once it would
overflow; exact min/max/first/last/count, integers kept as integers; a float's value is the same
to the last bit on both paths). Open windows are indexed by (key, end) and kept in a heap by
due time: folding is O(1) expected per record, opening and closing a window O(log n).

How the sender uses it (see ``Sender._turn`` / ``Sender._pump``, lines marked ``aggregate``):

* ``next_batch`` replaces the encoder's: records of ruled keys are folded (``Batch.folded``),
  the others are encoded as before. A batch the sender cannot release yet is read again later:
  records before ``folded_to`` (per segment) are then taken without being folded twice.
* ``turn`` (once per sender turn, before the ring is pumped): when a window is due (its end
  passed, plus :attr:`Aggregator.GRACE`), when a producer asks for a cut (``flush(timeout)``)
  or the sender exits, every segment is folded up to its head first, then the due windows
  (every one on a cut or at exit) are closed; what the rules emitted is delivered through
  ``Sender.handle`` (so: retried, paced, spooled as usual). Nothing else closes a window: a
  plain ``flush()`` or a process's ``close()`` / exit hands its events over and leaves the
  windows the other processes fold into open.
* ``before_commit``: while a flush / exit is pending, a batch is released only after what the
  rules emitted is delivered or spooled.
"""

from __future__ import annotations

import heapq
import math
import time
from typing import Any, Callable, Dict, List, Optional, Protocol, Tuple

from ..ring import Segment
from ..ring import layout as L
from ..ring.backend import ffi as _ffi, lib as _lib
from ..rules import (
    KIND_CHANGE,
    KIND_DEADBAND,
    KIND_WINDOW,
    STATS,
    Deadband,
    OnChange,
    RuleSet,
    Window,
    rule_from_dict,
    stat_key,
)
from .ceiling import Ceiling
from .encoder import ENCODE, MIN_BATCH_BYTES, SKIP, STOP, TAKE, Batch, _dumps, encode_batch


MAX_TAKEN = 1 << 16  # records folded per batch: pages go back to the producer at least this often
MAX_KEYS = 1 << 20  # keys beyond this many pass through unchanged (as in the C kernel)
MAX_WINDOWS = 1 << 24  # open windows beyond this many: their events pass through (as in the C kernel)
SUFFIX = ("", "_min", "_max", "_last", "_first", "_count", "_sum")
ARITHMETIC = 1 | 64  # the mean and the sum (bits of STATS)
SCALE_DOWN = 2.0**-64  # a float sum that would overflow is kept scaled by this (exact: a power of two)
SCALE_UP = 2.0**64
INF = float("inf")
NUMBERS = (L.T_F64, L.T_I64)
Miss = Optional[Tuple[int, bytes]]
Overflow = Tuple[int, bytes, int, float]  # (bucket, key, statistic index, window end)


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


def moved(value: Any, last: Any, absolute: float, relative: float) -> bool:
    """Deadband: has ``value`` moved past the band around ``last`` (the last number sent)? Python
    compares an int with an int or a float exactly, and takes the distance of an int and a float
    in doubles: as the C kernel does."""
    if absolute == 0.0 and relative == 0.0:
        return value != last
    d = abs(value - last)
    return (absolute > 0.0 and d > absolute) or (relative > 0.0 and d > relative * abs(last))


# --------------------------------------------------------------------------- the Python twin


def sum_step(s: float, c: float, scaled: bool, x: float) -> Tuple[float, float, bool]:
    """One step of a Neumaier-compensated sum of finite floats (csrc/aggregate.c: sum_add): the
    sum is ``s + c``, times 2^64 once ``scaled`` (from the first term that would overflow it)."""
    y = x * SCALE_DOWN if scaled else x
    t = s + y
    if (t == INF or t == -INF) and not scaled:
        return sum_step(s * SCALE_DOWN, c * SCALE_DOWN, True, x)
    if abs(s) >= abs(y):
        c += (s - t) + y
    else:
        c += (y - t) + s
    return t, c, scaled


class _Win:
    """One open window (csrc/aggregate.c: agg_win): min/max/first/last are ints while it holds
    only ints, floats from its first float on."""

    __slots__ = (
        "end",
        "ent",
        "stats",
        "touched",
        "count",
        "s",
        "c",
        "scaled",
        "isum",
        "ints",
        "floats",
        "min",
        "max",
        "first",
        "first_ep",
        "last",
        "last_ep",
    )

    def __init__(self, end: float, ent: int, stats: int, now: float) -> None:
        self.end, self.ent, self.stats, self.touched = end, ent, stats, now
        self.count = 0
        self.s, self.c, self.scaled = 0.0, 0.0, False  # the floats (see sum_step)
        self.isum = 0  # the ints, summed exactly
        self.ints = self.floats = False
        self.min = self.max = self.first = self.last = 0
        self.first_ep = self.last_ep = 0.0

    def add(self, is_int: bool, value: Any, ep: float) -> None:
        """Fold one value (an int when ``is_int``, else a float) of epoch ``ep``."""
        if not self.count:
            self.min = self.max = self.first = self.last = value
            self.first_ep = self.last_ep = ep
        else:
            if is_int:
                x = float(value) if self.floats else value
            else:
                x = value
                if not self.floats:  # the first float of a window of ints: it sends floats
                    self.min, self.max = float(self.min), float(self.max)
                    self.first, self.last = float(self.first), float(self.last)
            if x < self.min:
                self.min = x
            if x > self.max:
                self.max = x
            if ep < self.first_ep:
                self.first, self.first_ep = x, ep
            if ep >= self.last_ep:
                self.last, self.last_ep = x, ep
        self.count += 1
        if is_int:
            self.isum += value
            self.ints = True
            return
        self.floats = True
        s = self.s
        t = s + value
        if self.scaled or t == INF or t == -INF:
            self.s, self.c, self.scaled = sum_step(s, self.c, self.scaled, value)
        else:  # sum_step's unscaled case, inline: the hot path
            self.c += (s - t) + value if abs(s) >= abs(value) else (value - t) + s
            self.s = t

    def total(self) -> Tuple[float, bool]:
        """The sum of its values as (t, scaled): the sum is t, times 2^64 when scaled."""
        s, c, scaled = self.s, self.c, self.scaled
        if self.ints:
            s, c, scaled = sum_step(s, c, scaled, float(self.isum))  # correctly rounded, as C's 128-bit sum
        t = s + c
        if not scaled and (t == INF or t == -INF):
            return s * SCALE_DOWN + c * SCALE_DOWN, True
        return t, scaled

    def due(self) -> float:
        """Due once its end has passed and no event came for it since (the later of the two)."""
        return self.end if self.end > self.touched else self.touched


class _Entry:
    """A key bound to a rule (-1: none) and its state."""

    __slots__ = ("bucket", "key", "rule", "index", "wins", "cur", "have_sent", "last_type", "last_val", "last_ep")

    def __init__(self, bucket: int, key: bytes, rule: int, index: int) -> None:
        self.bucket, self.key, self.rule, self.index = bucket, key, rule, index
        self.wins: Dict[float, _Win] = {}  # open windows by end
        self.cur: Optional[_Win] = None  # the window folded into last
        self.have_sent = False
        self.last_type = 0
        self.last_val: Any = None
        self.last_ep = 0.0


class PyKernel:
    """The aggregation kernel in Python (the fallback's twin of csrc/aggregate.c)."""

    native = False

    def __init__(self, cap: int) -> None:
        self.cap = max(int(cap), MIN_BATCH_BYTES)
        self.rules: List[Tuple[int, int, float, float, float, float]] = []
        self.ents: Dict[Tuple[int, bytes], _Entry] = {}
        self.order: List[_Entry] = []
        self.outs: Dict[int, List[bytes]] = {}
        self.heap: List[Tuple[float, float, int]] = []  # (due, end, key index): every open window once
        self.counts = {"folded": 0, "windows": 0, "emitted": 0, "overflow": 0, "no_memory": 0, "open": 0}
        self._overflow: Optional[Overflow] = None

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
            e = _Entry(bucket, key, rule, len(self.order))
            self.ents[(bucket, key)] = e
            self.order.append(e)

    def next_due(self) -> float:
        """No window is due before this (a window folded into since it opened may be due later)."""
        return self.heap[0][0] if self.heap else INF

    def pending(self, bucket: int) -> int:
        """Events emitted for ``bucket`` and not taken yet."""
        return len(self.outs.get(bucket, ()))

    def buckets(self) -> List[int]:
        """The buckets with emitted events waiting."""
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

    def last_overflow(self) -> Optional[Overflow]:
        """The last statistic counted in ``overflow`` since the last call (else None)."""
        o, self._overflow = self._overflow, None
        return o

    def _emit(self, bucket: int, key: bytes, suffix: str, value: Any, ep: float) -> None:
        k = key.decode("utf-8", "replace") + suffix
        part = _dumps({"key": k, "value": value})
        if math.isfinite(ep) and ep > 0:
            part = part[:-1] + b',"epoch":' + repr(ep).encode("ascii") + b"}"
        self.outs.setdefault(bucket, []).append(part)
        self.counts["emitted"] += 1

    def close(self, cutoff: float) -> int:
        """Close (emit) the windows whose end, and last event folded in (the sender's clock), are
        both <= ``cutoff``, in order of end (then of key binding); returns how many."""
        heap = self.heap
        if not heap or not heap[0][0] <= cutoff:
            return 0
        order = self.order
        closing = []
        while heap and heap[0][0] <= cutoff:  # a window folded into since it was pushed: pushed back
            _, end, ent = heapq.heappop(heap)
            due = order[ent].wins[end].due()
            if due <= cutoff:
                closing.append((end, ent))
            else:
                heapq.heappush(heap, (due, end, ent))
        closing.sort()
        for end, ent in closing:
            e = order[ent]
            w = e.wins.pop(end)
            if e.cur is w:
                e.cur = None
            self._emit_window(e, w)
        self.counts["open"] -= len(closing)
        return len(closing)

    def _emit_window(self, e: _Entry, w: _Win) -> None:
        total, scaled = w.total() if w.stats & ARITHMETIC else (0.0, False)
        for i in range(7):
            if not w.stats & (1 << i):
                continue
            if 1 <= i <= 4:
                self._emit(e.bucket, e.key, SUFFIX[i], (w.min, w.max, w.last, w.first)[i - 1], w.end)
                continue
            if i == 5:
                self._emit(e.bucket, e.key, SUFFIX[i], w.count, w.end)
                continue
            v = total / w.count if i == 0 else total
            if scaled:
                v *= SCALE_UP
            if not math.isfinite(v):  # not representable
                self.counts["overflow"] += 1
                self._overflow = (e.bucket, e.key, i, w.end)
                continue
            self._emit(e.bucket, e.key, SUFFIX[i], v, w.end)
        self.counts["windows"] += 1

    def _fold_window(
        self, e: _Entry, mask: int, seconds: float, is_int: bool, value: Any, ep: float, now: float
    ) -> bool:
        """Fold a value into its window (the key's last one first, else by end); False when no
        window can be opened (MAX_WINDOWS: the record passes through, as in the C kernel)."""
        q = ep / seconds  # windows are [k*W, (k+1)*W), as in the C kernel
        end = (math.floor(q) + 1.0) * seconds if q != INF else INF
        w = e.cur
        if w is None or w.end != end:
            w = e.wins.get(end)
            if w is None:
                if self.counts["open"] >= MAX_WINDOWS:
                    return False
                w = e.wins[end] = _Win(end, e.index, mask, now)
                heapq.heappush(self.heap, (w.due(), end, e.index))
                self.counts["open"] += 1
            e.cur = w
        w.touched = now
        w.add(is_int, value, ep)
        return True

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
        kind, mask, seconds, absolute, relative, heartbeat = self.rules[e.rule]
        is_int = rtype == L.T_I64
        numeric = is_int or rtype == L.T_F64
        ep = epoch if (math.isfinite(epoch) and epoch > 0.0) else ctx["now"]
        if numeric and kind == KIND_WINDOW:
            if not self._fold_window(e, mask, seconds, is_int, value, ep, ctx["now"]):
                ctx["taken"] -= 1
                return pass_
        else:
            if numeric and kind == KIND_DEADBAND:
                send = not e.have_sent or e.last_type not in NUMBERS or moved(value, e.last_val, absolute, relative)
            else:
                send = not (
                    e.have_sent and e.last_type == rtype and (rtype in (L.T_TRUE, L.T_FALSE) or e.last_val == value)
                )
            if not send and heartbeat > 0.0 and ep - e.last_ep >= heartbeat:
                send = True
            if send:
                e.have_sent, e.last_type, e.last_val, e.last_ep = True, rtype, value, ep
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
        self._ovf = _ffi.new("iss_agg_overflow *")

    def add_rule(self, kind: int, mask: int, seconds: float, absolute: float, relative: float, heartbeat: float) -> int:
        """Register a rule; returns its index."""
        r = _lib.iss_agg_add_rule(self.a, kind, mask, seconds, absolute, relative, heartbeat)
        if r < 0:
            raise ValueError("isstreamer: the aggregation kernel refused a rule")
        return r

    def bind(self, bucket: int, key: bytes, rule: int) -> None:
        """Give (bucket, key) a rule (-1: pass through)."""
        _lib.iss_agg_bind(self.a, bucket, key, len(key), rule)

    def next_due(self) -> float:
        """No window is due before this (a window folded into since it opened may be due later)."""
        return _lib.iss_agg_next_due(self.a)

    def pending(self, bucket: int) -> int:
        """Events emitted for ``bucket`` and not taken yet."""
        return _lib.iss_agg_pending(self.a, bucket)

    def buckets(self) -> List[int]:
        """The buckets with emitted events waiting."""
        return [b for b in range(_lib.iss_agg_nbuckets(self.a)) if _lib.iss_agg_pending(self.a, b)]

    def last_overflow(self) -> Optional[Overflow]:
        """The last statistic counted in ``overflow`` since the last call (else None)."""
        o = self._ovf
        if not _lib.iss_agg_last_overflow(self.a, o):
            return None
        return o.bucket, _ffi.buffer(o.key, o.keylen)[:], o.stat, o.end

    def take(self, bucket: int, max_events: int) -> Tuple[bytes, int]:
        """Up to ``max_events`` emitted events of ``bucket`` as one JSON array (within the cap)."""
        n = _lib.iss_agg_take(self.a, bucket, max_events, self._out, self.cap, self._n)
        if n < 0:
            raise ValueError("isstreamer: an emitted event does not fit a batch")
        return _ffi.buffer(self._out, n)[:], self._n[0]

    def close(self, cutoff: float) -> int:
        """Close (emit) the windows due by ``cutoff`` (see iss_agg_close); returns how many."""
        return _lib.iss_agg_close(self.a, cutoff)

    @property
    def counts(self) -> Dict[str, int]:
        """The kernel's tallies (see iss_agg_counters)."""
        _lib.iss_agg_counts(self.a, self._c)
        c = self._c
        return {
            "folded": c.folded,
            "windows": c.windows,
            "emitted": c.emitted,
            "overflow": c.overflow,
            "no_memory": c.no_memory,
            "open": c.open,
        }

    def encode(
        self, ring: Segment, start: int, max_events: int, fold_from: int, fold_only: bool, max_taken: int, now: float
    ) -> Tuple[Batch, int, Miss]:
        """The encoder's pass over segment 0 of ``ring`` with the rules' filter (iss_agg_encode_batch)."""
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

    def cut_seq(self) -> int:
        """The table's cut request number (``flush(timeout)``: every open window closes now)."""

    def exiting(self) -> bool:
        """True once the sender is finishing (every window closes)."""

    def deliver(self, batch: Batch, force: bool) -> bool:
        """Send, spool or reject one batch of emitted events: True when it is settled."""

    def count(self, name: str, n: int = 1) -> None:
        """Add to a table counter (stats())."""

    def count_drop(self, reason: str, n: int = 1) -> None:
        """Count events dropped, by reason (stats()["dropped"])."""

    def report(self, message: str) -> None:
        """A loud message."""

    def held_backlog(self) -> int:
        """Events waiting in the ring while the API's rate limit holds sending back (else 0)."""


class Aggregator:
    """The rules of one sender: folds records while it drains, closes and delivers windows."""

    GRACE = 0.25  # seconds past a window's end before it closes (a producer's time-to-publish)
    TICK = 0.1  # seconds between the checks of _tick while the sender drains without a pause
    COUNTERS = (("folded", "folded"), ("windows", "windows"), ("emitted", "aggregated"))
    DROPS = ("overflow", "no_memory")  # the kernel's drops: reasons of stats()["dropped"]

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
        debug_level: int = 0,
    ) -> None:
        self.host = host
        self.debug_level = debug_level
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
        # the cut request served last: 0, a new ring's (a sender started on a ring where a cut was
        # ever asked for serves it at once: a producer may be waiting for it)
        self._cut_for = 0
        self.max_events = max(1, int(max_batch_events))
        self.flush_interval = flush_interval
        self.folded_to: Dict[str, int] = {}  # segment file -> position folded up to
        self.held: List[Batch] = []  # emitted batches the sender could not hand over yet
        self._since: Optional[float] = None  # when output started waiting
        self._counted = {name: 0 for name, _ in self.COUNTERS}
        self._counted.update((name, 0) for name in self.DROPS)
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
            debug_level=s.debug_level,
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
        """Once per sender turn: close the due windows (every one on a cut request or at exit),
        after folding every segment up to its head; deliver what is due (all of it when
        ``force``: a flush or exit is pending)."""
        worked = False
        host = self.host
        self._next_tick = self.clock() + self.TICK
        # every window closes once per cut request (a cut that takes several turns must not split
        # the windows opened meanwhile) and at every turn of the exit; nothing else closes one early
        cut = host.cut_seq()
        close_all = host.exiting() or cut != self._cut_for
        if close_all:
            self._cut_for = cut
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
        """Move the kernel's tallies to the ring's header counters and its drops to the ring's
        drop counters (stats()); at debug_level >= 2 an overflow is also reported."""
        c = self.kernel.counts
        host = self.host
        for name, counter in self.COUNTERS:
            d = c[name] - self._counted[name]
            if d:
                host.count(counter, d)
                self._counted[name] = c[name]
                if name == "emitted" and self.ceiling is not None:
                    self.ceiling.observe(d)
        for name in self.DROPS:
            d = c[name] - self._counted[name]
            if d:
                host.count_drop(name, d)
                self._counted[name] = c[name]
                self._report_drop(name, d)

    def _report_drop(self, reason: str, n: int) -> None:
        """At debug_level >= 2, say what the kernel could not send."""
        if self.debug_level < 2:
            return
        if reason == "overflow":
            last = self.kernel.last_overflow()
            what = "window statistic(s)"
            if last is not None:
                _bucket, key, stat, end = last
                what += ", the last %s of the window ending at %r" % (
                    stat_key(key.decode("utf-8", "replace"), STATS[stat]),
                    end,
                )
            why = "not representable as a float (beyond 1.8e308)"
        else:
            what, why = "event(s) emitted by the rules", "no memory to keep them until they are sent"
        self.host.report("isstreamer: %d %s not sent: %s; counted in stats()['dropped'][%r]" % (n, what, why, reason))
