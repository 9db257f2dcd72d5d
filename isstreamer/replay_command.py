"""``isstreamer replay``: resubmit spooled events to the events API (the command; the loop over
a stream's files is :class:`isstreamer.sender.replay.StreamReplay`, the sender's too).
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from .sender.delivery import Delivery, Policy
from .options import DEFAULTS, REJECTED_FILE
from .sender.replay import Stop, StreamReplay, pending_events, plural
from .sender.spool import (
    ReplayFile,
    SpoolUnsafe,
    SpoolWriter,
    StreamMeta,
    check_root,
    key_fingerprint,
    pending_files,
    read_meta,
    streams,
)
from .sender.transport import Transport

log = logging.getLogger("isstreamer")


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
    faults: List[str] = field(default_factory=list)  # spool files kept because the spool could not be updated
    rejected_path: str = ""

    def line(self) -> str:
        """One-line summary."""
        text = "%d file%s, %d batch%s, %d event%s delivered, %d rejected, %d left" % (
            self.files,
            plural(self.files),
            self.batches,
            "" if self.batches == 1 else "es",
            self.delivered,
            plural(self.delivered),
            self.rejected,
            self.left,
        )
        if self.busy:
            text += ", %d file%s in use by a running sender" % (self.busy, plural(self.busy))
        return text


def resolve(path: str) -> Tuple[str, List[Target]]:
    """(spool root, streams to replay) for a spool directory, stream directory or spool file.

    The spool root must pass :func:`~isstreamer.sender.spool.check_root` (ReplayError otherwise)."""
    path = os.path.abspath(path)
    if os.path.isfile(path):
        stream_dir = os.path.dirname(path)
        meta = read_meta(stream_dir)
        if not path.endswith(".jsonl") or meta is None:
            raise ReplayError("%s is not a spool file (a .jsonl file next to a meta.json)" % path)
        root, targets = os.path.dirname(stream_dir), [Target(meta, [path])]
    elif not os.path.isdir(path):
        raise ReplayError("%s: no such file or directory" % path)
    elif os.path.exists(os.path.join(path, "meta.json")):
        meta = read_meta(path)
        if meta is None:
            raise ReplayError("%s: unreadable meta.json" % path)
        root, targets = os.path.dirname(path), [Target(meta, pending_files(path))]
    else:
        root, targets = path, [Target(m, pending_files(m.path)) for m in streams(path)]
    try:
        check_root(root)
    except SpoolUnsafe as exc:
        raise ReplayError(str(exc)) from exc
    return root, targets


class Replayer:
    """Replays spool files with one :class:`Delivery` per API base (``isstreamer replay``)."""

    def __init__(
        self,
        access_key: str,
        api_base: Optional[str] = None,
        policy: Optional[Policy] = None,
        request_timeout: float = DEFAULTS.request_timeout,
        use_gzip: bool = False,
        progress: Optional[bool] = None,
        warn: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
    ) -> None:
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
                self.warn(
                    "isstreamer replay: skipping %s (bucket %r, %d event%s): spooled with another access key"
                    % (t.meta.path, t.meta.bucket_key, n, plural(n))
                )
        total = sum(max(0, _size(f) - ReplayFile(f).position()) for t in mine for f in t.files)
        writer = SpoolWriter(root, max_bytes=sys.maxsize)
        bar = tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            desc="replay",
            leave=False,
            disable=None if self.progress is None else not self.progress,
        )
        try:
            for t in mine:
                self._stream(t, root, writer, bar)
        finally:
            bar.close()
            writer.close_all()
            for d in self._deliveries.values():
                d.t.close()
        sm.left = sum(
            pending_events(f) for f in {f for t in mine for f in t.files} | self._written if os.path.exists(f)
        )
        sm.stopped = ["%s: %s" % (base, why) for base, why in self._blocked.items()]
        return sm

    def _delivery(self, base: str, root: str) -> Delivery:
        d = self._deliveries.get(base)
        if d is None:
            t = Transport(base, self.access_key, self.request_timeout, self.use_gzip)
            d = Delivery(t, self.policy, os.path.join(root, REJECTED_FILE), lambda m: log.debug("%s", m))
            self._deliveries[base] = d
        return d

    def _stream(self, t: Target, root: str, writer: SpoolWriter, bar: Any) -> None:
        sm, m = self._summary, t.meta
        base = self.api_base or m.api_base.rstrip("/")
        if not t.files or base in self._blocked:
            return

        def respool(meta: StreamMeta, body: bytes) -> None:
            self._written.add(writer.write(meta.api_base, meta.bucket_key, meta.bucket_name, meta.fingerprint, body))

        loop = StreamReplay(
            self._delivery(base, root),
            respool,
            patient=True,
            on_progress=bar.update,
            warn=lambda msg: self.warn(msg.replace("isstreamer:", "isstreamer replay:", 1)),
        )
        if not loop.bucket(m):
            self._blocked.setdefault(base, loop.why)
            return
        stop = loop.run(m, t.files)
        c = loop.counts
        sm.files += c.files
        sm.finished += c.finished
        sm.batches += c.batches
        sm.delivered += c.delivered
        sm.rejected += c.rejected
        sm.torn += c.torn
        sm.busy += c.busy
        if stop is Stop.LATER:
            self._blocked.setdefault(base, loop.why)
        elif stop is Stop.FAULT:
            self.warn("isstreamer replay: %s" % loop.why)
            sm.faults.append(loop.why)


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
