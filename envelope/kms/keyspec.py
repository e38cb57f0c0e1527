"""`KeySpec`: the one way to turn a key argument into a keyring.

A key argument (`--key URI`, `--key-file PATH`, `--home DIR`, a cache policy, a retry
profile) is written down once as a frozen, picklable `KeySpec` and turned into a `Keyring`
by `KeySpec.keyring()`. The CLI, the Dask workers and the Parquet helpers all go through it,
so the rules below hold everywhere:

Encrypt (`purpose="encrypt"`): one key: the key file if one is given, else `key`, else
`DEFAULT_KEY` (the embedded KMS's managed key, created on first use). `key` and a key file
together, or more than one key file, are refused.

Decrypt (`purpose="decrypt"`): exactly the key files and the `key` given, plus AWS KMS when
`kms_endpoint` is given (`--kms-endpoint`); with none of them, the embedded KMS under `home`,
which must already exist (a reader has nothing to find in an empty KMS). A key file alone
never opens the embedded KMS: it would create, or write the audit log of, a KMS the user did
not ask for. An AWS key (`arn:aws:kms:...`, `aws-kms:...`; `aws-kms:` alone names none) lets
the reader try any AWS KMS key a header names, with its credentials, at its endpoint.

`kms_endpoint`: an AWS-KMS-compatible endpoint URL for AWS keys (default
``$AWS_ENDPOINT_URL_KMS``, else AWS's own); refused with keys of any other kind.

A spec holds names of keys (URIs, paths), never key material, so it can travel to another
process; `pinned()` makes its paths absolute first. Backends are opened only by
`keyring()` / `backends()`, through `envelope.kms.uri` (the embedded KMS is imported only
when a spec needs it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Literal, get_args

from ..errors import ConfigurationError, NoStoreError
from ..keycache import CachePolicy
from ..keyring import Keyring
from ..metrics import NULL_OBSERVER, Observer
from .base import KmsBackend
from .filekey import FileKeyBackend
from .retry import RetryingKms, RetryPolicy, shared_budget
from .uri import (
    is_aws_key,
    open_aws_backend,
    open_backend,
    open_local_backend,
)

__all__ = (
    "DEFAULT_KEY",
    "KeySpec",
    "Purpose",
    "RetryName",
    "build_keyring",
    "retry_policy",
    "with_retry",
)

#: The key an encrypt spec uses when given none: the embedded KMS's managed key for
#: envelope, created on first use (rotation always on, cannot be disabled or deleted).
DEFAULT_KEY = "local:alias/aws/envelope"

Purpose = Literal["encrypt", "decrypt"]
#: The named retry profiles (`RetryPolicy.default()`, `.bulk()`, `.none()`).
RetryName = Literal["default", "bulk", "none"]

_PURPOSES: tuple[str, ...] = get_args(Purpose)
_RETRY_NAMES: tuple[str, ...] = get_args(RetryName)


def retry_policy(retry: RetryPolicy | str | None) -> RetryPolicy | None:
    """A retry profile by name (`default`, `bulk`, `none`), a policy as is, or None."""
    if retry is None or isinstance(retry, RetryPolicy):
        return retry
    if isinstance(retry, str) and retry in _RETRY_NAMES:
        policy: RetryPolicy = getattr(RetryPolicy, retry)()
        return policy
    raise ConfigurationError(
        f"retry must be a RetryPolicy or one of {', '.join(_RETRY_NAMES)}, not {retry!r}"
    )


def with_retry(
    backend: KmsBackend,
    retry: RetryPolicy | str | None,
    *,
    default: RetryPolicy | None = None,
    observer: Observer = NULL_OBSERVER,
) -> KmsBackend:
    """`backend` behind the retry layer, with the budget it shares with every other user of
    the same backend. A backend that already retries is returned as is, and asking for a
    policy on top of it is refused (retries would multiply). With neither `retry` nor
    `default`, the backend is returned unwrapped."""
    policy = retry_policy(retry)
    if isinstance(backend, RetryingKms):
        if policy is not None:
            raise ConfigurationError(
                "this backend already retries; passing retry= too would multiply retries"
            )
        return backend
    policy = policy if policy is not None else default
    if policy is None:
        return backend
    budget = (
        shared_budget(backend, policy.budget_capacity)
        if policy.budget_capacity is not None
        else None
    )
    return RetryingKms(backend, policy, budget=budget, observer=observer)


@dataclass(frozen=True, slots=True)
class KeySpec:
    """Which keys a keyring uses, and how it calls them; names only, no key material.

    key: a key URI (`local:alias/x`, a bare alias / key id / ARN, `file:PATH`), or None.
    key_files: key files from `envelope keygen` (encrypt: at most one, and not with `key`).
    home: the embedded KMS home (None: $ENVELOPE_HOME or ~/.envelope, where it is opened).
    cache: the data-key cache (None: none, unless a bulk job fills it in, see `bulk()`).
    retry: a `RetryPolicy` or a profile name (`default`, `bulk`, `none`); None: no retry
        layer, unless a bulk job fills it in.
    purpose: `encrypt` (one key to seal under) or `decrypt` (the keys a reader may use).
    kms_endpoint: the AWS-KMS-compatible endpoint URL of AWS keys (None: $AWS_ENDPOINT_URL_KMS,
        else AWS's own endpoint for the key's Region).
    """

    key: str | None = None
    key_files: tuple[str, ...] = ()
    home: str | None = None
    cache: CachePolicy | None = None
    retry: RetryPolicy | RetryName | None = None
    purpose: Purpose = "encrypt"
    kms_endpoint: str | None = None

    def __post_init__(self) -> None:
        if self.purpose not in _PURPOSES:
            raise ConfigurationError(
                f"a KeySpec's purpose is 'encrypt' or 'decrypt', not {self.purpose!r}"
            )
        if self.key is not None and (not isinstance(self.key, str) or not self.key):
            raise ConfigurationError("a KeySpec's key must be a non-empty key URI or None")
        files = self.key_files
        if isinstance(files, str | bytes | os.PathLike):
            raise ConfigurationError("key_files is a sequence of paths, not one path")
        try:
            names = tuple(os.fspath(p) for p in files)
        except TypeError:
            raise ConfigurationError("key_files must be paths (str or os.PathLike)") from None
        if any(not isinstance(p, str) or not p for p in names):
            raise ConfigurationError("key_files must be non-empty text paths")
        object.__setattr__(self, "key_files", names)
        if self.home is not None:
            home = os.fspath(self.home)
            if not isinstance(home, str) or not home:
                raise ConfigurationError("a KeySpec's home must be a non-empty text path")
            object.__setattr__(self, "home", home)
        if self.cache is not None and not isinstance(self.cache, CachePolicy):
            raise ConfigurationError("a KeySpec's cache must be a CachePolicy or None")
        retry_policy(self.retry)  # refuses an unknown name early
        if self.purpose == "encrypt":
            if self.key is not None and names:
                raise ConfigurationError("give either --key or --key-file, not both")
            if len(names) > 1:
                raise ConfigurationError("encrypt takes one --key-file")
        if self.key is not None and is_aws_key(self.key):
            from .aws import parse_key_ref

            parse_key_ref(self.key)  # a malformed ARN or aws-kms: URI is refused here
        if self.kms_endpoint is not None:
            if not isinstance(self.kms_endpoint, str) or not self.kms_endpoint:
                raise ConfigurationError("a KeySpec's kms_endpoint must be a non-empty URL or None")
            from .aws import check_endpoint_url

            check_endpoint_url(self.kms_endpoint)
            if self.purpose == "encrypt" and (self.key is None or not is_aws_key(self.key)):
                raise ConfigurationError(
                    "--kms-endpoint is for AWS KMS keys: give --key arn:aws:kms:... or aws-kms:..."
                )

    def __repr__(self) -> str:
        return (
            f"KeySpec(purpose={self.purpose!r}, key={self.key!r}, key_files={self.key_files!r}, "
            f"home={self.home!r}, cache={self.cache!r}, retry={self.retry!r}, "
            f"kms_endpoint={self.kms_endpoint!r})"
        )

    # -- variants -----------------------------------------------------------------------

    def for_purpose(self, purpose: Purpose) -> KeySpec:
        """The same keys for another purpose (validated again)."""
        return self if purpose == self.purpose else replace(self, purpose=purpose)

    def bulk(self) -> KeySpec:
        """This spec with the lake jobs' defaults for what it leaves unset: the data-key
        cache on (`CachePolicy()`) and the `bulk` retry profile. A cache turned off with
        `CachePolicy(enabled=False)` stays off."""
        return replace(
            self,
            cache=self.cache if self.cache is not None else CachePolicy(),
            retry=self.retry if self.retry is not None else "bulk",
        )

    def pinned(self) -> KeySpec:
        """The same keys named so that another process finds them: key files, a `file:`
        key and `home` made absolute, and an unset `home` fixed to this process's
        $ENVELOPE_HOME (when set; `~` in a home is expanded, as the embedded KMS does). A
        Dask worker's working directory and environment are not the driver's."""
        key = self.key
        if key is not None and key.startswith("file:"):
            key = "file:" + os.path.abspath(key[len("file:") :])
        home = self.home if self.home is not None else os.environ.get("ENVELOPE_HOME") or None
        if home is None and self._uses_local():
            # this process's default home (~/.envelope), named: a worker of another user or
            # in a container has another ~, and sealed under a new, private KMS there (review)
            from .local import store_path

            home = str(store_path(None).parent)
        endpoint = self.kms_endpoint
        if self._uses_aws():
            # AWS keys: the endpoint and a Region the key does not name come from this
            # process's environment, as the AWS SDKs would find them here.
            from .aws import ENDPOINT_ENV, parse_key_ref

            endpoint = endpoint or os.environ.get(ENDPOINT_ENV) or None
            region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
            ref = parse_key_ref(key) if key is not None and is_aws_key(key) else None
            if ref is not None and ref.region is None and region:
                key = f"aws-kms://{region}/{ref.key or ''}"
        return replace(
            self,
            key=key,
            kms_endpoint=endpoint,
            key_files=tuple(os.path.abspath(p) for p in self.key_files),
            home=os.path.abspath(os.path.expanduser(home)) if home else None,
        )

    # -- building -----------------------------------------------------------------------

    def retry_policy(self) -> RetryPolicy | None:
        return retry_policy(self.retry)

    def _uses_aws(self) -> bool:
        return self.kms_endpoint is not None or (self.key is not None and is_aws_key(self.key))

    def _uses_local(self) -> bool:
        """Whether `backends` may open the embedded KMS (a local key, the default key, or a
        reader that names no key)."""
        if self._uses_aws():
            return False
        if self.key is not None:
            return not self.key.startswith("file:")
        return not (self.purpose == "encrypt" and self.key_files)

    def backends(self) -> tuple[tuple[KmsBackend, ...], str | None]:
        """Open the backends this spec names, and the key id to seal under (encrypt) or None.

        Encrypt: one backend. Decrypt: the key files', then `key`'s and AWS KMS's (with
        `kms_endpoint`), else the embedded KMS (which must exist)."""
        if self.purpose == "encrypt":
            if self.key_files:
                fb = FileKeyBackend(self.key_files[0])
                return (fb,), fb.key_id
            backend, key_id = open_backend(
                self.key or DEFAULT_KEY, home=self.home, kms_endpoint=self.kms_endpoint
            )
            return (backend,), key_id
        opened: list[KmsBackend] = [FileKeyBackend(p) for p in self.key_files]
        if self.key is not None and is_aws_key(self.key):
            backend, named = open_aws_backend(self.key, endpoint_url=self.kms_endpoint)
            opened.append(_only(backend, named))
        else:
            if self.key is not None:
                opened.append(_only(*open_backend(self.key, home=self.home)))
            if self.kms_endpoint is not None:
                opened.append(open_aws_backend(endpoint_url=self.kms_endpoint)[0])
        if not opened:  # no key named: the embedded KMS's keys, which the header names
            try:
                opened.append(open_local_backend(self.home, must_exist=True))
            except NoStoreError as e:  # not a root-key or store error: those say their own
                raise NoStoreError(
                    f"{e}, and no key was given: an object sealed with a key file needs it "
                    "(--key-file PATH); one sealed by a KMS needs --key, --kms-endpoint or --home"
                ) from None
        return tuple(opened), None

    def keyring(self, observer: Observer = NULL_OBSERVER) -> Keyring:
        """A new keyring over newly opened backends (close it: the embedded KMS seals its
        audit log on close)."""
        backends, key_id = self.backends()
        policy = self.retry_policy()
        if key_id is not None:
            return Keyring(backends[0], key_id, cache=self.cache, retry=policy, observer=observer)
        return Keyring(decrypt_with=backends, cache=self.cache, retry=policy, observer=observer)


def _only(backend: KmsBackend, key_id: str | None) -> KmsBackend:
    """A reader's backend held to the one key its key argument names (`required_key`: the KMS
    refuses a data key wrapped under another, as AWS KMS does for Decrypt with a KeyId); a
    key file is one key already, and ``aws-kms:`` alone names none (any AWS key may be
    tried). A key argument that named a key used to choose only the backend: any key of the
    embedded KMS decrypted, and a key that did not exist was not noticed (review)."""
    if key_id is not None and hasattr(backend, "required_key"):
        backend.required_key = key_id
    return backend


def build_keyring(spec: KeySpec, observer: Observer = NULL_OBSERVER) -> Keyring:
    """`spec.keyring(observer)`, as a function (for `map` and Dask task graphs)."""
    return spec.keyring(observer)
