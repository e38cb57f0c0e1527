"""Key URIs: one string names a backend and a key.

    file:/path/to/key-file        a local wrapping key (envelope keygen)
    local:alias/demo              the embedded KMS under $ENVELOPE_HOME (key id, ARN or alias)
    alias/demo, KEY-ID            shorthand for local:...
    arn:aws:kms:REGION:ACCOUNT:key/ID, arn:...:alias/NAME
                                  AWS KMS or a compatible endpoint (the `aws` backend)
    aws-kms:alias/NAME, aws-kms:KEY-ID, aws-kms://REGION/..., aws-kms:arn:...
                                  the same, Region from the ARN, the URI or the AWS chain

A bare KMS ARN names AWS KMS: an ARN is how AWS users name a key, and the embedded KMS's own
keys stay reachable by ARN as ``local:arn:...``.

Backends are imported only when a URI names them, so optional parts stay optional.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from ..errors import ConfigurationError
from .base import KmsBackend
from .filekey import FileKeyBackend

__all__ = ("is_aws_key", "open_aws_backend", "open_backend", "open_local_backend")


def is_aws_key(uri: str) -> bool:
    """Does this key argument name the aws backend (``aws-kms:...`` or a KMS ARN)?

    `envelope.kms.aws.is_aws_key` decides; it is loaded only for an argument that could be one
    (it and the regular expressions it needs cost a key-file command's start-up ~2 ms)."""
    if not uri.startswith(("aws-kms:", "arn:")):
        return False
    from .aws import is_aws_key as exact

    return exact(uri)


def open_local_backend(
    home: str | os.PathLike[str] | None = None, *, must_exist: bool = False
) -> Any:
    """The embedded KMS backend over the store under `home` (default $ENVELOPE_HOME).

    With `must_exist`, a home without a store raises `NoStoreError` instead of creating one
    (a reader has nothing to find in an empty KMS).
    """
    try:
        module = importlib.import_module("envelope.kms.local")
    except ImportError as e:
        raise ConfigurationError(f"the embedded KMS is not available: {e}") from None
    return module.open_local(home=home, must_exist=must_exist)


def open_aws_backend(
    uri: str = "aws-kms:", *, endpoint_url: str | None = None
) -> tuple[KmsBackend, str | None]:
    """The aws backend for an aws key URI, and the key it names (None for ``aws-kms:`` with no
    key: a reader's backend). `endpoint_url` default: ``$AWS_ENDPOINT_URL_KMS``."""
    from .aws import open_aws

    return open_aws(uri, endpoint_url=endpoint_url)


def open_backend(
    uri: str,
    *,
    home: str | os.PathLike[str] | None = None,
    kms_endpoint: str | None = None,
) -> tuple[KmsBackend, str]:
    """Return (backend, key id) for a key URI. `kms_endpoint` is for aws keys only."""
    if not uri:
        raise ConfigurationError("empty key URI")
    if is_aws_key(uri):
        backend, key_id = open_aws_backend(uri, endpoint_url=kms_endpoint)
        if key_id is None:
            raise ConfigurationError(f"{uri!r} names no key (aws-kms:alias/NAME, KEY-ID or ARN)")
        return backend, key_id
    if kms_endpoint is not None:
        raise ConfigurationError(
            "a KMS endpoint is for AWS KMS keys (arn:aws:kms:... or aws-kms:...), "
            f"not {uri.split(':', 1)[0]!r} keys"
        )
    if uri.startswith("file:"):
        backend = FileKeyBackend(uri[len("file:") :])
        return backend, backend.key_id
    if uri.startswith("local:"):
        uri = uri[len("local:") :]
    elif ":" in uri and not uri.startswith("arn:"):
        scheme = uri.split(":", 1)[0]
        raise ConfigurationError(f"unknown key URI scheme {scheme!r}")
    # an AWS managed key is made on first use, so a store may be started for it; a key
    # someone made is in no empty KMS, so none is started to look for it (a mistyped home)
    backend = open_local_backend(home, must_exist=not names_managed_key(uri))
    return backend, backend.resolve_key_id(uri) if hasattr(backend, "resolve_key_id") else uri


def names_managed_key(uri: str) -> bool:
    """Whether an embedded-KMS key URI (without ``local:``) names an AWS managed key
    (``alias/aws/NAME``, or its alias ARN), which the KMS makes on first use."""
    return uri.startswith("alias/aws/") or (uri.startswith("arn:") and ":alias/aws/" in uri)
