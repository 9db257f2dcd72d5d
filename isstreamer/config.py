"""Configuration loading for isstreamer (constructor arguments, environment, ``isstreamer.ini``).

Precedence, highest first: a non-empty constructor argument, the environment
(``ISSTREAMER_ACCESS_KEY``, ``ISSTREAMER_BUCKET``, ``ISSTREAMER_API_BASE``, ``ISSTREAMER_OFFLINE``),
the ``isstreamer.ini`` file, then the defaults.  The ini file is searched like ISStreamer 2.0.0:
``ini_file_location`` if given, else ``~/isstreamer.ini`` then ``./isstreamer.ini`` (first found
wins).  The access key never appears in a repr, str or exception message produced here.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Mapping

from . import lazy
from .options import API_BASE, OFFLINE_FILE
from .record import record

if TYPE_CHECKING:
    import configparser

__all__ = [
    "DEFAULT_API_BASE",
    "DEFAULT_OFFLINE_FILE",
    "INI_FILE_NAME",
    "ConfigError",
    "Config",
    "load_config",
    "normalize_api_base",
]

DEFAULT_API_BASE = API_BASE
"""Events API base used when nothing else is configured (as in ISStreamer 2.0.0)."""

DEFAULT_OFFLINE_FILE = OFFLINE_FILE
"""Offline-mode CSV file, relative to the current working directory."""

INI_FILE_NAME = "isstreamer.ini"
"""Name of the config file searched in the home directory and then the working directory."""

_CLIENT_SECTION = "isstreamer.client_config"
_API_SECTION = "isstreamer.api_config"

_ENV_ACCESS_KEY = "ISSTREAMER_ACCESS_KEY"
_ENV_BUCKET = "ISSTREAMER_BUCKET"
_ENV_API_BASE = "ISSTREAMER_API_BASE"
_ENV_OFFLINE = "ISSTREAMER_OFFLINE"

_INI_ONLINE_VALUES = frozenset({"false", "0", "no", "off"})
_ENV_TRUE = frozenset({"true", "1", "yes", "on"})
_ENV_FALSE = frozenset({"false", "0", "no", "off"})

# A trailing "  # comment" / "  ; comment" after an access key (seen in Initial State tutorials:
# ``access_key: example_key #replace with your real access key``).  Keys contain no whitespace.
_KEY_INLINE_COMMENT = re.compile(r"\s+[#;].*\Z", re.DOTALL)
_WHITESPACE_OR_CONTROL = re.compile(r"[\s\x00-\x1f\x7f]")


class ConfigError(ValueError):
    """Invalid or unreadable isstreamer configuration (bad ini file, bad API base, bad env value)."""


def _mask_key(key: str) -> str:
    """Return a display form of an access key that reveals at most its public ``ist_`` prefix."""
    if not key:
        return ""
    if key.startswith("ist_"):
        return "ist_***"
    return "***"


@record(frozen=True)
class Config:
    """Resolved Streamer configuration.

    ``access_key`` is masked in ``repr``/``str``; ``ini_path`` is the ini file that was read
    (``None`` when none was found).
    """

    access_key: str
    bucket_name: str
    api_base: str
    offline: bool
    offline_file: str
    ini_path: str | None

    def __repr__(self) -> str:
        """Repr with the access key masked (``'ist_***'`` or ``'***'``)."""
        return (
            f"Config(access_key={_mask_key(self.access_key)!r}, bucket_name={self.bucket_name!r}, "
            f"api_base={self.api_base!r}, offline={self.offline!r}, "
            f"offline_file={self.offline_file!r}, ini_path={self.ini_path!r})"
        )

    __str__ = __repr__

    @property
    def events_url(self) -> str:
        """URL of the events endpoint: ``api_base + "/api/events"``."""
        return self.api_base + "/api/events"

    @property
    def buckets_url(self) -> str:
        """URL of the bucket-creation endpoint: ``api_base + "/api/buckets"``."""
        return self.api_base + "/api/buckets"


def normalize_api_base(base: str) -> str:
    """Validate and normalize an API base URL.

    Surrounding whitespace is stripped, the scheme must be ``http`` or ``https`` (any case; it is
    lower-cased) and a host is required.  A path prefix is kept; trailing slashes are removed.
    Query strings, fragments, user info and embedded whitespace are rejected.  Raises
    :class:`ConfigError` with a message that shows the bad value.
    """
    return _normalize_api_base(base, "API base")


def _normalize_api_base(base: object, source: str) -> str:
    """Implementation of :func:`normalize_api_base`; ``source`` names where the value came from."""
    if not isinstance(base, str):
        raise ConfigError(f"isstreamer: {source} must be a str like {DEFAULT_API_BASE!r}, got {type(base).__name__}")
    value = base.strip()
    if value == DEFAULT_API_BASE:  # the common case, normalized already (and urllib.parse not imported)
        return value
    # never echo a query string, fragment or user info: they may carry the access key
    safe = re.sub(r"[?#].*$", "?***", value)
    safe = re.sub(r"//[^/@]*@", "//***@", safe)

    def bad(why: str, shown: str | None = None) -> ConfigError:
        return ConfigError(
            f"isstreamer: invalid {source} {safe if shown is None else shown!r}: {why} "
            f"(expected something like {DEFAULT_API_BASE!r})"
        )

    if not value:
        raise bad("it is empty")
    if _WHITESPACE_OR_CONTROL.search(value):
        raise bad("it contains whitespace or control characters")
    scheme, sep, rest = value.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        raise bad("it must start with http:// or https://")
    try:
        parts = lazy.load("urllib.parse").urlsplit(scheme.lower() + "://" + rest)
    except ValueError:
        raise bad("it is not a valid URL") from None
    netloc = parts.netloc
    if "@" in netloc:
        raise bad(
            "user info (user:password@) is not supported in the API base",
            shown=f"{scheme}://***@{netloc.rpartition('@')[2]}{parts.path}",
        )
    try:
        hostname = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise bad("it is not a valid URL (bad host or port)") from None
    if not hostname:
        raise bad("it has no host name")
    if parts.query or "?" in value:
        raise bad("it must not contain a query string ('?')")
    if parts.fragment or "#" in value:
        raise bad("it must not contain a fragment ('#')")
    path = parts.path.rstrip("/")
    return f"{parts.scheme}://{netloc}{path}"


def _read_ini(path: str) -> configparser.RawConfigParser:
    """Read and parse one ini file; any failure is a :class:`ConfigError` naming the file.

    Parse-error messages deliberately omit the offending line text (it may hold the access key).
    """
    configparser = lazy.load("configparser")  # only when an ini file exists (start-up time)
    parser = configparser.RawConfigParser()
    try:
        with open(path, encoding="utf-8-sig") as fh:
            parser.read_file(fh, source=path)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"isstreamer: cannot read config file {path!r}: {reason}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"isstreamer: cannot read config file {path!r}: it is not valid UTF-8 text") from None
    except configparser.Error as exc:
        raise ConfigError(f"isstreamer: cannot parse config file {path!r}: {_describe_parse_error(exc)}") from None
    return parser


def _describe_parse_error(exc: configparser.Error) -> str:
    """Describe a configparser error by kind and line number only, never by line content."""
    configparser = lazy.load("configparser")
    if isinstance(exc, configparser.MissingSectionHeaderError):
        return f"line {exc.lineno}: an option appears before any [section] header"
    if isinstance(exc, configparser.DuplicateSectionError):
        return f"line {exc.lineno}: section [{exc.section}] appears twice"
    if isinstance(exc, configparser.DuplicateOptionError):
        return f"line {exc.lineno}: option {exc.option!r} appears twice in [{exc.section}]"
    if isinstance(exc, configparser.ParsingError):
        lines = ", ".join(str(lineno) for lineno, _line in exc.errors) or "?"
        return f"malformed line(s) {lines} (expected 'name = value' or '[section]')"
    return f"{type(exc).__name__}"


def _find_ini(ini_file_location: str | None, home: str, cwd: str) -> str | None:
    """Return the ini path to read, or ``None`` when no file is configured or found."""
    if ini_file_location is not None and ini_file_location != "":
        if not isinstance(ini_file_location, (str, os.PathLike)):
            raise ConfigError(
                f"isstreamer: ini_file_location must be a path string, got {type(ini_file_location).__name__}"
            )
        path = os.fspath(ini_file_location)
        if path == "~" or path.startswith("~/") or path.startswith("~" + os.sep):
            path = home + path[1:]
        path = os.path.join(cwd, path)
        if not os.path.exists(path):
            raise ConfigError(f"isstreamer: ini_file_location {path!r} does not exist or is not accessible")
        return path
    for directory in (home, cwd):
        candidate = os.path.join(directory, INI_FILE_NAME)
        if os.path.exists(candidate):
            return candidate
    return None


def _ini_get(parser: configparser.RawConfigParser | None, section: str, option: str) -> str:
    """Return an ini option's value ('' when the file, section or option is missing)."""
    if parser is None or not parser.has_option(section, option):
        return ""
    return parser.get(section, option)


def _parse_env_offline(raw: str) -> bool:
    """Parse ``ISSTREAMER_OFFLINE`` (true/false, 1/0, yes/no, on/off; any case)."""
    word = raw.strip().lower()
    if word in _ENV_TRUE:
        return True
    if word in _ENV_FALSE:
        return False
    raise ConfigError(
        f"isstreamer: environment variable {_ENV_OFFLINE}={raw!r} is not a boolean; "
        "use true/false (also 1/0, yes/no, on/off)"
    )


def _str_arg(name: str, value: object) -> str:
    """Accept ``None`` as '' (2.0.0 scripts pass it) and reject non-strings without echoing them."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ConfigError(f"isstreamer: {name} must be a str, got {type(value).__name__}")
    return value


def load_config(
    *,
    bucket_name: str = "",
    access_key: str = "",
    ini_file_location: str | None = None,
    offline: bool | None = None,
    api_base: str | None = None,
    environ: Mapping[str, str] | None = None,
    home: str | None = None,
    cwd: str | None = None,
) -> Config:
    """Resolve the configuration: constructor argument > environment > ``isstreamer.ini`` > default.

    ``environ``, ``home`` and ``cwd`` default to ``os.environ``, the user's home directory and
    the current directory (tests pass them explicitly).  Empty strings count as "not given" at
    every level.  Raises :class:`ConfigError` for a missing ``ini_file_location``, an unreadable
    or malformed ini file, a bad API base or a bad ``ISSTREAMER_OFFLINE`` value.
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    home_dir = os.path.expanduser("~") if home is None else home
    cwd_dir = os.getcwd() if cwd is None else cwd
    bucket_arg = _str_arg("bucket_name", bucket_name)
    key_arg = _str_arg("access_key", access_key).strip()
    base_arg = _str_arg("api_base", api_base).strip()

    ini_path = _find_ini(ini_file_location, home_dir, cwd_dir)
    parser = _read_ini(ini_path) if ini_path is not None else None

    # access key
    key = key_arg
    if not key:
        key = env.get(_ENV_ACCESS_KEY, "").strip()
    if not key:
        key = _KEY_INLINE_COMMENT.sub("", _ini_get(parser, _CLIENT_SECTION, "access_key").strip())

    # bucket name
    bucket = bucket_arg or env.get(_ENV_BUCKET, "") or _ini_get(parser, _CLIENT_SECTION, "default_bucket")

    # API base (api_config is read even when client_config is absent)
    if base_arg:
        base = _normalize_api_base(base_arg, "api_base argument")
    elif env.get(_ENV_API_BASE, "").strip():
        base = _normalize_api_base(env[_ENV_API_BASE], f"{_ENV_API_BASE} environment variable")
    else:
        ini_base = _ini_get(parser, _API_SECTION, "stream_api_base").strip()
        if ini_base:
            base = _normalize_api_base(ini_base, f"stream_api_base in {ini_path!r}")
        else:
            base = DEFAULT_API_BASE

    # offline mode
    if offline is not None:
        is_offline = bool(offline)
    elif env.get(_ENV_OFFLINE, "").strip():
        is_offline = _parse_env_offline(env[_ENV_OFFLINE])
    else:
        mode = _ini_get(parser, _CLIENT_SECTION, "offline_mode").strip()
        is_offline = bool(mode) and mode.lower() not in _INI_ONLINE_VALUES

    offline_file = _ini_get(parser, _CLIENT_SECTION, "offline_file").strip() or DEFAULT_OFFLINE_FILE

    return Config(
        access_key=key,
        bucket_name=bucket,
        api_base=base,
        offline=is_offline,
        offline_file=offline_file,
        ini_path=ini_path,
    )
