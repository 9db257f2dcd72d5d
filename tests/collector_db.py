"""Looking into a collector's database from the tests, on either backend (a file or a URL)."""

from __future__ import annotations

import sqlite3
from typing import Any, List, Sequence

from isstreamer.collector.dburl import is_postgres_url


def execute(db: str, query: str, args: Sequence[Any] = ()) -> List[tuple]:
    """Run one statement (``?`` placeholders) on a fresh connection, committed; its rows."""
    if is_postgres_url(db):
        import psycopg

        with psycopg.connect(db, autocommit=True) as conn:
            cur = conn.execute(query.replace("?", "%s"), list(args))  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []
    conn = sqlite3.connect(db, timeout=30)
    try:
        with conn:
            return conn.execute(query, list(args)).fetchall()
    finally:
        conn.close()


def stored_text(db: str) -> bytes:
    """Everything the database holds, as bytes to search: the SQLite file (and its write-ahead
    log), or every row of every table of the PostgreSQL database as text."""
    if not is_postgres_url(db):
        out = b""
        for suffix in ("", "-wal"):
            try:
                with open(db + suffix, "rb") as f:
                    out += f.read()
            except FileNotFoundError:
                pass
        return out
    tables = [r[0] for r in execute(db, "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")]
    return b"\n".join(str(row[0]).encode() for t in tables for row in execute(db, 'SELECT t::text FROM "%s" t' % t))
