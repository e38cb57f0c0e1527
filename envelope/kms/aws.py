"""AWS KMS, or any AWS-KMS-compatible endpoint, as a `KmsBackend` (provider id ``aws-kms``).

Key references (see docs/kms.md, "The `aws` backend")::

    arn:aws:kms:REGION:ACCOUNT:key/ID      a key ARN (its Region is the one called)
    arn:aws:kms:REGION:ACCOUNT:alias/NAME  an alias ARN
    aws-kms:alias/NAME | aws-kms:KEY-ID    Region from the AWS chain (AWS_REGION, profile, ...)
    aws-kms://REGION/alias/NAME | .../KEY-ID | aws-kms:arn:...
    aws-kms: | aws-kms://REGION             no key: decrypt only (the header names the key)

Headers record provider id ``aws-kms`` and the key ARN that AWS KMS returned; Decrypt sends
that ARN as ``KeyId`` (so KMS refuses a ciphertext swapped in from another key) with the
encryption context, in the ARN's Region.

Why it looks the way it does:

- boto3 is imported on first use, never by importing this module: encrypting with a key file
  must not pay for it, and boto3 stays an optional dependency (the ``aws`` extra).
- botocore's own retries are off (one attempt, `BOTOCORE_NO_RETRIES`): retries live in the one
  retry layer (`envelope.kms.retry`), which owns backoff, the budget and the deadline. Errors
  are translated to the classes that layer classifies (`_translate`).
- boto3 blocks. The blocking face (`generate_data_key_blocking`, ...) calls it on the calling
  thread (`envelope.sync` with no retry layer); the async face runs the same call in a worker
  thread (`anyio.to_thread`), abandoned when the caller is cancelled so the retry layer's
  deadline holds; the thread then finishes its request and its answer is dropped.
- Data keys are copied into `bytearray`s that are wiped; the `bytes` boto3 returns cannot be.
  No key material reaches a message, a repr or a log.
"""

from __future__ import annotations

import binascii
import os
import re
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from .._botocore_logs import guard_botocore_logs
from .._names import KMS_ARN, KMS_PARTITION
from ..errors import (
    ClosedError,
    ConfigurationError,
    KmsAccessDeniedError,
    KmsKeyError,
    KmsTimeoutError,
    KmsTransientError,
    ThrottlingError,
)
from ..hazmat.format import DATA_KEY_LEN
from ..printable import printable, wrapped_key_name
from ..uri_secrets import redact_uri
from .base import DataKey, WrappedKey
from .retry import BOTOCORE_NO_RETRIES

__all__ = (
    "ENDPOINT_ENV",
    "PROVIDER_ID",
    "AwsKeyRef",
    "AwsKms",
    "check_endpoint_url",
    "is_aws_key",
    "key_arn_region",
    "parse_key_ref",
)

PROVIDER_ID = "aws-kms"
SCHEME = "aws-kms:"
#: The AWS SDKs' service-specific endpoint variable; read when no endpoint is given.
ENDPOINT_ENV = "AWS_ENDPOINT_URL_KMS"

T = TypeVar("T")

_REGION_RE = re.compile(r"[a-z]{2,}(?:-[a-z0-9]+)+")
_KMS_ARN_PREFIX = re.compile(rf"arn:{KMS_PARTITION}:kms:")

# -- error codes (AWS KMS API reference, "Errors" of GenerateDataKey, Encrypt, Decrypt, and
# the common errors of every AWS API) -------------------------------------------------------

#: "Slow down". KMS answers ThrottlingException past a request quota; LimitExceededException
#: is what KMS used for the same before ThrottlingException and what some compatible
#: endpoints still send (the resource quotas it also names cannot be hit by these three
#: operations), and botocore counts the rest as throttling for every service.
_THROTTLING = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "ThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "LimitExceededException",
        "SlowDown",
    }
)
#: "Try again": KMS's internal errors, a dependency (custom key store) timing out or a key
#: briefly unavailable, and the generic service-side failures.
_TRANSIENT = frozenset(
    {
        "KMSInternalException",
        "DependencyTimeoutException",
        "KeyUnavailableException",
        "InternalFailure",
        "InternalError",
        "InternalServerError",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)
#: Refused for who is calling: a policy, or credentials that are not accepted.
_ACCESS = frozenset(
    {
        "AccessDeniedException",
        "AccessDenied",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "IncompleteSignature",
        "IncompleteSignatureException",
        "MissingAuthenticationToken",
        "MissingAuthenticationTokenException",
        "ExpiredTokenException",
        "ExpiredToken",
    }
)


# -- key references -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AwsKeyRef:
    """A parsed key reference: the ``KeyId`` to send (None: no key) and its Region, if named."""

    key: str | None
    region: str | None


def is_aws_key(uri: str) -> bool:
    """Does this key argument name the aws backend (``aws-kms:...`` or a KMS ARN)?"""
    return uri.startswith(SCHEME) or _KMS_ARN_PREFIX.match(uri) is not None


def _check_region(region: str, where: str) -> str:
    # A Region becomes part of a host name (kms.REGION.amazonaws.com): only its own shape.
    if not _REGION_RE.fullmatch(region) or len(region) > 32:
        raise ConfigurationError(f"{region!r} in {where} is not an AWS Region name")
    return region


def _parse_arn(arn: str) -> AwsKeyRef:
    m = KMS_ARN.fullmatch(arn)
    if m is None:
        raise ConfigurationError(
            f"{arn!r} is not a KMS key or alias ARN "
            "(arn:aws:kms:REGION:ACCOUNT:key/ID or arn:aws:kms:REGION:ACCOUNT:alias/NAME)"
        )
    return AwsKeyRef(arn, _check_region(m.group(2), "the ARN"))


def parse_key_ref(text: str) -> AwsKeyRef:
    """Parse a key reference of the grammar above (`ConfigurationError` if it is not one)."""
    if not text:
        raise ConfigurationError("empty AWS KMS key reference")
    if text.startswith("arn:"):
        return _parse_arn(text)
    rest = text.removeprefix(SCHEME)
    region: str | None = None
    if rest.startswith("//"):
        authority, _sep, rest = rest[2:].partition("/")
        if not authority:
            raise ConfigurationError(f"{text!r}: aws-kms:// needs a Region (aws-kms://REGION/KEY)")
        region = _check_region(authority, repr(text))
    if not rest:
        return AwsKeyRef(None, region)
    if rest.startswith("arn:"):
        ref = _parse_arn(rest)
        if region is not None and ref.region != region:
            raise ConfigurationError(
                f"{text!r} names Region {region!r} and an ARN in {ref.region!r}"
            )
        return ref
    if rest.startswith("alias/"):
        if not re.fullmatch(r"alias/[A-Za-z0-9/_-]{1,250}", rest):
            raise ConfigurationError(f"{rest!r} is not a KMS alias name (alias/[A-Za-z0-9/_-]+)")
    elif not re.fullmatch(r"(?:mrk-)?[A-Za-z0-9-]{1,2044}", rest):
        raise ConfigurationError(f"{text!r}: an aws-kms key is alias/NAME, a key id or an ARN")
    return AwsKeyRef(rest, region)


def key_arn_region(key_id: str) -> str | None:
    """The Region of a KMS *key* ARN (what headers record), or None if `key_id` is not one."""
    m = KMS_ARN.fullmatch(key_id)
    if m is None or m.group(4) != "key" or not _REGION_RE.fullmatch(m.group(2)):
        return None
    return m.group(2)


def check_endpoint_url(url: str) -> str:
    """An endpoint URL as given, if it is a plain ``http(s)://host[:port][/path]`` URL.

    Credentials, a query or a fragment in it are refused: they would be sent somewhere, or
    end up in a repr or a log."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
    except ValueError:
        raise ConfigurationError(f"{redact_uri(url)!r} is not a URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        # (quoted without its password: a malformed URL was echoed whole; review)
        raise ConfigurationError(
            f"a KMS endpoint is an http(s)://HOST[:PORT] URL, not {redact_uri(url)!r}"
        )
    if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
        raise ConfigurationError(
            "a KMS endpoint URL carries no credentials, query or fragment "
            f"(got one for host {parts.hostname!r})"
        )
    return url


# -- error translation ----------------------------------------------------------------------


def _retry_after(response: Mapping[str, Any]) -> float | None:
    headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    value = headers.get("retry-after") if isinstance(headers, Mapping) else None
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and 0 <= seconds <= 3600 else None


def _translate(exc: Exception, operation: str, key: str | None = None) -> Exception:
    """botocore's errors as the engine's: the retry layer retries throttling, transient and
    timeout kinds only; configuration problems are `ConfigurationError` (the CLI's exit 2).
    The message names `key` (the key id asked for: AWS itself says nothing for several codes,
    and neither does moto for any)."""
    import botocore.exceptions as bx

    if isinstance(exc, bx.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or "")
        message = str(error.get("Message") or "").strip()
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        on = f" for key {printable(key)}" if key else ""
        text = f"AWS KMS {operation} ({code or status}){on}{': ' + message if message else ''}"
        if code in _THROTTLING or status == 429:
            return ThrottlingError(
                text, operation=operation, retry_after=_retry_after(exc.response)
            )
        if code in _ACCESS:
            return KmsAccessDeniedError(text)
        if code in _TRANSIENT or (isinstance(status, int) and status >= 500):
            return KmsTransientError(text)
        return KmsKeyError(text)
    name = type(exc).__name__
    if isinstance(exc, bx.ConnectTimeoutError | bx.ReadTimeoutError):
        return KmsTimeoutError(f"AWS KMS {operation}: {name} ({exc})")
    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError | bx.ProfileNotFound):
        return ConfigurationError(f"AWS credentials for KMS: {name}: {exc}")
    if isinstance(exc, bx.NoRegionError):
        return ConfigurationError(
            "no AWS Region for KMS: give a key ARN, aws-kms://REGION/..., or set AWS_REGION"
        )
    if isinstance(exc, bx.ParamValidationError):
        # The report may quote parameter values; Encrypt's include the data key itself.
        detail = "" if operation == "Encrypt" else f": {exc}"
        return ConfigurationError(f"AWS KMS {operation}: invalid request{detail}")
    if isinstance(exc, bx.BotoCoreError | ConnectionError | TimeoutError | binascii.Error):
        # Connection refused or reset, TLS failures, an unparseable answer (a blob that is
        # not base64 came out of botocore as binascii.Error; review): try again.
        return KmsTransientError(f"AWS KMS {operation}: {name} ({exc})")
    return exc


def _member(resp: Mapping[str, Any], name: str, operation: str) -> Any:
    """A member the answer must hold. A truncated body parses as an answer without members:
    `KmsTransientError` (an unparseable answer: try again), not a bare KeyError and a
    traceback (review)."""
    value = resp.get(name)
    if value is None:
        raise KmsTransientError(f"AWS KMS {operation} answered without {name}")
    return value


def _same_key(answer: object, asked: str) -> bool:
    """Does a KeyId AWS KMS answered name the key `asked` (a key ARN, or a bare key id)? The
    same ARN; or for a multi-Region key (``mrk-``), the same key of the same account in
    another Region: a replica's Decrypt names the replica (a reader in another Region was
    refused every object; review)."""
    if not isinstance(answer, str):
        return False
    if answer == asked:
        return True
    got, want = KMS_ARN.fullmatch(answer), KMS_ARN.fullmatch(asked)
    if got is None:
        return False
    if want is None:  # a bare key id: the key the answer's ARN names
        return answer.endswith(":key/" + asked)
    return (
        got.group(1) == want.group(1)  # partition
        and got.group(3) == want.group(3)  # account
        and got.group(4) == want.group(4) == "key"
        and got.group(5) == want.group(5)  # key id
        and got.group(5).startswith("mrk-")
    )


# -- the backend ----------------------------------------------------------------------------


class AwsKms:
    """`KmsBackend` (and `BlockingKms`) over boto3's KMS client.

    region: the Region for keys that do not name one (default: the AWS chain's). A key ARN,
        or a header's ARN on decrypt, always uses its own Region.
    endpoint_url: an AWS-KMS-compatible endpoint (default ``$AWS_ENDPOINT_URL_KMS``, else
        AWS's own endpoint for the Region). Every Region is called at this one URL.
    session: a ``boto3.session.Session`` to take credentials, configuration and event hooks
        from (default: a new one over the usual AWS chain).
    connect_timeout / read_timeout: seconds, per attempt (a timeout is `KmsTimeoutError`).
    max_pool_connections: HTTP connections kept per Region (the lake jobs' concurrency).
    """

    provider_id = PROVIDER_ID

    def __init__(
        self,
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        session: Any = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 30.0,
        max_pool_connections: int = 32,
    ) -> None:
        if region is not None:
            _check_region(region, "the region argument")
        if endpoint_url is None:
            endpoint_url = os.environ.get(ENDPOINT_ENV) or None
        self.region = region
        self.endpoint_url = check_endpoint_url(endpoint_url) if endpoint_url else None
        if not (0 < connect_timeout <= 600 and 0 < read_timeout <= 600):
            raise ConfigurationError("KMS connect and read timeouts must be in (0, 600] seconds")
        if not 1 <= max_pool_connections <= 1024:
            raise ConfigurationError("max_pool_connections must be 1..1024")
        self._timeouts = (connect_timeout, read_timeout)
        self._pool = max_pool_connections
        self._session = session
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._found_region: str | None = None  # (`_default_region`)
        self._closed = False
        #: The one key this backend decrypts with (a reader's ``--key`` naming a key): sent as
        #: Decrypt's KeyId instead of the header's, so AWS KMS refuses a data key wrapped under
        #: any other (IncorrectKeyException). None: the key ARN the header records.
        self.required_key: str | None = None

    def __repr__(self) -> str:
        return f"AwsKms(region={self.region!r}, endpoint_url={self.endpoint_url!r})"

    def __reduce__(self) -> str | tuple[object, ...]:
        """Refused: the pickle would carry credentials (ship a `KeySpec` to workers instead,
        and build the keyring there). It failed on a botocore internal by accident."""
        raise TypeError("AwsKms holds AWS credentials and cannot be pickled; ship a KeySpec")

    # -- clients ------------------------------------------------------------------------

    @property
    def session(self) -> Any:
        """The boto3 session (created on first use: this is what imports boto3). Register
        botocore event hooks on ``session.events`` before the first call."""
        with self._lock:
            if self._session is None:
                try:
                    import boto3.session
                except ImportError:
                    raise ConfigurationError(
                        "the aws backend needs boto3: pip install 'envelope-kms[aws]'"
                    ) from None
                self._session = boto3.session.Session()
            return self._session

    def _default_region(self) -> str:
        """The Region of keys that name none: `region`, else the AWS configuration's, read
        once, at the first call, and kept. Read at every call, a process that changed
        $AWS_REGION sent `alias/lake` to another Region's key of that name, while the data-key
        cache (bound to this backend and the key id) went on handing out the first Region's
        data keys: an object meant for eu-west-1 sealed under a us-east-1 key (review)."""
        if self.region is not None:
            return self.region
        if self._found_region is not None:
            return self._found_region
        # AWS_REGION first, as the other AWS SDKs read it (botocore reads AWS_DEFAULT_REGION
        # and the profile's region, which come next).
        region = os.environ.get("AWS_REGION") or self.session.region_name
        if not region:
            raise ConfigurationError(
                "no AWS Region for KMS: give a key ARN, aws-kms://REGION/..., or set AWS_REGION"
            )
        checked = _check_region(str(region), "the AWS configuration")
        with self._lock:
            if self._found_region is None:
                self._found_region = checked
            return self._found_region

    def client(self, region: str | None = None) -> Any:
        """The KMS client for `region` (default: this backend's), one per Region, reused."""
        region = region or self._default_region()
        client = self._clients.get(region)
        if client is not None:
            return client
        session = self.session
        from botocore.config import Config

        with self._lock:
            if self._closed:
                # (ClosedError, as the other backends say it: keyrings sharing a backend
                # close it together; review)
                raise ClosedError("this AWS KMS backend is closed")
            client = self._clients.get(region)
            if client is None:
                guard_botocore_logs()
                config = Config(
                    retries=dict(BOTOCORE_NO_RETRIES),
                    connect_timeout=self._timeouts[0],
                    read_timeout=self._timeouts[1],
                    max_pool_connections=self._pool,
                    user_agent_extra="envelope",
                )
                client = session.client(
                    "kms", region_name=region, endpoint_url=self.endpoint_url, config=config
                )
                self._clients[region] = client
            return client

    def _call(
        self, operation: str, region: str | None, fn: Callable[[Any], T], key: str | None = None
    ) -> T:
        try:
            return fn(self.client(region))
        except ConfigurationError:
            raise
        except Exception as e:
            translated = _translate(e, operation, key)
            if translated is e:
                raise
            raise translated from None

    # -- the blocking face --------------------------------------------------------------

    def generate_data_key_blocking(self, key_id: str, *, context: Mapping[str, str]) -> DataKey:
        """GenerateDataKey (AES_256) under `key_id`, on the calling thread."""
        ref = parse_key_ref(key_id)
        if ref.key is None:
            raise ConfigurationError(f"{key_id!r} names no key to encrypt under")
        kid = ref.key
        resp = self._call(
            "GenerateDataKey",
            ref.region,
            lambda c: c.generate_data_key(
                KeyId=kid, KeySpec="AES_256", EncryptionContext=dict(context)
            ),
            kid,
        )
        plaintext = bytearray(_member(resp, "Plaintext", "GenerateDataKey"))
        try:
            if len(plaintext) != DATA_KEY_LEN:
                raise KmsKeyError(
                    f"AWS KMS GenerateDataKey returned {len(plaintext)} bytes, not a data key"
                )
            arn = self._recorded_arn(resp, "GenerateDataKey", kid)
            blob = bytes(_member(resp, "CiphertextBlob", "GenerateDataKey"))
            return DataKey(plaintext, WrappedKey(PROVIDER_ID, arn, blob))
        finally:
            plaintext[:] = bytes(len(plaintext))

    def encrypt_data_key_blocking(
        self, key_id: str, plaintext: bytes | bytearray, *, context: Mapping[str, str]
    ) -> WrappedKey:
        """Encrypt an existing data key under `key_id` (re-wrapping), on the calling thread."""
        ref = parse_key_ref(key_id)
        if ref.key is None:
            raise ConfigurationError(f"{key_id!r} names no key to wrap under")
        kid = ref.key
        resp = self._call(
            "Encrypt",
            ref.region,
            lambda c: c.encrypt(
                KeyId=kid, Plaintext=bytes(plaintext), EncryptionContext=dict(context)
            ),
            kid,
        )
        return WrappedKey(
            PROVIDER_ID,
            self._recorded_arn(resp, "Encrypt", kid),
            bytes(_member(resp, "CiphertextBlob", "Encrypt")),
        )

    def decrypt_data_key_blocking(
        self, wrapped: WrappedKey, *, context: Mapping[str, str]
    ) -> bytearray:
        """Decrypt with KeyId = the recorded key ARN, in its Region, on the calling thread."""
        region = key_arn_region(wrapped.key_id) if wrapped.provider_id == PROVIDER_ID else None
        if region is None:
            raise KmsKeyError(f"not an AWS KMS wrapped key ({wrapped_key_name(wrapped)})")
        key_id = wrapped.key_id
        if self.required_key is not None:
            key_id = self.required_key
            # an alias the reader named is resolved in the reader's Region (its argument's,
            # else the AWS chain's), never in the one the header names: aliases are per
            # Region, so a header could pick the Region where the same alias name names
            # another key, and the pin would hold nothing (review). A key id names one key
            # (or a multi-Region key's replicas) wherever it is asked: the header's Region
            if key_id.startswith("alias/"):
                region = key_arn_region(key_id) or self._default_region()
            else:
                region = key_arn_region(key_id) or self.region or region
        resp = self._call(
            "Decrypt",
            region,
            lambda c: c.decrypt(
                KeyId=key_id,
                CiphertextBlob=wrapped.ciphertext,
                EncryptionContext=dict(context),
                EncryptionAlgorithm="SYMMETRIC_DEFAULT",
            ),
            key_id,
        )
        key = bytearray(_member(resp, "Plaintext", "Decrypt"))
        if not _same_key(resp.get("KeyId"), wrapped.key_id) or len(key) != DATA_KEY_LEN:
            key[:] = bytes(len(key))
            raise KmsKeyError(
                f"AWS KMS Decrypt answered for {printable(str(resp.get('KeyId')))} with "
                f"{len(key)} bytes, not with a data key of {wrapped.key_id!r}"
            )
        return key

    @staticmethod
    def _recorded_arn(resp: Mapping[str, Any], operation: str, asked: str) -> str:
        """The key ARN an answer names, for the header: a key ARN, and the key asked for
        when that was a key ARN or id (an answer for another key, or another Region's, went
        into the header; review). An alias is resolved by KMS: any key ARN."""
        arn = resp.get("KeyId")
        if not isinstance(arn, str) or key_arn_region(arn) is None:
            raise KmsKeyError(
                f"AWS KMS {operation} answered KeyId {arn!r}, not a key ARN: "
                "a header must name the key's ARN for decryption to find it"
            )
        if not asked.startswith("alias/") and ":alias/" not in asked and (
            arn != asked if KMS_ARN.fullmatch(asked) else not arn.endswith(":key/" + asked)
        ):
            raise KmsKeyError(
                f"AWS KMS {operation} answered for {printable(arn)}, not for the key asked "
                f"for, {printable(asked)}"
            )
        return arn

    def close_blocking(self) -> None:
        """Close every client's connections. Idempotent."""
        with self._lock:
            self._closed = True
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()

    # -- the async face -----------------------------------------------------------------

    async def _off_loop(self, fn: Callable[[], T]) -> T:
        import anyio.to_thread

        return await anyio.to_thread.run_sync(fn, abandon_on_cancel=True)

    async def generate_data_key(self, key_id: str, *, context: Mapping[str, str]) -> DataKey:
        return await self._off_loop(
            partial(self.generate_data_key_blocking, key_id, context=dict(context))
        )

    async def encrypt_data_key(
        self, key_id: str, plaintext: bytes | bytearray, *, context: Mapping[str, str]
    ) -> WrappedKey:
        return await self._off_loop(
            partial(self.encrypt_data_key_blocking, key_id, plaintext, context=dict(context))
        )

    async def decrypt_data_key(
        self, wrapped: WrappedKey, *, context: Mapping[str, str]
    ) -> bytearray:
        return await self._off_loop(
            partial(self.decrypt_data_key_blocking, wrapped, context=dict(context))
        )

    def can_unwrap(self, wrapped: WrappedKey) -> bool:
        """An ``aws-kms`` wrapped key naming a well-formed key ARN: any such key may be tried
        (the credentials decide), as the local backend tries any key of its store. The
        endpoint is this backend's, whatever the header says."""
        return wrapped.provider_id == PROVIDER_ID and key_arn_region(wrapped.key_id) is not None

    async def aclose(self) -> None:
        self.close_blocking()


def open_aws(uri: str, *, endpoint_url: str | None = None) -> tuple[AwsKms, str | None]:
    """(backend, key id to seal under, or None when the URI names no key) for an aws URI."""
    ref = parse_key_ref(uri)
    backend = AwsKms(region=ref.region, endpoint_url=endpoint_url)
    return backend, ref.key  # an alias or key id is called in the backend's Region
