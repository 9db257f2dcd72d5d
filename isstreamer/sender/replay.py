"""``isstreamer replay``: resubmit spooled events to the events API.

PATH is a spool directory (every stream in it), one stream directory (``<spool>/<stream id>``
with its ``meta.json``) or one ``.jsonl`` file of a stream. Only the streams whose recorded
access-key fingerprint matches the access key given are replayed; the others are reported and
left alone. Each stream goes to the API base recorded in its ``meta.json`` unless one is given.

Every line is sent with the sender's own delivery policy (:class:`~isstreamer.sender.delivery.Delivery`):
the stream's bucket is created first; 5xx and connection errors are retried with backoff, and
``max_attempts`` failures in a row stop the run for that API base; 429 waits for Retry-After;
413/400 split the batch and write the refused events to ``<spool>/rejected.jsonl``;
401/402/403 stop the run for that API base. Progress is kept in each file's ``.pos`` (a run may
be interrupted and resumed without sending a line twice) and a fully delivered file is deleted,
exactly as the sender does. The rest of a batch whose split was interrupted is written back to
the stream as a new spool file. Files locked by a running sender are skipped: it replays them.
When progress cannot be recorded (disk full) the run stops and the file is kept. A spool root
that is a symlink, owned by another user or writable by others is refused.

The loop over a stream's files (:class:`StreamReplay`) is the sender's too: the sender runs it
one attempt per line while it has live events to send, patiently at exit; this command runs it
patiently (waiting out backoffs and Retry-After).
"""

from __future__ import annotations

import enum
import os
from typing import Callable, List, Optional, Tuple


from .. import lazy
from ..record import record
from .delivery import Delivery, Kind, Result
from .spool import ReplayFile, StreamMeta

log = lazy.Logger("isstreamer")


def _warn(message: str) -> None:
    log.warning(message)  # (logging is imported at the first message: lazy.Logger)


def plural(n: int) -> str:
    """ "s" unless ``n`` is 1."""
    return "" if n == 1 else "s"


def count_events(body: bytes) -> int:
    """Events in one spool line (a JSON array)."""
    try:
        v = lazy.load("orjson").loads(body)  # orjson: only when a spool file is replayed (start-up time)
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


class Stop(enum.Enum):
    """Why :meth:`StreamReplay.run` returned."""

    DONE = "done"  # every file given was replayed and removed (or is busy: a writer holds it)
    LATER = "later"  # the API takes nothing more now (backoff, 429, outage, auth): see ``why``
    BUDGET = "budget"  # the time limit was reached
    FAULT = "fault"  # the spool could not be updated (progress mark, write-back): file kept, see ``why``


@record()
class ReplayCounts:
    """What a :class:`StreamReplay` did so far."""

    files: int = 0  # spool files taken
    finished: int = 0  # of which fully delivered and deleted
    batches: int = 0  # spool lines settled
    delivered: int = 0
    rejected: int = 0
    torn: int = 0
    busy: int = 0  # files a running writer or replayer holds


class StreamReplay:
    """Replays spool files through a :class:`Delivery`: the one loop the sender and
    ``isstreamer replay`` share.

    ``patient`` waits out backoffs and 429s and retries a line until it is settled or the
    policy gives up (auth refused; an outage, unless ``persist`` keeps retrying it until the
    time limit: the sender's exit budget); otherwise every line gets one attempt and the run
    returns ``Stop.LATER`` at the first that is not settled (the sender comes back later).
    A patient run never waits past its time limit (``Stop.BUDGET``).
    A line is marked done only once settled; the rest of a split cut short is written back
    with ``respool`` first. When a mark or that write fails (disk full) the run stops with
    ``Stop.FAULT`` and the file is kept: its lines may be sent again later, never lost.
    """

    def __init__(
        self,
        d: Delivery,
        respool: Callable[[StreamMeta, bytes], None],
        *,
        patient: bool,
        persist: bool = False,
        on_result: Callable[[Result], None] = lambda r: None,
        on_progress: Callable[[int], None] = lambda n: None,
        warn: Optional[Callable[[str], None]] = None,
        deadline: Callable[[], Optional[float]] = lambda: None,
        keep_going: Callable[[], bool] = lambda: True,
    ) -> None:
        self.d = d
        self.respool = respool
        self.patient = patient
        self.persist = persist
        self.on_result = on_result
        self.on_progress = on_progress
        self.warn = warn or _warn
        self.deadline = deadline
        self.keep_going = keep_going
        self.counts = ReplayCounts()
        self.why = ""
        self.until: Optional[float] = None  # time limit of the current run (clock time)
        self.timed_out = False  # the last run stopped at its time limit

    def _wait(self) -> bool:
        """Wait until the policy lets a request go; False (nothing waited) when that would pass
        the time limit (``timed_out``) or ``keep_going`` says stop."""
        if not self.keep_going():
            self.why = "interrupted"
            return False
        w = self.d.wait_time()
        if self.until is not None and self.d.clock() + w >= self.until:
            self.why = "time limit reached"
            self.timed_out = True
            return False
        if w > 0:
            self.d.sleep(w)
        return True

    def _gives_up(self, r: Result) -> bool:
        """True (with ``why`` set) when a patient run stops for this API base."""
        d, a = self.d, r.answer
        if r.kind is Kind.AUTH:
            self.why = "the API refused the access key (HTTP %d)" % (a.status if a else 0)
            return True
        if d.outage and r.kind is Kind.TRANSIENT and not self.persist:
            self.why = "%d failed requests in a row (last: %s)" % (
                d.failures,
                (a.error or "HTTP %d" % a.status) if a else "no answer",
            )
            return True
        return False

    def bucket(self, m: StreamMeta, bucket_key: Optional[str] = None, until: Optional[float] = None) -> bool:
        """Create the stream's bucket (a refused creation counts as done: its events meet the
        API's verdict). False when it failed (patient: the policy gave up or the time limit
        came; see ``why``)."""
        self.until = until
        while True:
            if self.patient and not self._wait():
                return False
            r = self.d.create_bucket(bucket_key or m.bucket_key, m.bucket_name, self.deadline())
            if r.kind.settled:
                return True
            if not self.patient:
                self.why = "bucket creation: %s" % r.kind.value
                return False
            if self._gives_up(r):
                return False

    def run(self, m: StreamMeta, files: List[str], until: Optional[float] = None) -> Stop:
        """Replay ``files`` of stream ``m`` in order, up to clock time ``until``."""
        self.until = until
        self.timed_out = False
        for path in files:
            rf = ReplayFile(path)
            if not rf.acquire():
                if rf.error is not None and os.path.lexists(path) and not isinstance(rf.error, FileNotFoundError):
                    self.warn("isstreamer: spool file %s skipped (%s)" % (path, rf.error))
                elif os.path.exists(path):  # else finished by someone else meanwhile
                    self.counts.busy += 1
                continue
            self.counts.files += 1
            stop = self._file(m, rf, until)
            if stop is not Stop.DONE:
                return stop
        return Stop.DONE

    def _file(self, m: StreamMeta, rf: ReplayFile, until: Optional[float]) -> Stop:
        stop = Stop.DONE
        lines = rf.lines()
        try:
            prev = rf.position()
            for end, body in lines:
                if until is not None and self.d.clock() >= until:
                    stop = Stop.BUDGET
                    break
                settled, rest, progressed = self._deliver(m.bucket_key, body)
                if not settled and not progressed:
                    out = self.timed_out or (self.until is not None and self.d.clock() >= self.until)
                    stop = Stop.BUDGET if out else Stop.LATER
                    break
                try:
                    for b in rest:  # a split cut short: the rest goes back to the spool first
                        self.respool(m, b)
                    rf.mark(end)
                except OSError as exc:
                    self.why = "cannot update the spool in %s (%s); the file is kept" % (m.path, exc)
                    stop = Stop.FAULT
                    break
                self.counts.batches += settled
                self.on_progress(end - prev)
                prev = end
                if not settled:
                    stop = Stop.LATER
                    break
        except OSError as exc:  # reading the file, or marking a torn line
            self.why = "cannot replay %s (%s); the file is kept" % (rf.path, exc)
            stop = Stop.FAULT
        finally:
            lines.close()
            self.counts.torn += rf.torn
            if rf.torn:
                self.warn("isstreamer: skipped %d torn line%s in spool file %s" % (rf.torn, plural(rf.torn), rf.path))
            if stop is Stop.DONE:
                rf.finish()
                self.counts.finished += 1
            else:
                rf.release()
        return stop

    def _deliver(self, bucket_key: str, body: bytes) -> Tuple[bool, List[bytes], bool]:
        """Send one spool line: (settled, sub-batches left, whether some events were settled)."""
        queue = [body]
        progressed = False
        while queue:
            if self.patient and not self._wait():
                return False, queue if progressed else [], progressed
            b = queue[0]
            r = self.d.send(bucket_key, b, count_events(b), self.deadline())
            self.on_result(r)
            self.counts.delivered += r.delivered
            self.counts.rejected += r.rejected
            progressed = progressed or bool(r.delivered or r.rejected)
            if r.kind.settled:
                queue.pop(0)
                continue
            queue[0:1] = r.leftover or [b]
            if not self.patient or self._gives_up(r):
                return False, queue if progressed else [], progressed
        return True, [], progressed
