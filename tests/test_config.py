"""Tests for isstreamer.config: precedence, ini search, parsing, URL validation, key masking."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from isstreamer.config import (
    DEFAULT_API_BASE,
    DEFAULT_OFFLINE_FILE,
    Config,
    ConfigError,
    load_config,
    normalize_api_base,
)

SECRET = "ist_S3cr3tK3yDoNotLeak"
SECRET_BODY = "S3cr3tK3yDoNotLeak"


@pytest.fixture()
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    """Separate, empty fake HOME and working directories."""
    home = tmp_path / "home"
    cwd = tmp_path / "work"
    home.mkdir()
    cwd.mkdir()
    return home, cwd


def write_ini(path: Path, text: str) -> Path:
    """Write an ini file (creating parents) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def load(dirs: tuple[Path, Path], environ: dict[str, str] | None = None, **kwargs: object) -> Config:
    """load_config isolated from the real environment, home and cwd."""
    home, cwd = dirs
    return load_config(environ=environ or {}, home=str(home), cwd=str(cwd), **kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- defaults


def test_defaults_without_ini_or_env(dirs: tuple[Path, Path]) -> None:
    cfg = load(dirs)
    assert cfg == Config(
        access_key="",
        bucket_name="",
        api_base=DEFAULT_API_BASE,
        offline=False,
        offline_file=DEFAULT_OFFLINE_FILE,
        ini_path=None,
    )
    assert DEFAULT_API_BASE == "https://groker.init.st"
    assert DEFAULT_OFFLINE_FILE == "isstreamer_out.csv"


def test_urls() -> None:
    cfg = Config("k", "b", "https://h.example/prefix", False, "f.csv", None)
    assert cfg.events_url == "https://h.example/prefix/api/events"
    assert cfg.buckets_url == "https://h.example/prefix/api/buckets"


def test_config_is_frozen() -> None:
    cfg = Config("k", "b", DEFAULT_API_BASE, False, "f.csv", None)
    with pytest.raises(AttributeError):  # frozen
        cfg.access_key = "other"  # type: ignore[misc]


def test_constructor_arguments(dirs: tuple[Path, Path]) -> None:
    cfg = load(dirs, bucket_name="B", access_key="  ist_abc \n", offline=True, api_base="http://localhost:8080/")
    assert cfg.access_key == "ist_abc"  # whitespace stripped
    assert cfg.bucket_name == "B"
    assert cfg.offline is True
    assert cfg.api_base == "http://localhost:8080"


def test_none_arguments_mean_not_given(dirs: tuple[Path, Path]) -> None:
    home, _ = dirs
    write_ini(
        home / "isstreamer.ini", "[isstreamer.client_config]\naccess_key = ini_key\ndefault_bucket = ini_bucket\n"
    )
    cfg = load(dirs, bucket_name=None, access_key=None)
    assert (cfg.access_key, cfg.bucket_name) == ("ini_key", "ini_bucket")


def test_non_string_argument_rejected_without_echo(dirs: tuple[Path, Path]) -> None:
    with pytest.raises(ConfigError, match="access_key must be a str, got int") as info:
        load(dirs, access_key=123456789)
    assert "123456789" not in str(info.value)


def test_uses_process_environment_home_and_cwd_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "h"
    work = tmp_path / "w"
    work.mkdir()
    write_ini(home / "isstreamer.ini", "[isstreamer.client_config]\ndefault_bucket = from_home\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    monkeypatch.setenv("ISSTREAMER_ACCESS_KEY", "env_key")
    monkeypatch.delenv("ISSTREAMER_BUCKET", raising=False)
    monkeypatch.delenv("ISSTREAMER_API_BASE", raising=False)
    monkeypatch.delenv("ISSTREAMER_OFFLINE", raising=False)
    cfg = load_config()
    assert cfg.access_key == "env_key"
    assert cfg.bucket_name == "from_home"
    assert cfg.ini_path == str(home / "isstreamer.ini")


# ---------------------------------------------------------------------------- ini search


def test_home_ini_wins_over_cwd_ini(dirs: tuple[Path, Path]) -> None:
    home, cwd = dirs
    write_ini(home / "isstreamer.ini", "[isstreamer.client_config]\naccess_key = home_key\n")
    write_ini(cwd / "isstreamer.ini", "[isstreamer.client_config]\naccess_key = cwd_key\n")
    cfg = load(dirs)
    assert cfg.access_key == "home_key"
    assert cfg.ini_path == os.path.join(str(home), "isstreamer.ini")


def test_cwd_ini_used_when_home_has_none(dirs: tuple[Path, Path]) -> None:
    _, cwd = dirs
    write_ini(cwd / "isstreamer.ini", "[isstreamer.client_config]\naccess_key = cwd_key\n")
    cfg = load(dirs)
    assert cfg.access_key == "cwd_key"
    assert cfg.ini_path == os.path.join(str(cwd), "isstreamer.ini")


def test_first_found_wins_even_if_it_lacks_the_option(dirs: tuple[Path, Path]) -> None:
    home, cwd = dirs
    write_ini(home / "isstreamer.ini", "[isstreamer.client_config]\ndefault_bucket = hb\n")
    write_ini(cwd / "isstreamer.ini", "[isstreamer.client_config]\naccess_key = cwd_key\n")
    cfg = load(dirs)
    assert cfg.access_key == ""  # files are not merged
    assert cfg.bucket_name == "hb"


def test_explicit_ini_location_wins_over_search(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    home, _ = dirs
    write_ini(home / "isstreamer.ini", "[isstreamer.client_config]\naccess_key = home_key\n")
    explicit = write_ini(tmp_path / "elsewhere" / "my.ini", "[isstreamer.client_config]\naccess_key = explicit_key\n")
    cfg = load(dirs, ini_file_location=str(explicit))
    assert cfg.access_key == "explicit_key"
    assert cfg.ini_path == str(explicit)


def test_explicit_relative_ini_location_is_relative_to_cwd(dirs: tuple[Path, Path]) -> None:
    _, cwd = dirs
    write_ini(cwd / "conf" / "a.ini", "[isstreamer.client_config]\naccess_key = rel_key\n")
    cfg = load(dirs, ini_file_location=os.path.join("conf", "a.ini"))
    assert cfg.access_key == "rel_key"
    assert cfg.ini_path == os.path.join(str(cwd), "conf", "a.ini")


def test_explicit_ini_location_missing_is_an_error(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "isstreamer.ini"
    with pytest.raises(ConfigError) as info:
        load(dirs, ini_file_location=str(missing))
    assert str(missing) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_directory_at_searched_ini_path_is_unreadable_error(dirs: tuple[Path, Path]) -> None:
    # A directory makes the file unreadable even for root (chmod 000 does not stop root).
    home, _ = dirs
    (home / "isstreamer.ini").mkdir()
    with pytest.raises(ConfigError) as info:
        load(dirs)
    assert str(home / "isstreamer.ini") in str(info.value)
    assert "cannot read" in str(info.value)


def test_directory_at_explicit_ini_path_is_unreadable_error(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    bad = tmp_path / "dir.ini"
    bad.mkdir()
    with pytest.raises(ConfigError, match="cannot read config file") as info:
        load(dirs, ini_file_location=str(bad))
    assert str(bad) in str(info.value)


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0,
    reason="chmod 000 does not block reads for root; covered by the directory-at-path tests",
)
def test_chmod_000_ini_is_unreadable_error(dirs: tuple[Path, Path]) -> None:
    _, cwd = dirs
    path = write_ini(cwd / "isstreamer.ini", "[isstreamer.client_config]\naccess_key = x\n")
    path.chmod(0)
    try:
        with pytest.raises(ConfigError, match="cannot read config file") as info:
            load(dirs)
        assert str(path) in str(info.value)
    finally:
        path.chmod(0o600)


# ---------------------------------------------------------------------------- ini parsing


def test_percent_in_values_is_literal(dirs: tuple[Path, Path]) -> None:
    home, _ = dirs
    write_ini(
        home / "isstreamer.ini",
        "[isstreamer.client_config]\naccess_key = ab%cd%(x)s\ndefault_bucket = 100% humidity\n"
        "offline_file = out_%Y.csv\n",
    )
    cfg = load(dirs)
    assert cfg.access_key == "ab%cd%(x)s"
    assert cfg.bucket_name == "100% humidity"
    assert cfg.offline_file == "out_%Y.csv"


def test_api_config_read_without_client_config(dirs: tuple[Path, Path]) -> None:
    home, _ = dirs
    write_ini(home / "isstreamer.ini", "[isstreamer.api_config]\nstream_api_base = http://10.0.0.5:3000/\n")
    cfg = load(dirs)
    assert cfg.api_base == "http://10.0.0.5:3000"
    assert cfg.access_key == ""
    assert cfg.offline is False


def test_all_ini_options(dirs: tuple[Path, Path]) -> None:
    home, _ = dirs
    write_ini(
        home / "isstreamer.ini",
        "[isstreamer.client_config]\n"
        "access_key = ist_fromini\n"
        "default_bucket = My Bucket\n"
        "offline_mode = true\n"
        "offline_file = ./data/out.csv\n"
        "[isstreamer.api_config]\n"
        "stream_api_base = HTTPS://Proxy.example/is//\n",
    )
    cfg = load(dirs)
    assert cfg.access_key == "ist_fromini"
    assert cfg.bucket_name == "My Bucket"
    assert cfg.offline is True
    assert cfg.offline_file == "./data/out.csv"  # exactly as given, no extra ".csv"
    assert cfg.api_base == "https://Proxy.example/is"


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("false", False),
        ("FALSE", False),
        ("False", False),
        ("0", False),
        ("no", False),
        ("No", False),
        ("off", False),
        ("OFF", False),
        ("", False),
        ("true", True),
        ("1", True),
        ("yes", True),
        ("on", True),
        ("offline", True),
        ("nope", True),
    ],
)
def test_offline_mode_values(dirs: tuple[Path, Path], mode: str, expected: bool) -> None:
    home, _ = dirs
    write_ini(home / "isstreamer.ini", f"[isstreamer.client_config]\noffline_mode = {mode}\n")
    assert load(dirs).offline is expected


def test_offline_mode_missing_is_online(dirs: tuple[Path, Path]) -> None:
    home, _ = dirs
    write_ini(home / "isstreamer.ini", "[isstreamer.client_config]\naccess_key = k\n")
    assert load(dirs).offline is False


def test_access_key_whitespace_and_inline_comment_stripped(dirs: tuple[Path, Path]) -> None:
    home, _ = dirs
    write_ini(
        home / "isstreamer.ini",
        "[isstreamer.client_config]\naccess_key:   example_key   #replace with your real key\n",
    )
    assert load(dirs).access_key == "example_key"


def test_utf8_bom_is_accepted(dirs: tuple[Path, Path]) -> None:
    home, _ = dirs
    (home / "isstreamer.ini").write_bytes(b"\xef\xbb\xbf[isstreamer.client_config]\naccess_key = bom_key\n")
    assert load(dirs).access_key == "bom_key"


@pytest.mark.parametrize(
    "text, fragment",
    [
        (f"access_key = {SECRET}\n[isstreamer.client_config]\n", "line 1"),
        (f"[isstreamer.client_config]\naccess_key = {SECRET}\naccess_key = {SECRET}\n", "twice"),
        (f"[isstreamer.client_config]\naccess_key = {SECRET}\n[isstreamer.client_config]\n", "twice"),
        (f"[isstreamer.client_config]\nthis line {SECRET} is garbage\n", "malformed line"),
    ],
)
def test_malformed_ini_is_config_error_naming_file_not_key(dirs: tuple[Path, Path], text: str, fragment: str) -> None:
    home, _ = dirs
    path = write_ini(home / "isstreamer.ini", text)
    with pytest.raises(ConfigError) as info:
        load(dirs)
    message = str(info.value)
    assert str(path) in message
    assert fragment in message
    assert SECRET_BODY not in message
    assert info.value.__suppress_context__  # the parser's own text (with the line) is hidden


def test_non_utf8_ini_is_config_error(dirs: tuple[Path, Path]) -> None:
    home, _ = dirs
    (home / "isstreamer.ini").write_bytes(b"[isstreamer.client_config]\naccess_key = \xff\xfe\n")
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        load(dirs)


# ---------------------------------------------------------------------------- precedence


def test_env_overrides_ini_and_arguments_override_env(dirs: tuple[Path, Path]) -> None:
    home, _ = dirs
    write_ini(
        home / "isstreamer.ini",
        "[isstreamer.client_config]\naccess_key = ini_key\ndefault_bucket = ini_bucket\n"
        "offline_mode = false\n[isstreamer.api_config]\nstream_api_base = https://ini.example\n",
    )
    env = {
        "ISSTREAMER_ACCESS_KEY": " env_key ",
        "ISSTREAMER_BUCKET": "env_bucket",
        "ISSTREAMER_API_BASE": "https://env.example/",
        "ISSTREAMER_OFFLINE": "true",
    }
    cfg = load(dirs, environ=env)
    assert (cfg.access_key, cfg.bucket_name, cfg.api_base, cfg.offline) == (
        "env_key",
        "env_bucket",
        "https://env.example",
        True,
    )
    cfg = load(
        dirs, environ=env, access_key="arg_key", bucket_name="arg_bucket", api_base="https://arg.example", offline=False
    )
    assert (cfg.access_key, cfg.bucket_name, cfg.api_base, cfg.offline) == (
        "arg_key",
        "arg_bucket",
        "https://arg.example",
        False,
    )


def test_empty_arguments_and_env_values_fall_through(dirs: tuple[Path, Path]) -> None:
    home, _ = dirs
    write_ini(
        home / "isstreamer.ini",
        "[isstreamer.client_config]\naccess_key = ini_key\ndefault_bucket = ini_bucket\n"
        "offline_mode = true\n[isstreamer.api_config]\nstream_api_base = https://ini.example\n",
    )
    env = {"ISSTREAMER_ACCESS_KEY": "  ", "ISSTREAMER_BUCKET": "", "ISSTREAMER_API_BASE": " ", "ISSTREAMER_OFFLINE": ""}
    cfg = load(dirs, environ=env, access_key="   ", bucket_name="", api_base="", offline=None)
    assert (cfg.access_key, cfg.bucket_name, cfg.api_base, cfg.offline) == (
        "ini_key",
        "ini_bucket",
        "https://ini.example",
        True,
    )


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("true", True),
        ("TRUE", True),
        ("1", True),
        ("yes", True),
        ("on", True),
        ("false", False),
        ("False", False),
        ("0", False),
        ("no", False),
        ("off", False),
    ],
)
def test_env_offline_values(dirs: tuple[Path, Path], raw: str, expected: bool) -> None:
    home, _ = dirs
    # the ini says the opposite, so the env value must be what decides
    write_ini(
        home / "isstreamer.ini", f"[isstreamer.client_config]\noffline_mode = {'false' if expected else 'true'}\n"
    )
    assert load(dirs, environ={"ISSTREAMER_OFFLINE": raw}).offline is expected


def test_env_offline_bad_value(dirs: tuple[Path, Path]) -> None:
    with pytest.raises(ConfigError, match="ISSTREAMER_OFFLINE='flase'"):
        load(dirs, environ={"ISSTREAMER_OFFLINE": "flase"})


def test_offline_argument_overrides_env(dirs: tuple[Path, Path]) -> None:
    assert load(dirs, environ={"ISSTREAMER_OFFLINE": "false"}, offline=True).offline is True
    assert load(dirs, environ={"ISSTREAMER_OFFLINE": "true"}, offline=False).offline is False


# ---------------------------------------------------------------------------- API base


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("https://groker.init.st", "https://groker.init.st"),
        ("https://groker.init.st/", "https://groker.init.st"),
        ("  http://localhost:8080///  ", "http://localhost:8080"),
        ("HTTPS://groker.init.st", "https://groker.init.st"),
        ("HtTp://h.example/base/path/", "http://h.example/base/path"),
        ("http://[::1]:9000/x", "http://[::1]:9000/x"),
    ],
)
def test_normalize_api_base_ok(raw: str, expected: str) -> None:
    assert normalize_api_base(raw) == expected


@pytest.mark.parametrize(
    "raw, why",
    [
        ("groker.init.st", "must start with http:// or https://"),
        ("ftp://groker.init.st", "must start with http:// or https://"),
        ("https:/groker.init.st", "must start with http:// or https://"),
        ("", "empty"),
        ("   ", "empty"),
        ("https://", "no host"),
        ("http://:8080/x", "no host"),
        ("http://h.example:99999", "bad host or port"),
        ("http://[::1", "not a valid URL"),
        ("https://gro ker.init.st", "whitespace"),
        ("https://h.example/?a=1", "query string"),
        ("https://h.example/#frag", "fragment"),
    ],
)
def test_normalize_api_base_rejects_with_clear_message(raw: str, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        normalize_api_base(raw)
    message = str(info.value)
    assert why in message
    shown = raw.strip().split("?")[0].split("#")[0]  # a query or fragment may carry the key: masked
    if shown != raw.strip():
        assert repr(shown + "?***") in message and raw.strip() not in message
    else:
        assert repr(shown) in message  # the bad value is shown


def test_normalize_api_base_hides_userinfo_password() -> None:
    with pytest.raises(ConfigError, match="user info") as info:
        normalize_api_base("https://user:hunter2@h.example")
    assert "hunter2" not in str(info.value)


def test_normalize_api_base_rejects_non_string() -> None:
    with pytest.raises(ConfigError, match="must be a str"):
        normalize_api_base(None)  # type: ignore[arg-type]


def test_bad_ini_api_base_names_source_and_value(dirs: tuple[Path, Path]) -> None:
    home, _ = dirs
    path = write_ini(
        home / "isstreamer.ini",
        f"[isstreamer.client_config]\naccess_key = {SECRET}\n"
        "[isstreamer.api_config]\nstream_api_base = groker.init.st\n",
    )
    with pytest.raises(ConfigError) as info:
        load(dirs)
    message = str(info.value)
    assert "stream_api_base" in message and str(path) in message
    assert "'groker.init.st'" in message and "http://" in message
    assert SECRET_BODY not in message


def test_bad_env_api_base_names_variable(dirs: tuple[Path, Path]) -> None:
    with pytest.raises(ConfigError, match="ISSTREAMER_API_BASE.*'www.example'"):
        load(dirs, environ={"ISSTREAMER_API_BASE": "www.example"}, access_key=SECRET)


def test_bad_argument_api_base_message_excludes_key(dirs: tuple[Path, Path]) -> None:
    with pytest.raises(ConfigError, match="api_base argument") as info:
        load(dirs, access_key=SECRET, api_base="nohost")
    assert SECRET_BODY not in str(info.value)


# ---------------------------------------------------------------------------- key masking


def test_repr_and_str_mask_ist_key() -> None:
    cfg = Config(SECRET, "bucket", DEFAULT_API_BASE, False, "f.csv", "/x/isstreamer.ini")
    for text in (repr(cfg), str(cfg), f"{cfg}", repr([cfg])):
        assert SECRET_BODY not in text
        assert "access_key='ist_***'" in text
        assert "bucket_name='bucket'" in text and "/x/isstreamer.ini" in text


def test_repr_masks_non_ist_key_entirely() -> None:
    cfg = Config("legacykey123", "b", DEFAULT_API_BASE, True, "f.csv", None)
    assert "legacykey123" not in repr(cfg)
    assert "access_key='***'" in repr(cfg)


def test_repr_of_empty_key_shows_empty() -> None:
    assert "access_key=''" in repr(Config("", "b", DEFAULT_API_BASE, False, "f.csv", None))


def test_loaded_key_not_in_repr(dirs: tuple[Path, Path]) -> None:
    cfg = load(dirs, environ={"ISSTREAMER_ACCESS_KEY": SECRET})
    assert cfg.access_key == SECRET
    assert SECRET_BODY not in repr(cfg)
