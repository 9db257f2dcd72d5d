"""The ``isstreamer`` command line.

Subcommands import what they need inside their own function, so ``import isstreamer.cli``
stays light (no aiohttp, no database) and adding a subcommand touches nothing else.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Callable, Optional, Tuple, Union

import click
from click.core import ParameterSource

from isstreamer.collector import limits
from isstreamer.options import DEFAULTS


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="isstreamer", message="isstreamer %(version)s")
def main() -> None:
    """isstreamer: stream events to Initial State or to the local collector."""


# --------------------------------------------------------------------------- serve


def default_collector_db() -> Path:
    """``$XDG_STATE_HOME/isstreamer/collector.db`` (``~/.local/state`` when unset)."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "isstreamer" / "collector.db"


class _Size(click.ParamType):
    """A size in bytes: ``1048576``, ``512K``, ``256M``, ``1G`` (powers of 1024); ``0``: no limit."""

    name = "SIZE"
    _UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}

    def convert(self, value: object, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> int:
        if isinstance(value, int):
            return value
        m = re.fullmatch(r"\s*([0-9]+)\s*([KMGT]?)i?B?\s*", str(value), re.IGNORECASE)
        if not m:
            self.fail("%r is not a size (e.g. 256M, 1G, or 0 for no limit)" % value, param, ctx)
        return int(m.group(1)) * self._UNITS[m.group(2).upper()]


class _RateLimit(click.ParamType):
    """``N/SECONDS`` (``N`` alone means per 10 seconds)."""

    name = "N/SECONDS"

    def convert(
        self, value: object, param: Optional[click.Parameter], ctx: Optional[click.Context]
    ) -> Tuple[int, float]:
        if isinstance(value, tuple):
            return value  # type: ignore[return-value]
        text = str(value)
        try:
            n, _, w = text.partition("/")
            limit, window = int(n), float(w) if w else 10.0
        except ValueError:
            self.fail("%r is not N/SECONDS (e.g. 10/10)" % text, param, ctx)
        if limit < 1 or window <= 0:
            self.fail("%r: N must be >= 1 and SECONDS > 0" % text, param, ctx)
        return limit, window


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="Port (0 picks a free one)."
)
@click.option(
    "--db",
    "db",
    default=None,
    metavar="FILE|URL",
    help="SQLite database file, or a PostgreSQL database: postgresql://USER@HOST:PORT/DBNAME (needs "
    "pip install 'isstreamer[postgres]'; keep a password in PGPASSFILE) "
    "[default: $XDG_STATE_HOME/isstreamer/collector.db].",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=limits.WORKERS,
    show_default=True,
    help="Collector processes on the one port (Linux SO_REUSEPORT); they share the database.",
)
@click.option(
    "--access-key",
    "access_keys",
    multiple=True,
    help="Accepted access key (repeatable; visible in ps: prefer --access-key-file or $ISSTREAMER_COLLECTOR_KEYS). "
    "No key configured: any non-empty key writes and reads are open.",
)
@click.option(
    "--access-key-file",
    "key_files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="File of accepted access keys, one per line (repeatable).",
)
@click.option(
    "--admin-key-file",
    "admin_key_files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="File of admin keys (see every bucket, owner=, DELETE any owner's bucket); also "
    "$ISSTREAMER_COLLECTOR_ADMIN_KEYS.",
)
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    help="Also answer this Host name (NAME or NAME:PORT, repeatable; '*' any), e.g. behind a proxy.",
)
@click.option(
    "--allow-origin",
    "allowed_origins",
    multiple=True,
    help="Web origin whose pages may write (e.g. http://localhost:3000; repeatable).",
)
@click.option(
    "--rate-limit", type=_RateLimit(), default=None, help="Requests per access key, e.g. 10/10 (429 past it)."
)
@click.option(
    "--monthly-quota", type=click.IntRange(min=0), default=None, help="Events per access key per month (402 past it)."
)
@click.option(
    "--max-body",
    type=click.IntRange(min=1),
    default=limits.MAX_BODY,
    show_default=True,
    help="Largest body in bytes, compressed and decompressed (413 past it).",
)
@click.option(
    "--max-key-chars",
    type=click.IntRange(min=1),
    default=limits.MAX_KEY_CHARS,
    show_default=True,
    help="Longest event key.",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=1),
    default=limits.MAX_CONNECTIONS,
    show_default=True,
    help="Open connections at most (a new one replaces an idle or stalled one).",
)
@click.option(
    "--max-per-client",
    type=click.IntRange(min=1),
    default=limits.MAX_PER_CLIENT,
    show_default=True,
    help="Open connections of one client address (IPv6: one /64) at most; raise it behind a proxy.",
)
@click.option(
    "--header-timeout",
    type=click.FloatRange(min=0.1),
    default=limits.HEADER_TIMEOUT,
    show_default=True,
    help="Seconds a new connection may take to send its request head.",
)
@click.option(
    "--idle-timeout",
    type=click.FloatRange(min=0.1),
    default=limits.IDLE_TIMEOUT,
    show_default=True,
    help="Seconds a kept-alive connection may wait for its next request.",
)
@click.option(
    "--body-timeout",
    type=click.FloatRange(min=0.1),
    default=limits.BODY_TIMEOUT,
    show_default=True,
    help="Seconds a request body may take to arrive (408 past it).",
)
@click.option(
    "--write-timeout",
    type=click.FloatRange(min=0.1),
    default=limits.WRITE_TIMEOUT,
    show_default=True,
    help="Seconds an answer may wait for a client that reads none of it.",
)
@click.option(
    "--disk-quota",
    type=_Size(),
    default=None,
    help="Bytes of stored events each access key may have, e.g. 256M; 0: none (507 past it) "
    "[default: %dM in any-key mode, none with keys]." % (limits.ANY_KEY_DISK_QUOTA // limits.MIB),
)
@click.option(
    "--max-db-size",
    type=_Size(),
    default=None,
    help="The largest the database file may grow, e.g. 4G; 0: no cap (507 past it) "
    "[default: %dM in any-key mode, none with keys]." % (limits.ANY_KEY_MAX_DB_SIZE // limits.MIB),
)
@click.option(
    "--page-size",
    type=click.IntRange(min=1),
    default=limits.PAGE_SIZE,
    show_default=True,
    help="Most events (buckets, keys) in one read answer; more come page by page.",
)
@click.option(
    "--log-rows",
    type=click.IntRange(min=0),
    default=limits.LOG_ROWS,
    show_default=True,
    help="Write requests kept in the request log.",
)
@click.option(
    "--log-days",
    type=click.FloatRange(min=0),
    default=limits.LOG_DAYS,
    show_default=True,
    help="Days a request stays in the request log.",
)
def serve(
    host: str,
    port: int,
    db: Optional[str],
    workers: int,
    access_keys: Tuple[str, ...],
    key_files: Tuple[str, ...],
    admin_key_files: Tuple[str, ...],
    allowed_hosts: Tuple[str, ...],
    allowed_origins: Tuple[str, ...],
    rate_limit: Optional[Tuple[int, float]],
    monthly_quota: Optional[int],
    max_body: int,
    max_key_chars: int,
    max_connections: int,
    max_per_client: int,
    header_timeout: float,
    idle_timeout: float,
    body_timeout: float,
    write_timeout: float,
    disk_quota: Optional[int],
    max_db_size: Optional[int],
    page_size: int,
    log_rows: int,
    log_days: float,
) -> None:
    """Run the local Initial State-compatible collector and its dashboard until Ctrl-C.

    Keys also come from $ISSTREAMER_COLLECTOR_KEYS (comma or space separated).
    """
    from isstreamer.collector import security
    from isstreamer.collector.dburl import is_postgres_url, masked
    from isstreamer.collector.server import run_collector
    from isstreamer.collector.store import Unavailable
    from isstreamer.collector.workers import WorkersRefused
    from isstreamer.safefile import Refused

    if access_keys:
        click.echo(
            "isstreamer serve: warning: --access-key is visible to other users (ps, /proc/PID/cmdline); "
            "use --access-key-file FILE or $%s instead" % security.KEYS_ENV,
            err=True,
        )
    keys = list(access_keys) + security.keys_from_env(security.KEYS_ENV)
    admin = security.keys_from_env(security.ADMIN_KEYS_ENV)
    try:
        for f in key_files:
            keys += security.read_key_file(f)
        for f in admin_key_files:
            admin += security.read_key_file(f)
    except (OSError, UnicodeDecodeError, Refused) as exc:
        raise click.ClickException("cannot read a key file: %s" % exc) from exc
    target = db if db and is_postgres_url(db) else str(Path(db) if db else default_collector_db())
    try:
        run_collector(
            host=host,
            port=port,
            db=target,
            workers=workers,
            access_keys=keys,
            rate_limit=rate_limit,
            monthly_quota=monthly_quota,
            max_body=max_body,
            max_key_chars=max_key_chars,
            admin_keys=admin,
            allowed_hosts=allowed_hosts,
            allowed_origins=allowed_origins,
            max_connections=max_connections,
            max_per_client=max_per_client,
            header_timeout=header_timeout,
            idle_timeout=idle_timeout,
            body_timeout=body_timeout,
            write_timeout=write_timeout,
            disk_quota=disk_quota,
            max_db_size=max_db_size,
            page_size=page_size,
            log_rows=log_rows,
            log_days=log_days,
        )
    except (OSError, Refused, Unavailable, WorkersRefused, ImportError) as exc:
        # address in use, unwritable or planted database, database unreachable, no psycopg ...
        raise click.ClickException(masked(str(exc))) from exc


# --------------------------------------------------------------------------- demo


@main.command()
@click.option(
    "--events",
    "-n",
    default=200_000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Sensor readings logged by the tight loop of the main process (the pool adds a quarter more).",
)
@click.option(
    "--workers",
    "-w",
    default=2,
    show_default=True,
    type=click.IntRange(0, 32),
    help="Pool worker processes sharing the Streamer (0: none).",
)
@click.option("--port", default=0, type=click.IntRange(0, 65535), help="Collector port [default: a free one].")
@click.option(
    "--db",
    type=click.Path(dir_okay=False),
    default=None,
    help="Keep the collector database in this file [default: a temporary one].",
)
@click.option("--exit", "exit_after", is_flag=True, help="Exit after the summary instead of serving the dashboard.")
@click.option("--progress/--no-progress", default=None, help="Progress bars [default: when stderr is a terminal].")
@click.option(
    "--aggregate", is_flag=True, help="The same workload with downsampling rules on (1 s windows, deadband, on change)."
)
def demo(
    events: int, workers: int, port: int, db: Optional[str], exit_after: bool, progress: Optional[bool], aggregate: bool
) -> None:
    """Stream a sensor loop and a process pool through one Streamer into the embedded collector.

    Prints what was logged, delivered and dropped, the cost of log() and the dashboard URL, then
    serves the dashboard until Ctrl-C (or exits at once with --exit). Needs no access key.
    """
    from isstreamer.demo import run_demo
    from isstreamer.safefile import Refused

    try:
        code = run_demo(
            events=events,
            workers=workers,
            port=port,
            db=db,
            serve=not exit_after,
            progress=progress,
            aggregate=aggregate,
        )
    except (OSError, Refused) as exc:  # port in use, unwritable or shared database ...
        raise click.ClickException(str(exc)) from exc
    raise SystemExit(code)


# --------------------------------------------------------------------------- access keys of log and replay

#: Environment variable naming a file that holds the access key (``--access-key-file``).
KEY_FILE_ENV = "ISSTREAMER_ACCESS_KEY_FILE"
_VISIBLE_KEY = (
    "warning: --access-key is visible to other users (ps, /proc/PID/cmdline); use "
    "--access-key-file FILE, $ISSTREAMER_ACCESS_KEY or isstreamer.ini instead"
)
_NO_KEY = "no access key: use --access-key-file FILE, set ISSTREAMER_ACCESS_KEY or put access_key in isstreamer.ini"


def _key_options(command: Callable[..., None]) -> Callable[..., None]:
    """The ``--access-key`` and ``--access-key-file`` options of a command."""
    command = click.option(
        "--access-key-file",
        type=click.Path(dir_okay=False),
        default=None,
        envvar=KEY_FILE_ENV,
        show_envvar=True,
        help="File holding the access key (one line; # comments; mode 0600).",
    )(command)
    return click.option(
        "--access-key",
        default="",
        help="Access key; visible to other users: prefer --access-key-file, env "
        "ISSTREAMER_ACCESS_KEY or isstreamer.ini.",
    )(command)


def command_line_key(command: str, access_key: str, key_file: Optional[str]) -> str:
    """The access key given to a command: ``--access-key`` (with a warning that other users see
    it) or the one line of ``--access-key-file``; "" when neither (the environment and
    isstreamer.ini then apply)."""
    ctx = click.get_current_context()
    if key_file and access_key and ctx.get_parameter_source("access_key_file") is ParameterSource.ENVIRONMENT:
        key_file = None  # an explicit --access-key beats $ISSTREAMER_ACCESS_KEY_FILE
    if key_file and access_key:
        raise click.UsageError("give --access-key or --access-key-file, not both")
    if access_key:
        click.echo("isstreamer %s: %s" % (command, _VISIBLE_KEY), err=True)
        return access_key
    return _read_key_file(key_file) if key_file else ""


def _read_key_file(path: str) -> str:
    from isstreamer.collector.security import read_key_file
    from isstreamer.safefile import Refused

    try:
        keys = read_key_file(path)
    except (OSError, UnicodeDecodeError, Refused) as exc:
        raise click.UsageError("cannot read the access key file: %s" % exc) from exc
    if len(keys) != 1:
        raise click.UsageError("%s: %s" % (path, "%d keys in it, one expected" % len(keys) if keys else "no key in it"))
    return keys[0]


# --------------------------------------------------------------------------- log

_INT_RE = re.compile(r"[+-]?[0-9]+\Z")
_FLOAT_RE = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\Z")


def parse_value(text: str) -> Union[bool, int, float, str]:
    """``21`` -> int, ``21.5``/``-1e3`` -> float, ``true``/``false`` (any case) -> bool, else ``text``.

    Integers outside int64 and floats that overflow stay text (the events API takes them as strings).
    """
    if _INT_RE.match(text):
        n = int(text)
        if -(2**63) <= n < 2**63:
            return n
    elif _FLOAT_RE.match(text):
        x = float(text)
        if math.isfinite(x):
            return x
    else:
        low = text.lower()
        if low in ("true", "false"):
            return low == "true"
    return text


def _checked(key: str, value: Union[bool, int, float, str]) -> Tuple[str, Union[bool, int, float, str]]:
    """The event as the Streamer would send it, or ValueError/TypeError stating which rule it breaks."""
    from isstreamer.values import coerce_key, coerce_value

    k, _ = coerce_key(key, True)
    v, _ = coerce_value(value, True, key=k)
    return k, v


def parse_line(line: str) -> Tuple[str, Union[bool, int, float, str]]:
    """``key,value`` or ``key=value`` (split at the first ``,`` or ``=``; spaces around trimmed)."""
    m = re.search(r"[,=]", line)
    if m is None:
        raise ValueError("expected KEY,VALUE or KEY=VALUE")
    key, value = line[: m.start()].strip(), line[m.end() :].strip()
    if not key:
        raise ValueError("no key before %r" % m.group())
    if not value:
        raise ValueError("no value after %r" % m.group())
    return _checked(key, parse_value(value))


def _default_bucket_key(bucket_name: str) -> str:
    """A stable key from the bucket name, so repeated ``isstreamer log`` calls share one bucket."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", bucket_name).strip("-").lower()[:250] or "isstreamer"


@main.command("log", context_settings={"ignore_unknown_options": True})  # VALUE may be -3.5
@click.argument("args", nargs=-1, metavar="KEY [VALUE]")
@click.option(
    "--bucket-name", default="", help="Bucket name [env ISSTREAMER_BUCKET, isstreamer.ini; default: isstreamer]."
)
@click.option(
    "--bucket-key",
    default="",
    envvar="ISSTREAMER_BUCKET_KEY",
    show_envvar=True,
    help="Bucket key [default: derived from the bucket name, so repeated calls share a bucket].",
)
@_key_options
@click.option(
    "--api-base",
    default="",
    help="Events API base URL [env ISSTREAMER_API_BASE, isstreamer.ini; default: https://groker.init.st].",
)
@click.option(
    "--ini",
    type=click.Path(dir_okay=False),
    default=None,
    help="isstreamer.ini to read [default: ~/isstreamer.ini, then ./isstreamer.ini].",
)
@click.option(
    "--epoch", type=float, default=None, help="Event time in seconds since 1970 (single event only) [default: now]."
)
@click.option(
    "--debug-level",
    type=click.IntRange(0, 2),
    default=0,
    show_default=True,
    help="1 echoes each event to stdout, 2 also makes invalid input an error.",
)
@click.option("-q", "--quiet", is_flag=True, help="No summary line on stderr.")
def log_command(
    args: Tuple[str, ...],
    bucket_name: str,
    bucket_key: str,
    access_key: str,
    access_key_file: Optional[str],
    api_base: str,
    ini: Optional[str],
    epoch: Optional[float],
    debug_level: int,
    quiet: bool,
) -> None:
    """Log one event (KEY VALUE), or one per stdin line with KEY "-".

    \b
    isstreamer log temperature 21.5
    printf 'temperature,21.5\\ndoor=open\\n' | isstreamer log -

    Values become int, float, true/false or else text. On stdin, blank lines and lines starting
    with # are skipped; a bad line is reported on stderr and makes the exit status 1. Everything
    is flushed before exiting; a summary (logged/delivered/dropped) goes to stderr.
    """
    from isstreamer.config import ConfigError, load_config
    from isstreamer.values import coerce_epoch

    for a in args:
        if a.startswith("-") and a != "-" and not _FLOAT_RE.match(a):
            raise click.UsageError("no such option: %s" % a)
    if not args:
        raise click.UsageError("missing KEY (or '-' to read KEY,VALUE lines from stdin)")
    if len(args) > 2:
        raise click.UsageError("too many arguments: %s (quote a VALUE that has spaces)" % " ".join(args[2:]))
    key, value = args[0], (args[1] if len(args) > 1 else None)
    if key == "-":
        if value is not None:
            raise click.UsageError("with KEY '-' the events come from stdin: give no VALUE")
        if epoch is not None:
            raise click.UsageError("--epoch applies to a single event (KEY VALUE), not to stdin")
    elif value is None:
        raise click.UsageError("missing VALUE (or use '-' as KEY to read KEY,VALUE lines from stdin)")
    else:
        try:
            single = _checked(key, parse_value(value))
            if epoch is not None:
                coerce_epoch(epoch, True)
        except (TypeError, ValueError) as exc:
            raise click.UsageError(str(exc)) from exc
    access_key = command_line_key("log", access_key, access_key_file)
    try:
        cfg = load_config(bucket_name=bucket_name, access_key=access_key, ini_file_location=ini, api_base=api_base)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    if not cfg.offline and not cfg.access_key:
        raise click.UsageError(_NO_KEY)
    name = cfg.bucket_name or "isstreamer"
    bkey = bucket_key or _default_bucket_key(name)

    from isstreamer.streamer import Streamer

    try:
        streamer = Streamer(
            bucket_name=name,
            bucket_key=bkey,
            access_key=cfg.access_key,
            ini_file_location=ini,
            debug_level=debug_level,
            api_base=cfg.api_base,
        )
    except ValueError as exc:  # bad bucket key
        raise click.UsageError(str(exc)) from exc
    logged = bad = 0
    try:
        if key != "-":
            streamer.log(single[0], single[1], epoch)
            logged = 1
        else:
            for lineno, line in enumerate(click.get_text_stream("stdin"), 1):
                text = line.strip()
                if not text or text.startswith("#"):
                    continue
                try:
                    k, v = parse_line(text)
                except (TypeError, ValueError) as exc:
                    bad += 1
                    click.echo("isstreamer log: line %d: %s: %s" % (lineno, exc, _short(text)), err=True)
                    continue
                streamer.log(k, v)
                logged += 1
    finally:
        streamer.close()
    st = streamer.stats()
    dropped = sum(st["dropped"].values())
    lost = dropped + st.get("failed", 0) + st.get("rejected", 0)
    if not quiet:
        if cfg.offline:
            parts = ["%d logged to %s" % (logged, cfg.offline_file)]
        else:
            parts = ["%d logged" % logged, "%d delivered" % st.get("sent", 0), "%d dropped" % dropped]
            for label, n in (
                ("rejected by the API", st.get("rejected", 0)),
                ("failed", st.get("failed", 0)),
                ("spooled for a later retry", st.get("spooled", 0)),
            ):
                if n:
                    parts.append("%d %s" % (n, label))
        if bad:
            parts.append("%d bad line%s" % (bad, "" if bad == 1 else "s"))
        click.echo("isstreamer log: %s (bucket %r)" % (", ".join(parts), bkey), err=True)
    if bad or lost:
        raise SystemExit(1)


def _short(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


# --------------------------------------------------------------------------- replay


def _adopt_orphans(access_key: str) -> None:
    """Rings left in the ring directory by killed programs get a sender (README: the process model;
    the thread mode leaves no ring behind)."""
    from isstreamer import models, registry
    from isstreamer.ring import default_ring_dir
    from isstreamer.settings import SenderSettings

    if models.process_model_missing():
        return
    n = registry.adopt_orphans(default_ring_dir(), lambda meta: SenderSettings.from_meta(meta, access_key), min_age=5.0)
    if n:
        click.echo(
            "isstreamer replay: %d ring(s) left by killed programs now have a sender: their events are "
            "delivered, or spooled for a later replay" % n,
            err=True,
        )


@main.command()
@click.argument("path", required=False, type=click.Path(), default=None)
@_key_options
@click.option("--api-base", default="", help="Send to this API base instead of the one recorded with each stream.")
@click.option(
    "--ini",
    type=click.Path(dir_okay=False),
    default=None,
    help="isstreamer.ini to read [default: ~/isstreamer.ini, then ./isstreamer.ini].",
)
@click.option(
    "--max-attempts",
    default=DEFAULTS.max_attempts,
    show_default=True,
    type=click.IntRange(min=1),
    help="Failed requests in a row (5xx, no answer) before giving up on an API base.",
)
@click.option(
    "--backoff-max",
    default=DEFAULTS.backoff_max,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Longest wait between retries, in seconds.",
)
@click.option(
    "--request-timeout",
    default=DEFAULTS.request_timeout,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds to wait for each answer.",
)
@click.option(
    "--max-rps",
    default=DEFAULTS.max_rps,
    show_default=True,
    type=click.FloatRange(min=0),
    help="At most this many requests per second (0: no ceiling).",
)
@click.option("--progress/--no-progress", default=None, help="Progress bar [default: when stderr is a terminal].")
def replay(
    path: Optional[str],
    access_key: str,
    access_key_file: Optional[str],
    api_base: str,
    ini: Optional[str],
    max_attempts: int,
    backoff_max: float,
    request_timeout: float,
    max_rps: float,
    progress: Optional[bool],
) -> None:
    """Resubmit spooled events to the events API.

    PATH is a spool directory, one stream directory in it or one .jsonl spool file [default: the
    default spool directory]. Only streams spooled with the same access key are replayed. Lines
    are sent once (progress is kept, so an interrupted run resumes); refused events go to
    rejected.jsonl. Exit status 1 when events are left in the spool.
    """
    from isstreamer.config import ConfigError, load_config
    from isstreamer.replay_command import Replayer, ReplayError
    from isstreamer.sender.delivery import Policy
    from isstreamer.sender.spool import default_spool_dir

    if path is None:
        path = default_spool_dir()
        if not os.path.isdir(path):
            click.echo("isstreamer replay: nothing to replay (no spool directory %s)" % path, err=True)
            return
    access_key = command_line_key("replay", access_key, access_key_file)
    try:
        cfg = load_config(access_key=access_key, ini_file_location=ini, api_base=api_base)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    if not cfg.access_key:
        raise click.UsageError(_NO_KEY)
    _adopt_orphans(cfg.access_key)
    policy = Policy(max_attempts=max_attempts, backoff_max=backoff_max, max_rps=max_rps)
    replayer = Replayer(
        cfg.access_key,
        api_base=cfg.api_base if api_base else None,
        policy=policy,
        request_timeout=request_timeout,
        progress=progress,
        warn=lambda m: click.echo(m, err=True),
    )
    try:
        summary = replayer.run(path)
    except ReplayError as exc:
        raise click.UsageError(str(exc)) from exc
    for why in summary.stopped:
        click.echo("isstreamer replay: stopped for %s" % why, err=True)
    click.echo("isstreamer replay: %s" % summary.line())
    if summary.rejected:
        click.echo("isstreamer replay: the refused events are in %s" % summary.rejected_path, err=True)
    if summary.other_streams:
        click.echo(
            "isstreamer replay: %d stream%s (%d event%s) of another access key left untouched"
            % (
                summary.other_streams,
                "" if summary.other_streams == 1 else "s",
                summary.other_events,
                "" if summary.other_events == 1 else "s",
            ),
            err=True,
        )
    if summary.left:
        raise SystemExit(1)


if __name__ == "__main__":  # pragma: no cover - python -m isstreamer.cli
    main()
