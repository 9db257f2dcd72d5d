"""The ``isstreamer`` command line.

Subcommands import what they need inside their own function, so ``import isstreamer.cli``
stays light (no aiohttp, no database) and adding a subcommand touches nothing else.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Tuple

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="isstreamer", message="isstreamer %(version)s")
def main() -> None:
    """isstreamer: stream events to Initial State or to the local collector."""


# --------------------------------------------------------------------------- serve


def default_collector_db() -> Path:
    """``$XDG_STATE_HOME/isstreamer/collector.db`` (``~/.local/state`` when unset)."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "isstreamer" / "collector.db"


class _RateLimit(click.ParamType):
    """``N/SECONDS`` (``N`` alone means per 10 seconds)."""

    name = "N/SECONDS"

    def convert(self, value: object, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> Tuple[int, float]:
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
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="Port (0 picks a free one).")
@click.option(
    "--db",
    "db",
    type=click.Path(dir_okay=False),
    default=None,
    help="SQLite database file [default: $XDG_STATE_HOME/isstreamer/collector.db].",
)
@click.option(
    "--access-key",
    "access_keys",
    multiple=True,
    help="Accepted access key (repeatable). None given: any non-empty key is accepted.",
)
@click.option("--rate-limit", type=_RateLimit(), default=None, help="Requests per access key, e.g. 10/10 (429 past it).")
@click.option("--monthly-quota", type=click.IntRange(min=0), default=None, help="Events per access key per month (402 past it).")
@click.option("--max-body", type=click.IntRange(min=1), default=1_000_000, show_default=True, help="Largest body in bytes (413 past it).")
@click.option("--max-key-chars", type=click.IntRange(min=1), default=250, show_default=True, help="Longest event key.")
def serve(
    host: str,
    port: int,
    db: Optional[str],
    access_keys: Tuple[str, ...],
    rate_limit: Optional[Tuple[int, float]],
    monthly_quota: Optional[int],
    max_body: int,
    max_key_chars: int,
) -> None:
    """Run the local Initial State-compatible collector and its dashboard until Ctrl-C."""
    from isstreamer.collector.server import run_collector

    path = Path(db) if db else default_collector_db()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        run_collector(
            host=host,
            port=port,
            db=str(path),
            access_keys=access_keys,
            rate_limit=rate_limit,
            monthly_quota=monthly_quota,
            max_body=max_body,
            max_key_chars=max_key_chars,
        )
    except OSError as exc:  # address in use, unwritable database ...
        raise click.ClickException(str(exc)) from exc


# --------------------------------------------------------------------------- replay


@main.command()
@click.argument("path", required=False, type=click.Path(), default=None)
@click.option("--access-key", default="", help="Access key [env ISSTREAMER_ACCESS_KEY, isstreamer.ini].")
@click.option("--api-base", default="", help="Send to this API base instead of the one recorded with each stream.")
@click.option("--ini", type=click.Path(dir_okay=False), default=None,
              help="isstreamer.ini to read [default: ~/isstreamer.ini, then ./isstreamer.ini].")
@click.option("--max-attempts", default=4, show_default=True, type=click.IntRange(min=1),
              help="Failed requests in a row (5xx, no answer) before giving up on an API base.")
@click.option("--backoff-max", default=30.0, show_default=True, type=click.FloatRange(min=0),
              help="Longest wait between retries, in seconds.")
@click.option("--request-timeout", default=10.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds to wait for each answer.")
@click.option("--max-rps", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="At most this many requests per second (0: no ceiling).")
@click.option("--progress/--no-progress", default=None, help="Progress bar [default: when stderr is a terminal].")
def replay(path: Optional[str], access_key: str, api_base: str, ini: Optional[str], max_attempts: int,
           backoff_max: float, request_timeout: float, max_rps: float, progress: Optional[bool]) -> None:
    """Resubmit spooled events to the events API.

    PATH is a spool directory, one stream directory in it or one .jsonl spool file [default: the
    default spool directory]. Only streams spooled with the same access key are replayed. Lines
    are sent once (progress is kept, so an interrupted run resumes); refused events go to
    rejected.jsonl. Exit status 1 when events are left in the spool.
    """
    from isstreamer.config import ConfigError, load_config
    from isstreamer.delivery import Policy
    from isstreamer.replay import Replayer, ReplayError
    from isstreamer.spool import default_spool_dir

    if path is None:
        path = default_spool_dir()
        if not os.path.isdir(path):
            click.echo("isstreamer replay: nothing to replay (no spool directory %s)" % path, err=True)
            return
    try:
        cfg = load_config(access_key=access_key, ini_file_location=ini, api_base=api_base)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    if not cfg.access_key:
        raise click.UsageError("no access key: pass --access-key, set ISSTREAMER_ACCESS_KEY or put access_key "
                               "in isstreamer.ini")
    policy = Policy(max_attempts=max_attempts, backoff_max=backoff_max, max_rps=max_rps)
    replayer = Replayer(cfg.access_key, api_base=cfg.api_base if api_base else None, policy=policy,
                        request_timeout=request_timeout, progress=progress,
                        warn=lambda m: click.echo(m, err=True))
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
        click.echo("isstreamer replay: %d stream%s (%d event%s) of another access key left untouched"
                   % (summary.other_streams, "" if summary.other_streams == 1 else "s", summary.other_events,
                      "" if summary.other_events == 1 else "s"), err=True)
    if summary.left:
        raise SystemExit(1)


if __name__ == "__main__":  # pragma: no cover - python -m isstreamer.cli
    main()
