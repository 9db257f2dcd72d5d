"""``isstreamer replay``: resubmit spooled events to the events API.

PATH is a spool directory (every stream in it), one stream directory (``<spool>/<stream id>``
with its ``meta.json``) or one ``.jsonl`` file of a stream. Only the streams whose recorded
access-key fingerprint matches the access key given are replayed; the others are reported and
left alone. Each stream goes to the API base recorded in its ``meta.json`` unless one is given.

Every line is sent with the sender's own delivery policy (:class:`~isstreamer.delivery.Delivery`):
the stream's bucket is created first; 5xx and connection errors are retried with backoff, and
``max_attempts`` failures in a row stop the run for that API base; 429 waits for Retry-After;
413/400 split the batch and write the refused events to ``<spool>/rejected.jsonl``;
401/402/403 stop the run for that API base. Progress is kept in each file's ``.pos`` (a run may
be interrupted and resumed without sending a line twice) and a fully delivered file is deleted,
exactly as the sender does. The rest of a batch whose split was interrupted is written back to
the stream as a new spool file. Files locked by a running sender are skipped: it replays them.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

import orjson

from .delivery import AUTH, DELIVERED, REJECTED, Delivery, Policy, retry_after_seconds
from .spool import (ReplayFile, SpoolWriter, StreamMeta, key_fingerprint, pending_files, read_meta,
                    streams)
from .transport import Transport

log = logging.getLogger("isstreamer")

REJECTED_FILE = "rejected.jsonl"


class ReplayError(ValueError):
    """PATH is not a spool directory, stream directory or spool file."""


@dataclass
class Target:
    """One stream to replay and the files of it that were asked for."""

    meta: StreamMeta
    files: List[str]


@dataclass
class ReplaySummary:
    """What a replay run did."""

    files: int = 0  # spool files taken (replayed fully or in part)
    finished: int = 0  # of which fully delivered and deleted
    batches: int = 0  # spool lines settled (delivered, or refused events written to rejected.jsonl)
    delivered: int = 0  # events the API accepted
    rejected: int = 0  # events the API refused (in rejected.jsonl)
    left: int = 0  # events still spooled in the streams replayed
    busy: int = 0  # files skipped: a running sender holds them
    torn: int = 0  # torn or unreadable lines skipped
    other_streams: int = 0  # streams of another access key, not touched
    other_events: int = 0
    stopped: List[str] = field(default_factory=list)  # why some streams were not (fully) replayed
    rejected_path: str = ""

    def line(self) -> str:
        """One-line summary."""
        text = ("%d file%s, %d batch%s, %d event%s delivered, %d rejected, %d left"
                % (self.files, _s(self.files), self.batches, "" if self.batches == 1 else "es",
                   self.delivered, _s(self.delivered), self.rejected, self.left))
        if self.busy:
            text += ", %d file%s in use by a running sender" % (self.busy, _s(self.busy))
        return text


def _s(n: int) -> str:
    return "" if n == 1 else "s"


def count_events(body: bytes) -> int:
    """Events in one spool line (a JSON array)."""
    try:
        v = orjson.loads(body)
    except ValueError:
        return 0
    return len(v) if isinstance(v, list) else 1


def pending_events(path: str) -> int:
    """Events in the complete lines of a spool file past its ``.pos``."""
    rf = ReplayFile(path)
    try:
        return sum(count_events(body) for _, body in rf.lines())
    except OSError:
        return 0


def resolve(path: str) -> Tuple[str, List[Target]]:
    """(spool root, streams to replay) for a spool directory, stream directory or spool file."""
    path = os.path.abspath(path)
    if os.path.isfile(path):
        stream_dir = os.path.dirname(path)
        meta = read_meta(stream_dir)
        if not path.endswith(".jsonl") or meta is None:
            raise ReplayError("%s is not a spool file (a .jsonl file next to a meta.json)" % path)
        return os.path.dirname(stream_dir), [Target(meta, [path])]
    if not os.path.isdir(path):
        raise ReplayError("%s: no such file or directory" % path)
    if os.path.exists(os.path.join(path, "meta.json")):
        meta = read_meta(path)
        if meta is None:
            raise ReplayError("%s: unreadable meta.json" % path)
        return os.path.dirname(path), [Target(meta, pending_files(path))]
    return path, [Target(m, pending_files(m.path)) for m in streams(path)]


class Replayer:
    """Replays spool files with one :class:`Delivery` per API base."""

    def __init__(self, access_key: str, api_base: Optional[str] = None, policy: Optional[Policy] = None,
                 request_timeout: float = 10.0, use_gzip: bool = False, progress: Optional[bool] = None,
                 warn: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> None:
        self.access_key = access_key
        self.fp = key_fingerprint(access_key)
        self.api_base = api_base.rstrip("/") if api_base else None
        self.policy = policy or Policy()
        self.request_timeout = request_timeout
        self.use_gzip = use_gzip
        self.progress = progress
        self.warn = warn
        self._deliveries: Dict[str, Delivery] = {}
        self._blocked: Dict[str, str] = {}  # API base -> why the run stopped for it
        self._written: Set[str] = set()  # spool files this run wrote (rests of cut-short splits)
        self._summary = ReplaySummary()

    # ---- the run ----------------------------------------------------------------------------------
    def run(self, path: str) -> ReplaySummary:
        """Replay what ``path`` names; returns the summary (never raises for HTTP trouble)."""
        from tqdm import tqdm

        root, targets = resolve(path)
        sm = self._summary = ReplaySummary(rejected_path=os.path.join(root, REJECTED_FILE))
        self._blocked, self._written = {}, set()
        mine = [t for t in targets if t.meta.fingerprint == self.fp]
        for t in targets:
            if t.meta.fingerprint != self.fp and t.files:
                n = sum(pending_events(f) for f in t.files)
                sm.other_streams += 1
                sm.other_events += n
                self.warn("isstreamer replay: skipping %s (bucket %r, %d event%s): spooled with another access key"
                          % (t.meta.path, t.meta.bucket_key, n, _s(n)))
        total = sum(max(0, _size(f) - ReplayFile(f).position()) for t in mine for f in t.files)
        writer = SpoolWriter(root, max_bytes=sys.maxsize)
        bar = tqdm(total=total, unit="B", unit_scale=True, desc="replay", leave=False,
                   disable=None if self.progress is None else not self.progress)
        try:
            for t in mine:
                self._stream(t, writer, bar)
        finally:
            bar.close()
            writer.close_all()
            for d in self._deliveries.values():
                d.t.close()
        sm.left = sum(pending_events(f) for f in {f for t in mine for f in t.files} | self._written
                      if os.path.exists(f))
        sm.stopped = ["%s: %s" % (base, why) for base, why in self._blocked.items()]
        return sm

    def _delivery(self, base: str, root: str) -> Delivery:
        d = self._deliveries.get(base)
        if d is None:
            t = Transport(base, self.access_key, self.request_timeout, self.use_gzip)
            d = Delivery(t, self.policy, os.path.join(root, REJECTED_FILE), lambda m: log.debug("%s", m))
            self._deliveries[base] = d
        return d

    def _stream(self, t: Target, writer: SpoolWriter, bar: Any) -> None:
        sm, m = self._summary, t.meta
        base = self.api_base or m.api_base.rstrip("/")
        if not t.files or base in self._blocked:
            return
        d = self._delivery(base, os.path.dirname(m.path))
        if not self._create_bucket(d, m):
            return
        for path in t.files:
            rf = ReplayFile(path)
            if not rf.acquire():
                if os.path.exists(path):  # else a sender finished it meanwhile
                    sm.busy += 1
                continue
            sm.files += 1
            prev, done = rf.position(), True
            lines = rf.lines()
            try:
                for end, body in lines:
                    before = sm.delivered + sm.rejected
                    ok, rest = self._deliver(d, m.bucket_key, body)
                    if not ok:
                        done = False
                        if sm.delivered + sm.rejected > before:
                            # a split cut short: the rest goes back to the spool, this line is settled
                            for b in rest:
                                self._written.add(writer.write(m.api_base, m.bucket_key, m.bucket_name,
                                                               m.fingerprint, b))
                            rf.mark(end)
                        break
                    rf.mark(end)
                    sm.batches += 1
                    bar.update(end - prev)
                    prev = end
            finally:
                lines.close()
                sm.torn += rf.torn
                if rf.torn:
                    self.warn("isstreamer replay: skipped %d torn line%s in %s" % (rf.torn, _s(rf.torn), path))
                if done:
                    rf.finish()
                    sm.finished += 1
                else:
                    rf.release()
            if not done:
                return

    # ---- HTTP through the delivery policy ---------------------------------------------------------------
    def _wait(self, d: Delivery) -> None:
        w = d.wait_time()
        if w > 0:
            time.sleep(w)

    def _stop(self, d: Delivery, why: str) -> None:
        self._blocked.setdefault(d.t.api_base, why)

    def _create_bucket(self, d: Delivery, m: StreamMeta) -> bool:
        """Create the stream's bucket (retrying like events); False when the run stops for this base."""
        while True:
            self._wait(d)
            a = d.t.create_bucket(m.bucket_key, m.bucket_name)
            if a.ok:
                d.mark_healthy()
                return True
            if a.status in (401, 402, 403):
                self._stop(d, "the API refused the access key (HTTP %d)" % a.status)
                return False
            if a.status == 429:
                d.not_before = max(d.not_before, time.monotonic() + retry_after_seconds(a))
                continue
            if a.status == 0 or a.status >= 500:
                d.transient_failure()
                if d.outage:
                    self._stop(d, "%d failed requests in a row (last: %s)" % (d.failures, a.error or "HTTP %d" % a.status))
                    return False
                continue
            self.warn("isstreamer replay: the API refused bucket %r (HTTP %d: %s)" % (m.bucket_key, a.status, a.text[:200]))
            return True  # its events will meet the API's verdict

    def _deliver(self, d: Delivery, bucket_key: str, body: bytes) -> Tuple[bool, List[bytes]]:
        """Send one spool line until settled: (True, []) or (False, the sub-batches not delivered)."""
        sm = self._summary
        queue = [body]
        while queue:
            self._wait(d)
            b = queue[0]
            r = d.send(bucket_key, b, count_events(b))
            sm.delivered += r.delivered
            sm.rejected += r.rejected
            if r.kind in (DELIVERED, REJECTED):
                queue.pop(0)
                continue
            queue[0:1] = r.leftover or [b]
            a = r.answer
            if r.kind == AUTH:
                self._stop(d, "the API refused the access key (HTTP %d)" % (a.status if a else 0))
                return False, queue
            if d.outage:
                self._stop(d, "%d failed requests in a row (last: %s)"
                           % (d.failures, (a.error or "HTTP %d" % a.status) if a else "no answer"))
                return False, queue
        return True, []


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
