"""What keeps the collector safe to run: the Host check (DNS rebinding), the cross-site write
check and reading keys from a file or the environment instead of the command line (the
connection caps and timeouts are in :mod:`~isstreamer.collector.guard`).
"""

from __future__ import annotations

import ipaddress
import os
from typing import FrozenSet, Iterable, List, Mapping, Optional, Tuple
from urllib.parse import urlsplit

from ..safefile import read_private_text

__all__ = [
    "HostPolicy",
    "cross_site_reason",
    "read_key_file",
    "keys_from_env",
    "KEYS_ENV",
    "ADMIN_KEYS_ENV",
]

#: Environment variables holding accepted access keys / admin keys (comma or whitespace separated).
KEYS_ENV = "ISSTREAMER_COLLECTOR_KEYS"
ADMIN_KEYS_ENV = "ISSTREAMER_COLLECTOR_ADMIN_KEYS"

_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def _split_host(value: str) -> Tuple[str, Optional[int]]:
    """``("example.org", 8080)`` from ``example.org:8080``; IPv6 in brackets; port None if absent."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return value, None
        host, rest = value[1:end], value[end + 1 :]
        port = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        host, _, port = value.partition(":")
    else:
        host, port = value, ""
    try:
        return host.rstrip("."), (int(port) if port else None)
    except ValueError:
        return host, -1


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class HostPolicy:
    """Which ``Host`` headers the collector answers (a browser on a rebinding DNS name sends the
    attacker's name, so refusing unknown names keeps pages on other sites from reading it).

    Allowed: the bound address; ``localhost`` and the loopback addresses when bound to loopback;
    any IP address and this machine's name (also ``NAME.local``) when bound to every interface; plus ``extra`` names
    (``name`` or ``name:port``; ``*`` allows everything). A port, when given, must be the bound one.
    """

    def __init__(self, bound_host: str, port: int, extra: Iterable[str] = ()) -> None:
        self.port = port
        self.any = False
        self.any_ip = False
        self.names = set()
        self.name_ports = set()
        host = bound_host.strip("[]").lower()
        self.names.add(host)
        if host in ("", "0.0.0.0", "::"):
            self.any_ip = True
            self.names.update(_LOOPBACK_NAMES)
            try:
                import socket

                name = socket.gethostname().lower()
                self.names.update({name, name + ".local", socket.getfqdn().lower()})
            except OSError:  # pragma: no cover
                pass
        elif host == "localhost" or (_is_ip(host) and ipaddress.ip_address(host).is_loopback):
            self.names.update(_LOOPBACK_NAMES)
        for item in extra:
            item = item.strip()
            if item == "*":
                self.any = True
            elif item:
                name, p = _split_host(item)
                if p is None:
                    self.names.add(name)
                else:
                    self.name_ports.add((name, p))

    def allows(self, header: Optional[str]) -> bool:
        """Whether a request with this ``Host`` header is answered (no header: yes, not a browser)."""
        if self.any or header is None:
            return True
        host, port = _split_host(header)
        if (host, port) in self.name_ports:
            return True
        if port is not None and port != self.port:
            return False
        return host in self.names or (self.any_ip and _is_ip(host))


def cross_site_reason(headers: Mapping[str, str], allowed_origins: FrozenSet[str]) -> Optional[str]:
    """Why a write looks sent by a page of another site, or None.

    Browsers mark requests with ``Sec-Fetch-Site`` and (for POST and fetch) ``Origin``; scripts
    and curl send neither, so they are never refused. An ``Origin`` listed in
    ``allowed_origins`` is accepted.
    """
    origin = headers.get("Origin")
    if origin is not None and origin.rstrip("/").lower() in allowed_origins:
        return None
    site = headers.get("Sec-Fetch-Site")
    if site is not None and site.strip().lower() not in ("same-origin", "none"):
        return "Sec-Fetch-Site: %s" % site.strip()[:40]
    if origin is not None:
        if origin.strip().lower() == "null":
            return "Origin: null"
        host = headers.get("Host")
        netloc = urlsplit(origin.strip()).netloc.lower()
        if host is None or netloc != host.strip().lower():
            return "Origin %s is not this collector" % origin.strip()[:100]
    return None


def read_key_file(path: str) -> List[str]:
    """Keys of a file, one per line; blank lines and lines starting with ``#`` are skipped.

    The file must be a regular file of this user that no other user may read or write, not a
    symbolic link (:func:`~isstreamer.safefile.read_private_text`; :class:`~isstreamer.safefile.Refused`
    otherwise).
    """
    lines = read_private_text(path).splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def keys_from_env(name: str, environ: Optional[Mapping[str, str]] = None) -> List[str]:
    """Keys of an environment variable (comma or whitespace separated)."""
    raw = (os.environ if environ is None else environ).get(name, "")
    return [k for k in raw.replace(",", " ").split() if k]
