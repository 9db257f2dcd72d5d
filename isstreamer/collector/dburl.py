"""Naming the collector's database: a file path (SQLite) or a ``postgresql://`` URL, and how a
URL is shown without the password it may carry.

This module imports nothing heavy, so that ``isstreamer.cli`` may use it before the collector
is loaded.
"""

from __future__ import annotations

import re

__all__ = ["is_postgres_url", "masked"]

_SCHEMES = ("postgresql://", "postgres://")
#: ``user:password@`` in a URL's authority part.
_USERINFO_PASSWORD = re.compile(r"^([a-z]+://[^:@/?#]*):[^@/?#]*@", re.IGNORECASE)
#: ``password=...`` in a URL's query or a ``key=value`` connection string.
_PASSWORD_PARAM = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^&\s]*)", re.IGNORECASE)


def is_postgres_url(db: str) -> bool:
    """Whether ``--db`` names a PostgreSQL database (``postgresql://`` or ``postgres://``)."""
    return db.lower().startswith(_SCHEMES)


def masked(db: str) -> str:
    """``db`` fit to print: a password in the URL's user part or in a ``password=`` parameter
    is replaced by ``***`` (prefer ``PGPASSFILE`` or peer authentication: then there is none)."""
    db = _USERINFO_PASSWORD.sub(r"\1:***@", db)
    return _PASSWORD_PARAM.sub(r"\1***", db)
