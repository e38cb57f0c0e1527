"""Profiles and the precedence flags > environment > profile > defaults (`envelope.config`).

In-process checks parse real command lines with the real parser and fill them with
`apply_settings`; the subprocess checks run `envelope` with a temporary HOME and
ENVELOPE_CONFIG, as a user would."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from envelope.cli._common import key_spec
from envelope.cli._output import prepare_output
from envelope.cli.main import build_parser
from envelope.config import (
    ENVIRONMENT,
    SETTINGS,
    Profile,
    apply_settings,
    config_path,
    load_profiles,
    select_profile,
)
from envelope.errors import ConfigurationError
from envelope.keycache import CachePolicy

FULL = """\
[profile.default]
output = "text"

[profile.prod]
key = "local:alias/etl"
home = "kms-home"
region = "eu-west-1"
output = "json"
cache = { ttl = 60, max_objects = 1000, max_bytes = "1G" }
retry = "bulk"
fsync = true

[profile.offline]
key = "file:keys/k.key"
cache = "off"
retry = "none"
fsync = false
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "envelope.toml"
    path.write_text(FULL)
    return path


def parsed(argv: list[str], env: dict[str, str]) -> argparse.Namespace:
    """`argv` parsed and filled in as `envelope` does before running a command."""
    args = build_parser(argv).parse_args(argv)
    prepare_output(args)
    apply_settings(args, env)
    return args


def test_every_setting_is_a_profile_field_and_has_a_variable() -> None:
    names = set(Profile.__dataclass_fields__) - {"name", "source"}
    assert names == set(SETTINGS) == set(ENVIRONMENT)


def test_the_example_config_loads() -> None:
    example = Path(__file__).resolve().parent.parent / "configs" / "envelope.toml"
    profiles = load_profiles(example)
    assert "default" in profiles and len(profiles) >= 2
    for p in profiles.values():
        assert p.source == str(example)


def test_each_key_of_a_profile(config: Path) -> None:
    profiles = load_profiles(config)
    prod, offline = profiles["prod"], profiles["offline"]
    assert prod.key == "local:alias/etl"
    assert prod.home == str(config.parent / "kms-home")  # relative to the file's folder
    assert prod.region == "eu-west-1" and prod.output == "json" and prod.retry == "bulk"
    assert prod.fsync is True
    assert prod.cache == CachePolicy(
        ttl=60.0, decrypt_ttl=60.0, max_objects=1000, max_bytes=1 << 30
    )
    assert offline.key == "file:" + str(config.parent / "keys" / "k.key")
    assert offline.cache is not None and offline.cache.enabled is False
    assert offline.retry == "none" and offline.fsync is False
    assert profiles["default"].output == "text" and profiles["default"].key is None


def test_profile_fills_what_flags_and_environment_leave(config: Path) -> None:
    env = {"ENVELOPE_CONFIG": str(config)}
    args = parsed(["encrypt", "a", "b", "--profile", "prod"], env)
    assert args.key == "local:alias/etl" and args.home == str(config.parent / "kms-home")
    assert args.output_format == "json" and args.fsync is True and args.retry == "bulk"
    assert args.region == "eu-west-1"
    assert args.setting_sources["key"].startswith("profile prod (")
    spec = key_spec(args, "encrypt")
    assert spec.key == "local:alias/etl" and spec.retry == "bulk"
    assert spec.cache is not None and spec.cache.max_objects == 1000
    assert spec.home == str(config.parent / "kms-home")


def test_flags_beat_environment_beats_profile_beats_default(config: Path) -> None:
    env = {
        "ENVELOPE_CONFIG": str(config),
        "ENVELOPE_PROFILE": "prod",
        "ENVELOPE_KEY": "local:alias/from-env",
        "ENVELOPE_OUTPUT": "table",
        "ENVELOPE_FSYNC": "0",
        "ENVELOPE_RETRY": "default",
        "ENVELOPE_CACHE": "ttl=30,max_bytes=64M",
    }
    # environment over profile
    args = parsed(["encrypt", "a", "b"], env)
    assert args.key == "local:alias/from-env" and args.output_format == "table"
    assert args.fsync is False and args.retry == "default"
    assert args.cache == CachePolicy(ttl=30.0, decrypt_ttl=30.0, max_bytes=64 << 20)
    assert args.setting_sources["output"] == "ENVELOPE_OUTPUT"
    assert args.home == str(config.parent / "kms-home")  # not in the environment: profile
    # flags over environment
    args = parsed(
        ["encrypt", "a", "b", "--key", "alias/flag", "--fsync", "--output", "text", "--home", "/h"],
        env,
    )
    assert args.key == "alias/flag" and args.fsync is True and args.output_format == "text"
    assert args.home == "/h" and args.setting_sources["key"] == "flag"
    # an explicit "off" flag beats a profile's "on"
    args = parsed(
        ["encrypt", "a", "b", "--no-fsync", "--profile", "prod"], {"ENVELOPE_CONFIG": str(config)}
    )
    assert args.fsync is False and args.setting_sources["fsync"] == "flag"
    # a key file is a key: the profile's key does not join it
    args = parsed(
        ["encrypt", "a", "b", "--key-file", "k", "--profile", "prod"],
        {"ENVELOPE_CONFIG": str(config)},
    )
    assert args.key is None and key_spec(args, "encrypt").key_files == ("k",)
    # nothing anywhere: the defaults
    args = parsed(["encrypt", "a", "b"], {"ENVELOPE_CONFIG": ""})
    assert (args.key, args.home, args.output_format, args.cache, args.retry, args.fsync) == (
        None,
        None,
        None,
        None,
        None,
        False,
    )
    assert set(args.setting_sources.values()) == {"default"}


def test_the_default_profile_applies_when_none_is_named(config: Path) -> None:
    args = parsed(["keys", "list"], {"ENVELOPE_CONFIG": str(config)})
    assert args.output_format == "text"
    args = parsed(["keys", "list"], {"ENVELOPE_CONFIG": str(config), "ENVELOPE_PROFILE": "prod"})
    assert args.output_format == "json" and args.region == "eu-west-1"


def test_keys_commands_take_no_default_key_from_a_profile(config: Path) -> None:
    """`keys alias list --key` filters by key: a profile's default key must not fill it."""
    args = parsed(["keys", "alias", "list", "--profile", "prod"], {"ENVELOPE_CONFIG": str(config)})
    assert args.key is None


def test_profile_flag_before_or_after_the_command(config: Path) -> None:
    env = {"ENVELOPE_CONFIG": str(config)}
    assert parsed(["--profile", "prod", "keys", "list"], env).output_format == "json"
    assert parsed(["keys", "list", "--profile", "prod"], env).output_format == "json"
    assert parsed(["keys", "--profile", "prod", "list"], env).output_format == "json"
    assert parsed(["lake", "verify", "p", "--profile", "offline"], env).retry == "none"


# -- errors -------------------------------------------------------------------------------


def test_a_missing_profile_named_explicitly_is_an_error(config: Path) -> None:
    with pytest.raises(
        ConfigurationError,
        match=r"profile 'nope' \(--profile\) not found in .*"
        r"profiles: default, offline, prod",
    ):
        select_profile("nope", {"ENVELOPE_CONFIG": str(config)})
    with pytest.raises(ConfigurationError, match="ENVELOPE_PROFILE"):
        select_profile(None, {"ENVELOPE_CONFIG": str(config), "ENVELOPE_PROFILE": "nope"})
    # $ENVELOPE_CONFIG naming no file is an error, a profile named or not: a typo in it ran
    # on the defaults without a word (review)
    for named in ("prod", None):
        with pytest.raises(ConfigurationError, match=r"ENVELOPE_CONFIG names .*absent.toml"):
            select_profile(named, {"ENVELOPE_CONFIG": str(config.parent / "absent.toml")})
    # not named: the default path absent, or no default profile, is fine
    home = {"XDG_CONFIG_HOME": str(config.parent / "nowhere")}
    assert select_profile(None, home) is None
    with pytest.raises(ConfigurationError, match="no config file"):
        select_profile("prod", home)
    config.write_text('[profile.x]\noutput = "json"\n')
    assert select_profile(None, {"ENVELOPE_CONFIG": str(config)}) is None


def test_malformed_toml_names_the_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[profile.a]\noutput = "json"\nregion = eu-west-1\n')
    with pytest.raises(ConfigurationError) as e:
        load_profiles(bad)
    assert str(bad) in str(e.value) and "line 3" in str(e.value)


def test_a_config_file_that_is_not_utf8_or_not_a_file_is_refused(tmp_path: Path) -> None:
    """A file of other bytes ended in a UnicodeDecodeError traceback (exit 1); a folder
    named as the config file was passed over without a word (review)."""
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"\xff\xfe[profile.a]\n")
    with pytest.raises(ConfigurationError, match="not UTF-8") as e:
        load_profiles(bad)
    assert str(bad) in str(e.value)
    with pytest.raises(ConfigurationError, match="is not a file"):
        parsed(["encrypt", "a", "b"], {"ENVELOPE_CONFIG": str(tmp_path)})
    r = subprocess.run(
        [sys.executable, "-m", "envelope.cli.main", "keys", "list"],
        capture_output=True,
        text=True,
        env={**os.environ, "ENVELOPE_CONFIG": str(bad), "ENVELOPE_HOME": str(tmp_path / "h")},
        timeout=60,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr and "not UTF-8" in r.stderr


@pytest.mark.parametrize(
    "flags", [["--home", ""], ["--key", ""], ["--as", ""], ["--profile", ""]]
)
def test_an_empty_flag_is_refused(flags: list[str]) -> None:
    """`--home "$DIR"` with DIR unset put a new KMS (root key included) in the working
    directory; `--key "$KEY"` sealed under the default key. Both are usage errors now."""
    with pytest.raises(ConfigurationError, match=f"{flags[0]} is empty"):
        parsed(["encrypt", "a", "b", *flags], {"ENVELOPE_CONFIG": ""})


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[profile.a]\nkeys = "x"\n', "unknown key 'keys'"),
        ('[profiles.a]\nkey = "x"\n', "unknown top-level key or section 'profiles'"),
        ('output = "json"\n', "unknown top-level key or section 'output'"),
        ('[profile.a]\noutput = "yaml"\n', "output must be one of json, text, table"),
        ('[profile.a]\nretry = "forever"\n', "retry must be one of default, bulk, none"),
        ('[profile.a]\nfsync = "yes"\n', "fsync must be true or false"),
        ('[profile.a]\nkey = ""\n', "key must be a non-empty string"),
        ("[profile.a]\nregion = 3\n", "region must be a non-empty string"),
        ('[profile.a]\ncache = "on"\n', 'cache must be "off" or a table'),
        ("[profile.a]\ncache = { ttl = 0 }\n", "cache ttl must be"),
        ('[profile.a]\ncache = { max_bytes = "lots" }\n', "cache max_bytes must be a whole"),
        ("[profile.a]\ncache = { size = 1 }\n", "unknown cache setting 'size'"),
        ('[profile.a]\nhome = "a\\u0000b"\n', "home holds a NUL character"),
        ("[profile]\na = 1\n", r"\[profile.a\] must be a table"),
    ],
)
def test_bad_profiles_are_refused_with_file_and_profile(
    tmp_path: Path, body: str, message: str
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(body)
    with pytest.raises(ConfigurationError, match=message) as e:
        load_profiles(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        ("ENVELOPE_OUTPUT", "yaml", r"\$ENVELOPE_OUTPUT: output must be one of"),
        ("ENVELOPE_FSYNC", "maybe", r"\$ENVELOPE_FSYNC: fsync must be one of"),
        ("ENVELOPE_RETRY", "lots", r"\$ENVELOPE_RETRY: retry must be one of"),
        ("ENVELOPE_CACHE", "ttl", r"\$ENVELOPE_CACHE: cache must be 'off' or KEY=VALUE"),
        ("ENVELOPE_CACHE", "ttl=1e9", r"\$ENVELOPE_CACHE: cache ttl must be"),
    ],
)
def test_bad_environment_values_are_refused(var: str, value: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parsed(["encrypt", "a", "b"], {"ENVELOPE_CONFIG": "", var: value})


def test_environment_cache_off_and_empty_values_are_unset() -> None:
    args = parsed(
        ["encrypt", "a", "b"], {"ENVELOPE_CONFIG": "", "ENVELOPE_CACHE": "off", "ENVELOPE_KEY": ""}
    )
    assert args.cache is not None and args.cache.enabled is False
    assert args.key is None and args.setting_sources["key"] == "default"


def test_config_path_default_and_overrides(tmp_path: Path) -> None:
    assert config_path({"ENVELOPE_CONFIG": str(tmp_path / "x.toml")}) == str(tmp_path / "x.toml")
    assert config_path({"ENVELOPE_CONFIG": "~/x.toml"}) == os.path.expanduser("~/x.toml")
    assert config_path({"ENVELOPE_CONFIG": ""}) is None
    got = config_path({"XDG_CONFIG_HOME": str(tmp_path)})
    assert got == str(tmp_path / "envelope" / "config.toml")
    default = config_path({})
    assert default is not None
    assert Path(default).parts[-3:] == (".config", "envelope", "config.toml")


# -- as a user runs it ---------------------------------------------------------------------


def envelope(*args: str, home: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ENVELOPE_")}
    return subprocess.run(
        [sys.executable, "-m", "envelope.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**base, "HOME": str(home), **env},
    )


def test_cli_profiles_end_to_end(tmp_path: Path) -> None:
    """The default config path under a temporary HOME; a profile's home, Region, output and
    key file reach the commands; a missing or malformed config is exit 2 with its name."""
    cfg_dir = tmp_path / ".config" / "envelope"
    cfg_dir.mkdir(parents=True)
    (cfg_dir / "config.toml").write_text(
        '[profile.default]\nhome = "kms"\nregion = "eu-north-1"\noutput = "text"\n\n'
        '[profile.offline]\nkey = "file:my.key"\noutput = "json"\n'
    )
    env = {"XDG_CONFIG_HOME": str(tmp_path / ".config")}
    r = envelope("keys", "create", "--query", "KeyMetadata.Arn", home=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("arn:aws:kms:eu-north-1:")  # text, the profile's Region
    assert (cfg_dir / "kms" / "kms.sqlite3").exists()  # the profile's home, beside the file
    r = envelope("keys", "list", "--output", "json", home=tmp_path, env=env)
    assert len(json.loads(r.stdout)["Keys"]) == 1  # flag over profile
    r = envelope("keys", "list", home=tmp_path, env={**env, "ENVELOPE_REGION": "us-east-1"})
    assert r.returncode == 0 and r.stdout == ""  # environment over profile: another Region
    # the offline profile's key file, named relative to the config file
    assert envelope("keygen", str(cfg_dir / "my.key"), home=tmp_path, env=env).returncode == 0
    src = tmp_path / "in"
    src.write_bytes(b"data")
    r = envelope(
        "--profile",
        "offline",
        "encrypt",
        str(src),
        str(tmp_path / "out"),
        "--json",
        home=tmp_path,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["wrapped_keys"][0]["provider_id"] == "file"
    r = envelope(
        "decrypt",
        str(tmp_path / "out"),
        "-",
        home=tmp_path,
        env={**env, "ENVELOPE_PROFILE": "offline"},
    )
    assert r.returncode == 0 and r.stdout == "data"
    r = envelope("keys", "list", "--profile", "nope", home=tmp_path, env=env)
    assert r.returncode == 2 and "profile 'nope'" in r.stderr and "offline" in r.stderr
    (cfg_dir / "config.toml").write_text("[profile.default\n")
    r = envelope("keys", "list", home=tmp_path, env=env)
    assert r.returncode == 2 and str(cfg_dir / "config.toml") in r.stderr
    assert "line 1" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    ("argv", "env", "where"),
    [
        (["keys", "list"], {"ENVELOPE_REGION": "mars-1"}, r"\$ENVELOPE_REGION"),
        (["keys", "list", "--region", "xx"], {}, "--region"),
        (["keys", "list"], {"ENVELOPE_PRINCIPAL": "bob"}, r"\$ENVELOPE_PRINCIPAL"),
        (["encrypt", "a", "b", "--as", "bob"], {}, "--as"),
    ],
)
def test_a_bad_region_or_principal_is_a_usage_error_naming_its_source(
    argv: list[str], env: dict[str, str], where: str
) -> None:
    """They reached the KMS, which refused them as a KMS error (exit 3) naming neither the
    variable nor the profile they came from (review)."""
    with pytest.raises(ConfigurationError, match=f"^{where}: .* is not a"):
        parsed(argv, {"ENVELOPE_CONFIG": "", **env})


def test_a_bad_region_in_a_profile_names_the_file_and_profile(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[profile.default]\nregion = "mars-1"\n')
    with pytest.raises(ConfigurationError, match=r"profile default \(.*c\.toml\): 'mars-1'"):
        parsed(["keys", "list"], {"ENVELOPE_CONFIG": str(path)})
