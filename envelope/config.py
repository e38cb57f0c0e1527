"""Settings for the command line: a TOML file of named profiles, and the one precedence rule.

The file is ``$ENVELOPE_CONFIG``, else ``$XDG_CONFIG_HOME/envelope/config.toml`` (default
``~/.config/envelope/config.toml``). It is not kept in the KMS home (``~/.envelope``): the home
is the KMS's state (its store and its root-key secret), which is backed up, restored, moved
and deleted as a whole, and the config is what chooses the home. An empty ``ENVELOPE_CONFIG``
reads no file at all. Example: ``configs/envelope.toml``.

Profiles are tables named ``[profile.NAME]`` (as the AWS CLI's ``[profile NAME]``; the prefix
leaves the top level free for later sections, and no profile name can clash with one). Each
holds any of::

    key    = "local:alias/etl"        # default key URI (encrypt; decrypt also tries it)
    home   = "/srv/envelope-kms"      # embedded KMS home
    region = "eu-west-1"              # Region of the embedded KMS
    output = "json"                   # json | text | table
    cache  = { ttl = 300, max_objects = 1048576, max_bytes = "1T" }   # or "off"
    retry  = "bulk"                   # default | bulk | none
    fsync  = true                     # durability of written outputs

The profile is ``--profile NAME``, else ``$ENVELOPE_PROFILE``, else ``[profile.default]`` when
the file has one. A profile named explicitly that does not exist is an error; so is any
unknown section, key or value (a typo must not silently fall back to a default).

Precedence, for every setting, in `apply_settings` and nowhere else: a command-line flag,
then the environment variable, then the profile, then the built-in default. Relative paths
in the file (``home``, a ``file:`` key) are relative to the file's folder.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError

if TYPE_CHECKING:
    from .keycache import CachePolicy

__all__ = (
    "CONFIG_ENV",
    "ENVIRONMENT",
    "OUTPUTS",
    "PROFILE_ENV",
    "RETRY_PROFILES",
    "SETTINGS",
    "Profile",
    "apply_settings",
    "config_path",
    "load_profiles",
    "select_profile",
)

CONFIG_ENV = "ENVELOPE_CONFIG"
PROFILE_ENV = "ENVELOPE_PROFILE"

#: Every setting a profile may hold, in the order the docs list them.
SETTINGS = ("key", "home", "region", "principal", "output", "cache", "retry", "fsync")

#: The environment variable of each setting (an empty value counts as unset).
ENVIRONMENT: Mapping[str, str] = {
    "key": "ENVELOPE_KEY",
    "home": "ENVELOPE_HOME",
    "region": "ENVELOPE_REGION",
    "principal": "ENVELOPE_PRINCIPAL",
    "output": "ENVELOPE_OUTPUT",
    "cache": "ENVELOPE_CACHE",
    "retry": "ENVELOPE_RETRY",
    "fsync": "ENVELOPE_FSYNC",
}

#: The attribute of an argparse namespace each setting fills (`--output` is stored as
#: `output_format`: `output` is the OUT path of encrypt/decrypt).
_ATTRIBUTE: Mapping[str, str] = {s: s for s in SETTINGS} | {"output": "output_format"}
#: The flag of a setting, where it is not --SETTING.
_FLAGS: Mapping[str, str] = {"principal": "--as"}

OUTPUTS = ("json", "text", "table")
RETRY_PROFILES = ("default", "bulk", "none")
_CACHE_KEYS = ("ttl", "max_objects", "max_bytes")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


@dataclass(frozen=True)
class Profile:
    """One profile's settings as written (None: not set), and where it came from."""

    name: str
    source: str
    key: str | None = None
    home: str | None = None
    region: str | None = None
    principal: str | None = None
    output: str | None = None
    cache: CachePolicy | None = field(default=None, repr=False)
    retry: str | None = None
    fsync: bool | None = None


def config_path(environ: Mapping[str, str] | None = None) -> str | None:
    """The config file to read (it may not exist), or None when $ENVELOPE_CONFIG is empty.

    Plain `os.path`, not `pathlib`: every command reads this at start-up, and pathlib (with the
    `urllib.parse` it imports) would add to every command's start-up time."""
    env = os.environ if environ is None else environ
    explicit = env.get(CONFIG_ENV)
    if explicit is not None:
        return os.path.expanduser(explicit) if explicit else None
    base = env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "envelope", "config.toml")


def load_profiles(path: str | os.PathLike[str]) -> dict[str, Profile]:
    """Every profile of the file at `path`, checked. A file that is not TOML is an error that
    names the file and the line; so is a profile with an unknown key or a bad value."""
    from ._toml import read_toml

    doc = read_toml(path, "the config file")
    unknown = sorted(set(doc) - {"profile"})
    if unknown:
        raise ConfigurationError(
            f"{path}: unknown top-level key or section {unknown[0]!r} (profiles are "
            "[profile.NAME] tables)"
        )
    table = doc.get("profile", {})
    if not isinstance(table, dict):
        raise ConfigurationError(f"{path}: 'profile' must be a table of [profile.NAME] tables")
    profiles: dict[str, Profile] = {}
    for name, body in table.items():
        if not isinstance(body, dict):
            raise ConfigurationError(f"{path}: [profile.{name}] must be a table")
        profiles[name] = _profile(path, name, body)
    return profiles


def _profile(path: str | os.PathLike[str], name: str, body: dict[str, Any]) -> Profile:
    where = f"{path}: [profile.{name}]"
    unknown = sorted(set(body) - set(SETTINGS))
    if unknown:
        raise ConfigurationError(
            f"{where}: unknown key {unknown[0]!r} (known: {', '.join(SETTINGS)})"
        )
    base = os.path.dirname(os.fspath(path))
    values: dict[str, Any] = {}
    for key in ("key", "home", "region", "principal", "output", "retry"):
        if key in body:
            v = body[key]
            if not isinstance(v, str) or not v:
                raise ConfigurationError(f"{where}: {key} must be a non-empty string")
            if "\x00" in v:  # no path, key or name holds one (the OS refuses it deep inside)
                raise ConfigurationError(f"{where}: {key} holds a NUL character")
            values[key] = v
    try:
        if "output" in values:
            values["output"] = _output(values["output"])
        if "retry" in values:
            values["retry"] = _retry(values["retry"])
        if "home" in values:
            values["home"] = os.path.join(base, os.path.expanduser(values["home"]))
        if "key" in values and values["key"].startswith("file:"):
            values["key"] = "file:" + os.path.join(base, os.path.expanduser(values["key"][5:]))
        if "fsync" in body:
            if not isinstance(body["fsync"], bool):
                raise ConfigurationError("fsync must be true or false")
            values["fsync"] = body["fsync"]
        if "cache" in body:
            values["cache"] = _cache_from_toml(body["cache"])
    except ConfigurationError as e:
        raise ConfigurationError(f"{where}: {e}") from None
    return Profile(name=name, source=os.fspath(path), **values)


def _output(v: str) -> str:
    if v not in OUTPUTS:
        raise ConfigurationError(f"output must be one of {', '.join(OUTPUTS)}, not {v!r}")
    return v


def _retry(v: str) -> str:
    if v not in RETRY_PROFILES:
        raise ConfigurationError(f"retry must be one of {', '.join(RETRY_PROFILES)}, not {v!r}")
    return v


def _fsync_env(v: str) -> bool:
    low = v.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ConfigurationError(f"fsync must be one of {', '.join(_TRUE + _FALSE)}, not {v!r}")


def _size(v: Any, what: str) -> int:
    if isinstance(v, bool):
        raise ConfigurationError(f"{what} must be a whole number (or a size such as '1G')")
    if isinstance(v, int):
        return v
    if isinstance(v, str):
        t = v.strip().upper().removesuffix("IB").removesuffix("B")
        mult = _UNITS.get(t[-1:], 1)
        digits = t[:-1] if t[-1:] in _UNITS else t
        if digits.isdigit():
            return int(digits) * mult
    raise ConfigurationError(f"{what} must be a whole number (or a size such as '1G'), not {v!r}")


def _cache(spec: Mapping[str, Any]) -> CachePolicy:
    from .keycache import CachePolicy

    unknown = sorted(set(spec) - set(_CACHE_KEYS))
    if unknown:
        raise ConfigurationError(
            f"unknown cache setting {unknown[0]!r} (known: {', '.join(_CACHE_KEYS)}, or 'off')"
        )
    kw: dict[str, Any] = {}
    if "ttl" in spec:
        ttl = spec["ttl"]
        if isinstance(ttl, str):
            try:
                ttl = float(ttl)
            except ValueError:
                raise ConfigurationError(f"cache ttl must be seconds, not {ttl!r}") from None
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
            raise ConfigurationError(f"cache ttl must be seconds, not {ttl!r}")
        kw["ttl"] = kw["decrypt_ttl"] = float(ttl)
    if "max_objects" in spec:
        kw["max_objects"] = _size(spec["max_objects"], "cache max_objects")
    if "max_bytes" in spec:
        kw["max_bytes"] = _size(spec["max_bytes"], "cache max_bytes")
    return CachePolicy(**kw)  # checks the ranges (ConfigurationError)


def _cache_from_toml(v: Any) -> CachePolicy:
    from .keycache import CachePolicy

    if v == "off":
        return CachePolicy(enabled=False)
    if isinstance(v, dict):
        return _cache(v)
    raise ConfigurationError(
        'cache must be "off" or a table such as { ttl = 300, max_objects = 1000, max_bytes = "1G" }'
    )


def _cache_from_env(v: str) -> CachePolicy:
    """``off``, or ``ttl=SECONDS,max_objects=N,max_bytes=SIZE`` (any of them)."""
    from .keycache import CachePolicy

    if v.strip().lower() == "off":
        return CachePolicy(enabled=False)
    spec: dict[str, str] = {}
    for item in v.split(","):
        k, sep, val = item.strip().partition("=")
        if not sep or not k:
            raise ConfigurationError(
                f"cache must be 'off' or KEY=VALUE pairs separated by commas, not {v!r}"
            )
        spec[k.strip()] = val.strip()
    return _cache(spec)


def select_profile(name: str | None, environ: Mapping[str, str] | None = None) -> Profile | None:
    """The profile named `name` (the --profile flag), else $ENVELOPE_PROFILE, else the file's
    `default` profile if it has one, else None. A profile named explicitly (flag or
    environment) that the file lacks is an error; so is a $ENVELOPE_CONFIG naming no file
    (the default path may be absent)."""
    env = os.environ if environ is None else environ
    source = "--profile"
    if not name:
        name, source = env.get(PROFILE_ENV) or None, PROFILE_ENV
    path = config_path(env)
    if path is not None and os.path.exists(path) and not os.path.isfile(path):
        raise ConfigurationError(f"the config file {path} is not a file")
    if path is not None and env.get(CONFIG_ENV) and not os.path.exists(path):
        # named on purpose: a typo in it went unnoticed, and the defaults ran instead (review)
        raise ConfigurationError(f"${CONFIG_ENV} names {path}, which does not exist")
    if path is None or not os.path.isfile(path):
        if name:
            where = f"{CONFIG_ENV} is empty" if path is None else f"there is no config file {path}"
            raise ConfigurationError(f"profile {name!r} ({source}) not found: {where}")
        return None
    profiles = load_profiles(path)
    if not name:
        return profiles.get("default")
    if name not in profiles:
        known = ", ".join(sorted(profiles)) or "none"
        raise ConfigurationError(
            f"profile {name!r} ({source}) not found in {path} (profiles: {known})"
        )
    return profiles[name]


def _from_env(setting: str, value: str) -> Any:
    var = ENVIRONMENT[setting]
    try:
        if setting == "output":
            return _output(value)
        if setting == "retry":
            return _retry(value)
        if setting == "fsync":
            return _fsync_env(value)
        if setting == "cache":
            return _cache_from_env(value)
    except ConfigurationError as e:
        raise ConfigurationError(f"${var}: {e}") from None
    return value


def _flag_given(args: argparse.Namespace, setting: str) -> bool:
    if setting == "key":  # a key file is a key too: the profile's key must not join it
        return getattr(args, "key", None) is not None or bool(getattr(args, "key_file", None))
    return getattr(args, _ATTRIBUTE[setting], None) is not None


def apply_settings(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Fill in the settings a command uses (`args.settings`, set by its parser) that its
    command line left unset: flags > environment > profile > defaults. This is the one
    place that order is written.

    Returns (and stores as `args.setting_sources`) where each setting came from: `flag`,
    the environment variable's name, `profile NAME (FILE)` or `default`. A profile's Region
    is also exported as $ENVELOPE_REGION (when that is unset), so that the embedded KMS
    opened through a key URI, which reads it there, uses it too."""
    env = os.environ if environ is None else environ
    wanted = tuple(getattr(args, "settings", ()))
    named = getattr(args, "profile", None)
    if named == "":
        raise ConfigurationError("--profile is empty")
    profile = select_profile(named, env) if (wanted or named) else None
    sources: dict[str, str] = {}
    for setting in wanted:
        attr = _ATTRIBUTE[setting]
        if _flag_given(args, setting):
            if getattr(args, attr, None) == "":
                # an unset shell variable (`--home "$DIR"`): taken as the working directory
                # it put a root key beside the data; taken as no key, the default key
                raise ConfigurationError(f"{_FLAGS.get(setting, '--' + setting)} is empty")
            sources[setting] = "flag"
            if setting == "principal" and environ is None:
                # the embedded KMS opened through a key URI (also in Dask workers started
                # later) runs as this principal
                os.environ[ENVIRONMENT[setting]] = getattr(args, attr)
            continue
        raw = env.get(ENVIRONMENT[setting])
        if raw:
            setattr(args, attr, _from_env(setting, raw))
            sources[setting] = ENVIRONMENT[setting]
            continue
        value = getattr(profile, setting) if profile is not None else None
        if profile is not None and value is not None:
            setattr(args, attr, value)
            sources[setting] = f"profile {profile.name} ({profile.source})"
            if setting in ("region", "principal") and environ is None:
                os.environ[ENVIRONMENT[setting]] = value
            continue
        setattr(args, attr, False if setting == "fsync" else None)
        sources[setting] = "default"
    for setting in ("region", "principal"):
        value = getattr(args, _ATTRIBUTE[setting], None) if setting in sources else None
        problem = _name_problem(setting, value) if isinstance(value, str) else None
        if problem is not None:
            raise ConfigurationError(f"{_shown_source(setting, sources[setting])}: {problem}")
    args.setting_sources = sources
    return sources


def _name_problem(setting: str, value: str) -> str | None:
    """What is wrong with a Region or principal name (the KMS refused it only when called,
    as a KMS error, exit 3, naming neither the file nor the profile it came from)."""
    from ._names import REGION, principal_problem

    if setting == "principal":
        return principal_problem(value)
    if not REGION.match(value):
        return f"{value!r} is not a Region name (such as us-east-1)"
    return None


def _shown_source(setting: str, source: str) -> str:
    if source == "flag":
        return _FLAGS.get(setting, "--" + setting)
    if source in ENVIRONMENT.values():
        return "$" + source
    return source
