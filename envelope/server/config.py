"""`envelope serve` settings: a TOML file (configs/kms-server.toml), then command-line flags.

    [server]   host, port, workers, log_level, max_request_bytes, graceful_shutdown_seconds,
               header_timeout_seconds, body_timeout_seconds
    [tls]      cert, key                       (both or neither; PEM paths)
    [store]    home, region, root_key ("file" | "passphrase" | a pkcs11: URI), root_key_file
    [quotas]   FAMILY_OR_OPERATION = requests per second, for the whole server

Unknown tables or keys and bad values are `ConfigurationError`s, never ignored. Relative paths
are relative to the file's folder. The passphrase of a ``root_key = "passphrase"`` store is read
from ``$ENVELOPE_KMS_PASSPHRASE`` only: a secret does not belong in a config file.

The settings travel to every worker process as JSON in ``$ENVELOPE_SERVER_SETTINGS``
(`to_env` / `from_env`), because uvicorn starts workers from an import string.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .._toml import KeySpecs, read_toml, table_values
from ..errors import ConfigurationError

__all__ = ("ENV_SETTINGS", "ServerSettings", "load_settings")

ENV_SETTINGS = "ENVELOPE_SERVER_SETTINGS"
_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")

#: AWS KMS's largest request is a key policy of 131072 characters (up to 6 bytes each once
#: JSON-escaped) or an import of 6 KiB blobs; 1 MiB refuses abuse and admits every real call.
DEFAULT_MAX_REQUEST_BYTES = 1 << 20



#: The longest timeout a setting may name: past it, a finite number is a mistake.
_DAY = 86400.0

@dataclass(frozen=True)
class ServerSettings:
    """Everything a worker needs to open the store and serve it."""

    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    log_level: str = "info"
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    graceful_shutdown_seconds: float = 30.0
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 30.0
    tls_cert: str | None = None
    tls_key: str | None = None
    home: str | None = None
    region: str | None = None
    root_key: str = "file"
    root_key_file: str | None = None
    quotas: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigurationError(f"port must be 0..65535, not {self.port}")
        if self.workers < 1:
            raise ConfigurationError(f"workers must be at least 1, not {self.workers}")
        if self.log_level not in _LOG_LEVELS:
            raise ConfigurationError(
                f"log_level must be one of {', '.join(_LOG_LEVELS)}, not {self.log_level!r}"
            )
        if self.max_request_bytes < 1024:
            raise ConfigurationError("max_request_bytes must be at least 1024")
        grace = self.graceful_shutdown_seconds
        if isinstance(grace, bool) or not isinstance(grace, int | float) or not 0 <= grace < _DAY:
            # (NaN and infinity crashed the start with a traceback; review)
            raise ConfigurationError(
                f"graceful_shutdown_seconds must be a number of seconds >= 0 and under a day, "
                f"not {grace!r}"
            )
        for name in ("header_timeout_seconds", "body_timeout_seconds"):
            value = getattr(self, name)
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if not number or not 0 < value < _DAY:
                # (infinity turned the slow-client guard off without a word; review)
                raise ConfigurationError(
                    f"{name} must be a number of seconds > 0 and under a day, not {value!r}"
                )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigurationError("TLS needs both a certificate and a key (tls cert and key)")
        if self.root_key not in ("file", "passphrase") and not self.root_key.startswith(
            "pkcs11:"
        ):
            # not echoed: a passphrase pasted where its provider's name goes is a secret
            raise ConfigurationError(
                'root_key must be "file", "passphrase" or a pkcs11: URI (the root key in an '
                f"HSM, docs/hsm.md), not the {len(self.root_key)}-character value given "
                "(not shown: it may be a secret)"
            )
        for name, rate in self.quotas.items():
            if isinstance(rate, bool) or not isinstance(rate, int | float) or not rate > 0:
                raise ConfigurationError(f"quota {name!r} must be a number > 0, not {rate!r}")
        if self.quotas:
            _check_quota_names(self.quotas)

    def with_overrides(self, **changes: Any) -> ServerSettings:
        """These settings with every non-None value of `changes` applied."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls, text: str) -> ServerSettings:
        data = json.loads(text)
        data["quotas"] = dict(data.get("quotas") or {})
        return cls(**data)


def _check_quota_names(quotas: Mapping[str, float]) -> None:
    """Each [quotas] key is the cryptographic family or a KMS operation outside it (AWS's
    quotas): a typo would otherwise set nothing, and an operation of the family (``Decrypt``)
    would silently set the whole family's rate."""
    import botocore.session

    from .._ratelimit import CRYPTOGRAPHIC, OPERATION_FAMILIES

    operations = set(botocore.session.get_session().get_service_model("kms").operation_names)
    for name in quotas:
        family = OPERATION_FAMILIES.get(name)
        if family is not None:
            raise ConfigurationError(
                f"quota {name!r}: {name} shares the {family!r} quota with the other "
                f"cryptographic operations (AWS's rule): set {family} = RATE instead"
            )
        if name != CRYPTOGRAPHIC and name not in operations:
            raise ConfigurationError(
                f"quota {name!r} is neither {CRYPTOGRAPHIC!r} nor a KMS operation (names are "
                "AWS's, case-sensitive: CreateKey, DescribeKey, ...)"
            )


_TABLES: Mapping[str, KeySpecs] = {
    "server": {
        "host": ("host", str),
        "port": ("port", int),
        "workers": ("workers", int),
        "log_level": ("log_level", str),
        "max_request_bytes": ("max_request_bytes", int),
        "graceful_shutdown_seconds": ("graceful_shutdown_seconds", (int, float)),
        "header_timeout_seconds": ("header_timeout_seconds", (int, float)),
        "body_timeout_seconds": ("body_timeout_seconds", (int, float)),
    },
    "tls": {"cert": ("tls_cert", str), "key": ("tls_key", str)},
    "store": {
        "home": ("home", str),
        "region": ("region", str),
        "root_key": ("root_key", str),
        "root_key_file": ("root_key_file", str),
    },
}
_PATHS = ("tls_cert", "tls_key", "home", "root_key_file")


def load_settings(path: str | os.PathLike[str] | None) -> ServerSettings:
    """The settings of the TOML file at `path` (defaults if None)."""
    if path is None:
        return ServerSettings()
    p = Path(path)
    doc = read_toml(p, "server config")
    values: dict[str, Any] = {}
    for table, body in doc.items():
        if table == "quotas":
            if not isinstance(body, dict):
                raise ConfigurationError(f"{p}: [quotas] must be a table")
            values["quotas"] = dict(body)
            continue
        keys = _TABLES.get(table)
        if keys is None or not isinstance(body, dict):
            raise ConfigurationError(
                f"{p}: unknown table [{table}] (known: server, tls, store, quotas)"
            )
        values.update(table_values(p, table, body, keys, paths=_PATHS))
    return ServerSettings(**values)
