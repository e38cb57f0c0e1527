"""`envelope xks serve` settings: a TOML file (configs/xks-proxy.toml), then command-line flags.

    [server]    host, port, workers, log_level, region, max_request_bytes,
                graceful_shutdown_seconds, dependency_timeout_ms
    [tls]       cert, key                         (both or neither; PEM paths)
                client_ca, client_subject         (mutual TLS: the CA bundle client
                                                  certificates must chain to, and the common
                                                  name they must carry)
    [token]     module, label, pool_size, and the user PIN from one of: pin, pin_env (the name
                of an environment variable; default $ENVELOPE_HSM_PIN), pin_source
                ("file:/path")
    [limits]    max_plaintext_bytes, max_aad_bytes
    [health]    key (a test key label for the deep check), degraded_ms, vendor, model
    [[keystore]]  path_prefix, keys (allow-list), disabled_keys, requests_per_second,
                  ciphertext_metadata, allowed_principals, key_principals (secondary
                  authorization on the request's awsPrincipalArn)
      [[keystore.credential]]  access_key_id, and the secret from secret_access_key or
                               secret_access_key_env

Each ``[[keystore]]`` is one external key store as AWS KMS sees it: a URI path
(``{path_prefix}/kms/xks/v1``) with its SigV4 credentials (two or more at once to rotate them
without downtime, as the specification recommends), served from the one token. Unknown tables
or keys and bad values are `ConfigurationError`s, never ignored; secrets never appear in a
message or a repr. Relative paths are relative to the file's folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .._toml import KeySpecs, read_toml, table_values
from ..errors import ConfigurationError
from .spec import (
    API_PATH,
    MAX_AAD,
    MAX_CIPHERTEXT_METADATA,
    MIN_AAD_SUPPORTED,
    MIN_PLAINTEXT_SUPPORTED,
    SpecViolation,
    check_access_key_id,
    check_key_id,
    check_secret_access_key,
    shown_key_id,
    split_uri_path,
)

__all__ = (
    "ENV_CONFIG",
    "Credential",
    "KeyStoreSettings",
    "XksSettings",
    "load_settings",
)

#: How `envelope xks serve` tells its uvicorn workers where their settings are (a JSON
#: document naming the config file and the command line's overrides; never a secret).
ENV_CONFIG = "ENVELOPE_XKS_SETTINGS"
_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
_PIN_ENV = "ENVELOPE_HSM_PIN"  # envelope.pkcs11's default PIN variable


@dataclass(frozen=True)
class Credential:
    """One SigV4 credential KMS signs with (AWS's XksProxyAuthenticationCredential)."""

    access_key_id: str
    secret_access_key: str = field(repr=False)

    def __post_init__(self) -> None:
        try:
            check_access_key_id(self.access_key_id)
            check_secret_access_key(self.secret_access_key)
        except SpecViolation as e:
            raise ConfigurationError(
                f"credential {shown_key_id(self.access_key_id)}: {e.message}"
            ) from None

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("an XKS credential holds a secret access key and cannot be pickled")


@dataclass(frozen=True)
class KeyStoreSettings:
    """One external key store served by the proxy.

    `keys`: the token key labels this store may use (None: every secret key of the token).
    `disabled_keys`: keys GetKeyMetadata reports DISABLED and Encrypt/Decrypt refuse
    (InvalidStateException): PKCS#11 has no per-key switch, so the proxy keeps it.
    `requests_per_second`: this store's quota (ThrottlingException past it).
    `ciphertext_metadata`: up to 20 bytes returned with every Encrypt and bound into its tag.
    `allowed_principals`: shell-style patterns (``fnmatch``, case-sensitive) one of which the
    request metadata's awsPrincipalArn must match for GetKeyMetadata, Encrypt and Decrypt
    (None: any principal); `key_principals`: the same per key id, instead of the store's.
    """

    path_prefix: str
    credentials: tuple[Credential, ...]
    keys: frozenset[str] | None = None
    disabled_keys: frozenset[str] = frozenset()
    requests_per_second: float | None = None
    ciphertext_metadata: bytes | None = None
    allowed_principals: tuple[str, ...] | None = None
    key_principals: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            split_uri_path(self.path_prefix + API_PATH)
        except SpecViolation:
            raise ConfigurationError(
                f"keystore path_prefix {self.path_prefix[:140]!r}: empty or '/segment' parts "
                f"of a-z, A-Z, 0-9, '-', '_', at most {128 - len(API_PATH)} characters"
            ) from None
        if not self.credentials:
            raise ConfigurationError(
                f"keystore {self.path_prefix!r} needs at least one [[keystore.credential]]"
            )
        for label in (self.keys or frozenset()) | self.disabled_keys | set(self.key_principals):
            try:
                check_key_id(label)
            except SpecViolation as e:
                raise ConfigurationError(
                    f"keystore {self.path_prefix!r}: key {label[:140]!r}: {e.message}"
                ) from None
        rate = self.requests_per_second
        if rate is not None and not rate > 0:
            raise ConfigurationError("requests_per_second must be > 0")
        meta = self.ciphertext_metadata
        if meta is not None and not 1 <= len(meta) <= MAX_CIPHERTEXT_METADATA:
            raise ConfigurationError(
                f"ciphertext_metadata must be 1 to {MAX_CIPHERTEXT_METADATA} bytes"
            )

    @property
    def uri_path(self) -> str:
        return self.path_prefix + API_PATH

    def principals_for(self, key_id: str | None) -> tuple[str, ...] | None:
        """The principal patterns that may use `key_id` (None: anyone)."""
        if key_id is not None and key_id in self.key_principals:
            return self.key_principals[key_id]
        return self.allowed_principals


@dataclass(frozen=True)
class XksSettings:
    """Everything `envelope xks serve` needs."""

    keystores: tuple[KeyStoreSettings, ...] = ()
    module: str = "/usr/lib/softhsm/libsofthsm2.so"
    token_label: str = ""
    pin: str = field(default="", repr=False)
    pool_size: int = 8
    host: str = "127.0.0.1"
    port: int = 8443
    workers: int = 1
    log_level: str = "info"
    #: the KMS Region(s) whose signatures are taken (a list: one proxy serving the stores of
    #: several Regions; each request is signed for the Region of the KMS calling it)
    region: str | tuple[str, ...] = "us-east-1"
    max_request_bytes: int = 65536
    graceful_shutdown_seconds: float = 10.0
    #: a request's headers must arrive within this (408), its body within the next (408)
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 30.0
    #: token calls slower than this answer DependencyTimeoutException (0: wait for them)
    dependency_timeout_ms: float = 0.0
    tls_cert: str | None = None
    tls_key: str | None = None
    #: mutual TLS: client certificates must chain to this CA bundle...
    tls_client_ca: str | None = None
    #: ... and carry this subject common name (AWS KMS: cks.kms.<region>.amazonaws.com)
    tls_client_subject: str | None = None
    max_plaintext_bytes: int = 8192
    max_aad_bytes: int = 8192
    health_key: str | None = None
    degraded_ms: float = 100.0
    ekm_vendor: str = "PKCS#11"
    ekm_model: str | None = None
    #: the config file these came from (workers read it again: secrets never travel)
    source: str | None = None

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("XKS proxy settings hold the token PIN and credentials: not pickled")

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigurationError(f"port must be 0..65535, not {self.port}")
        if self.workers < 1:
            raise ConfigurationError(f"workers must be at least 1, not {self.workers}")
        if self.log_level not in _LOG_LEVELS:
            raise ConfigurationError(
                f"log_level must be one of {', '.join(_LOG_LEVELS)}, not {self.log_level!r}"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigurationError("TLS needs both a certificate and a key ([tls] cert, key)")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ConfigurationError("[tls] client_ca (mutual TLS) needs the proxy's cert and key")
        if self.tls_client_subject is not None and self.tls_client_ca is None:
            raise ConfigurationError("[tls] client_subject needs client_ca")
        if not 1 <= self.pool_size <= 1024:
            raise ConfigurationError("[token] pool_size is a session count from 1 to 1024")
        if self.max_plaintext_bytes < MIN_PLAINTEXT_SUPPORTED:
            raise ConfigurationError(
                f"max_plaintext_bytes must be at least {MIN_PLAINTEXT_SUPPORTED} (the "
                "specification's minimum)"
            )
        if not MIN_AAD_SUPPORTED <= self.max_aad_bytes <= MAX_AAD:
            raise ConfigurationError(
                f"max_aad_bytes must be {MIN_AAD_SUPPORTED} to {MAX_AAD} (the specification's "
                "minimum; the AAD length travels in 2 bytes)"
            )
        needed = 4 * (self.max_plaintext_bytes + self.max_aad_bytes + 2) // 3 + 8192
        if self.max_request_bytes < needed:
            raise ConfigurationError(
                f"max_request_bytes must be at least {needed} to carry the largest plaintext "
                "and AAD in Base64 with the request metadata"
            )
        if self.graceful_shutdown_seconds < 0 or self.dependency_timeout_ms < 0:
            raise ConfigurationError("timeouts must be >= 0")
        if not (self.header_timeout_seconds > 0 and self.body_timeout_seconds > 0):
            raise ConfigurationError("header_timeout_seconds and body_timeout_seconds must be > 0")
        if self.degraded_ms <= 0:
            raise ConfigurationError("[health] degraded_ms must be > 0")
        if isinstance(self.region, list | tuple):
            object.__setattr__(self, "region", tuple(self.region))
        if not (
            isinstance(self.region, str | tuple)
            and self.regions
            and all(isinstance(r, str) and r for r in self.regions)
        ):
            raise ConfigurationError("[server] region is a Region name or a list of them")
        if self.health_key is not None:
            try:
                check_key_id(self.health_key)
            except SpecViolation as e:
                raise ConfigurationError(f"[health] key: {e.message}") from None
            if any(self.health_key in (k.keys or ()) for k in self.keystores):
                # the specification: the deep health check uses "a test key ... rather than a
                # key associated with a KMS key"
                raise ConfigurationError(
                    f"[health] key {self.health_key!r} is listed in a [[keystore]] keys: the "
                    "health check's key must be no KMS key's"
                )
        prefixes = [k.path_prefix for k in self.keystores]
        if len(set(prefixes)) != len(prefixes):
            raise ConfigurationError("two [[keystore]] tables have the same path_prefix")
        ids = [c.access_key_id for k in self.keystores for c in k.credentials]
        if len(set(ids)) != len(ids):
            # "an access key id must uniquely identify a secret access key"
            raise ConfigurationError("an access_key_id appears twice: each must be unique")

    @property
    def regions(self) -> tuple[str, ...]:
        """The Regions a request's credential scope may name."""
        return (self.region,) if isinstance(self.region, str) else self.region

    def __repr__(self) -> str:
        return (
            f"XksSettings(host={self.host!r}, port={self.port}, token_label="
            f"{self.token_label!r}, keystores={[k.path_prefix for k in self.keystores]!r})"
        )

    def check_serving(self) -> None:
        """What only serving needs (the CLI's key commands do not)."""
        if not self.keystores:
            raise ConfigurationError("no [[keystore]] configured: nothing to serve")

    def check_token(self) -> None:
        if not self.token_label:
            raise ConfigurationError("[token] label is required")
        if not self.pin:
            raise ConfigurationError(
                f"no PIN for the token: [token] pin, pin_env, pin_source, or ${_PIN_ENV}"
            )

    def with_overrides(self, **changes: Any) -> XksSettings:
        """These settings with every non-None value of `changes` applied."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_env(self, overrides: Mapping[str, Any]) -> str:
        """What a worker needs to rebuild these settings: the file and the overrides."""
        return json.dumps({"source": self.source, "overrides": dict(overrides)})

    @classmethod
    def from_env(cls, text: str) -> XksSettings:
        doc = json.loads(text)
        return load_settings(doc.get("source")).with_overrides(**doc.get("overrides", {}))


_TABLES: Mapping[str, KeySpecs] = {
    "server": {
        "host": ("host", str),
        "port": ("port", int),
        "workers": ("workers", int),
        "log_level": ("log_level", str),
        "region": ("region", (str, list)),
        "max_request_bytes": ("max_request_bytes", int),
        "graceful_shutdown_seconds": ("graceful_shutdown_seconds", (int, float)),
        "dependency_timeout_ms": ("dependency_timeout_ms", (int, float)),
        "header_timeout_seconds": ("header_timeout_seconds", (int, float)),
        "body_timeout_seconds": ("body_timeout_seconds", (int, float)),
    },
    "tls": {
        "cert": ("tls_cert", str),
        "key": ("tls_key", str),
        "client_ca": ("tls_client_ca", str),
        "client_subject": ("tls_client_subject", str),
    },
    "token": {
        "module": ("module", str),
        "label": ("token_label", str),
        "pool_size": ("pool_size", int),
        "pin": ("pin", str),
        "pin_env": ("pin_env", str),
        "pin_source": ("pin_source", str),
    },
    "limits": {
        "max_plaintext_bytes": ("max_plaintext_bytes", int),
        "max_aad_bytes": ("max_aad_bytes", int),
    },
    "health": {
        "key": ("health_key", str),
        "degraded_ms": ("degraded_ms", (int, float)),
        "vendor": ("ekm_vendor", str),
        "model": ("ekm_model", str),
    },
}
_PATHS = ("tls_cert", "tls_key", "tls_client_ca")
_KEYSTORE_KEYS = (
    "path_prefix",
    "keys",
    "disabled_keys",
    "requests_per_second",
    "ciphertext_metadata",
    "allowed_principals",
    "key_principals",
    "credential",
)
_CREDENTIAL_KEYS = ("access_key_id", "secret_access_key", "secret_access_key_env")


def _labels(p: Path, where: str, value: Any) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigurationError(f"{p}: {where} must be a list of key labels")
    return frozenset(value)


def _patterns(p: Path, where: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigurationError(f"{p}: {where} must be a list of principal ARN patterns")
    return tuple(value)


def _credential(p: Path, where: str, body: Any) -> Credential:
    if not isinstance(body, dict):
        raise ConfigurationError(f"{p}: {where} must be a table")
    unknown = set(body) - set(_CREDENTIAL_KEYS)
    if unknown:
        raise ConfigurationError(
            f"{p}: unknown key {sorted(unknown)[0]!r} in {where} (known: "
            f"{', '.join(_CREDENTIAL_KEYS)})"
        )
    key_id = body.get("access_key_id")
    if not isinstance(key_id, str):
        raise ConfigurationError(f"{p}: {where} needs access_key_id")
    secret = body.get("secret_access_key")
    env = body.get("secret_access_key_env")
    if (secret is None) == (env is None):
        raise ConfigurationError(
            f"{p}: {where} ({shown_key_id(key_id)}) needs exactly one of secret_access_key and "
            "secret_access_key_env"
        )
    if env is not None:
        if not isinstance(env, str) or not env:
            raise ConfigurationError(f"{p}: {where} secret_access_key_env must be a name")
        secret = os.environ.get(env)
        if not secret:
            raise ConfigurationError(
                f"{p}: {where} ({shown_key_id(key_id)}): ${env} is not set or empty"
            )
    if not isinstance(secret, str):
        raise ConfigurationError(f"{p}: {where} secret_access_key must be a string")
    return Credential(key_id, secret)


def _keystore(p: Path, index: int, body: Any) -> KeyStoreSettings:
    where = f"[[keystore]] #{index + 1}"
    if not isinstance(body, dict):
        raise ConfigurationError(f"{p}: {where} must be a table")
    unknown = set(body) - set(_KEYSTORE_KEYS)
    if unknown:
        raise ConfigurationError(
            f"{p}: unknown key {sorted(unknown)[0]!r} in {where} (known: "
            f"{', '.join(_KEYSTORE_KEYS)})"
        )
    prefix = body.get("path_prefix", "")
    if not isinstance(prefix, str):
        raise ConfigurationError(f"{p}: {where} path_prefix must be a string")
    creds = body.get("credential", [])
    if not isinstance(creds, list):
        raise ConfigurationError(f"{p}: {where} credential must be [[keystore.credential]]")
    keys = body.get("keys")
    rate = body.get("requests_per_second")
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int | float)):
        raise ConfigurationError(f"{p}: {where} requests_per_second must be a number")
    meta = body.get("ciphertext_metadata")
    if meta is not None and not isinstance(meta, str):
        raise ConfigurationError(f"{p}: {where} ciphertext_metadata must be a string")
    allowed = body.get("allowed_principals")
    per_key = body.get("key_principals", {})
    if not isinstance(per_key, dict):
        raise ConfigurationError(f"{p}: {where} key_principals must be a table: key = [patterns]")
    return KeyStoreSettings(
        path_prefix=prefix,
        credentials=tuple(
            _credential(p, f"{where} credential #{i + 1}", c) for i, c in enumerate(creds)
        ),
        keys=None if keys is None else _labels(p, f"{where} keys", keys),
        disabled_keys=_labels(p, f"{where} disabled_keys", body.get("disabled_keys", [])),
        requests_per_second=None if rate is None else float(rate),
        ciphertext_metadata=None if meta is None else meta.encode("utf-8"),
        allowed_principals=(
            None if allowed is None else _patterns(p, f"{where} allowed_principals", allowed)
        ),
        key_principals={
            k: _patterns(p, f"{where} key_principals.{k}", v) for k, v in per_key.items()
        },
    )


def load_settings(path: str | os.PathLike[str] | None) -> XksSettings:
    """The settings of the TOML file at `path` (defaults, with no keystore, if None)."""
    if path is None:
        return XksSettings(pin=os.environ.get(_PIN_ENV, ""))
    p = Path(path)
    doc = read_toml(p, "XKS proxy config")
    values: dict[str, Any] = {"source": str(p.resolve())}
    pin_sources: dict[str, str] = {}
    keystores: list[KeyStoreSettings] = []
    for table, body in doc.items():
        if table == "keystore":
            if not isinstance(body, list):
                raise ConfigurationError(f"{p}: keystores are [[keystore]] tables")
            keystores.extend(_keystore(p, i, ks) for i, ks in enumerate(body))
            continue
        keys = _TABLES.get(table)
        if keys is None or not isinstance(body, dict):
            raise ConfigurationError(
                f"{p}: unknown table [{table}] (known: {', '.join(_TABLES)}, [[keystore]])"
            )
        for attr, value in table_values(p, table, body, keys, paths=_PATHS):
            if attr in ("pin", "pin_env", "pin_source"):
                pin_sources[attr] = str(value)
            else:
                values[attr] = value
    values["pin"] = _pin(p, pin_sources)
    values["keystores"] = tuple(keystores)
    return XksSettings(**values)


def _pin(p: Path, sources: Mapping[str, str]) -> str:
    if len(sources) > 1:
        raise ConfigurationError(f"{p}: [token] takes one of pin, pin_env and pin_source")
    if "pin" in sources:
        return sources["pin"]
    if "pin_source" in sources:
        from ..pkcs11.config import pin_from_source

        return pin_from_source(sources["pin_source"])
    return os.environ.get(sources.get("pin_env", _PIN_ENV), "")
