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


if __name__ == "__main__":  # pragma: no cover - python -m isstreamer.cli
    main()
