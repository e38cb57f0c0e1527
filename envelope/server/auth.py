"""AWS Signature Version 4 authentication of KMS requests against the store's access keys.

`Authenticator.authenticate` takes one HTTP request as received and returns the principal ARN
that signed it, or raises `AuthError` carrying the AWS error code, HTTP status and message a
client of AWS KMS would get:

========================================  ======================================================
``MissingAuthenticationTokenException``   no ``Authorization`` header ("Missing Authentication
                                          Token")
``IncompleteSignatureException``          an ``Authorization`` header that is not a complete
                                          ``AWS4-HMAC-SHA256`` one, or no/malformed X-Amz-Date
``UnrecognizedClientException``           unknown or inactive access key id, or a session token
                                          missing, unexpected or wrong ("The security token
                                          included in the request is invalid.")
``ExpiredTokenException``                 a role session past its expiration ("The security
                                          token included in the request is expired")
``InvalidSignatureException``             the credential scope names another service, an unknown
                                          region, another date; the request was signed more than
                                          5 minutes before or after the server's clock
                                          ("Signature expired: ... is now earlier than ...
                                          (... - 5 min.)" / "Signature not yet current"); or the
                                          signature does not match ("The request signature we
                                          calculated does not match the signature you provided.
                                          ...")
========================================  ======================================================

All are HTTP 400, as the AWS JSON-protocol services (KMS, DynamoDB) answer them. The
signature is recomputed by botocore itself (`botocore.auth.SigV4Auth`: its canonical
request, string to sign and signing key) over a request rebuilt from exactly the headers
the client listed in ``SignedHeaders``, with the client's ``X-Amz-Date``, and compared in
constant time. A signed ``X-Amz-Content-SHA256`` must be the body's real hash (botocore
would otherwise trust it), and ``X-Amz-Target`` must be signed when present, so that a
captured request cannot be replayed as another operation.

Secrets come from `KeyService.resolve_credentials` (cached there); they never appear in an
`AuthError`, whose messages name at most the access key id.

The same verifier serves other SigV4 services: `service_name` is the service of the credential
scope (``kms`` for `envelope serve`, ``kms-xks-proxy`` for the XKS proxy of `envelope.xks`), and
`credentials` is anything with the `CredentialSource` shape (`KeyService`, or
`StaticCredentials`: a fixed set of access key ids and secrets, as an XKS proxy is configured).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from calendar import timegm
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, NamedTuple, Protocol

from botocore.auth import SigV4Auth
from botocore.credentials import Credentials

__all__ = (
    "SKEW",
    "AuthError",
    "Authenticated",
    "Authenticator",
    "CredentialSource",
    "ResolvedSecret",
    "StaticCredentials",
)

_SPACES = re.compile(r"[ \t]+")

#: An access key id as AWS spells them: only such a claimed id is recorded (anything else may be
#: a secret sent in its place).
_KEY_ID = re.compile(r"^[A-Z0-9]{16,128}$")

#: AWS's clock-skew window for SigV4 (seconds either side of the server's clock).
SKEW: Final = 300.0
SERVICE: Final = "kms"
ALGORITHM: Final = "AWS4-HMAC-SHA256"

INVALID_TOKEN: Final = "The security token included in the request is invalid."
EXPIRED_TOKEN: Final = "The security token included in the request is expired"
MISMATCH: Final = (
    "The request signature we calculated does not match the signature you provided. Check your "
    "AWS Secret Access Key and signing method. Consult the service documentation for details."
)
_AMZ_DATE = re.compile(r"^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$")
_SIGNATURE = re.compile(r"^[0-9a-f]{64}$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9a-z-]+$")


class AuthError(Exception):
    """A request refused before it had a principal: `code` is the AWS error code (the
    ``__type`` of the response), `status` the HTTP status, `message` what the client is told;
    `access_key_id` the key the request claimed (for the audit record), if any.

    `audit_message` is what the audit record keeps, when `message` echoes text of the request
    back to its sender, as AWS's answers do: that text may be a secret (a client with its key
    id and secret swapped sends its secret where the key id goes), and the audit log is kept
    for ever and read by others."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int = 400,
        access_key_id: str | None = None,
        audit_message: str | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.access_key_id = access_key_id
        self.audit_message = message if audit_message is None else audit_message


@dataclass(frozen=True, slots=True)
class Authenticated:
    """Who signed a request, with which key, for which Region."""

    principal: str
    access_key_id: str
    region: str


class _SignedHeaders:
    """The headers a client signed, read the way botocore's signer reads its `HTTPHeaders`:
    iteration over the (lower-case) names, `get_all` in arrival order, a case-insensitive
    ``in`` and ``[]`` (the first value). botocore's `HTTPHeaders` is an `email.message`
    with a linear scan per lookup; this gives the signer the same input at a fraction of
    the cost."""

    __slots__ = ("_values",)

    def __init__(self, values: dict[str, list[str]]) -> None:
        self._values = values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._values

    def __getitem__(self, name: str) -> str | None:
        found = self._values.get(name.lower())
        return found[0] if found else None

    def get_all(self, name: str, failobj: object = None) -> list[str] | object:
        return self._values.get(name.lower(), failobj)

    def items(self) -> list[tuple[str, str]]:
        return [(k, v) for k, vs in self._values.items() for v in vs]


class _SignedRequest:
    """What botocore's `SigV4Auth.canonical_request` and `string_to_sign` read of an
    `AWSRequest` (method, url, params, headers, context), for a request received rather than
    sent: no body preparation, no `HTTPHeaders`; the payload's hash is computed once."""

    __slots__ = ("context", "headers", "method", "params", "payload_hash", "url")

    def __init__(
        self, method: str, url: str, headers: _SignedHeaders, timestamp: str, payload_hash: str
    ) -> None:
        self.method = method
        self.url = url
        self.params: dict[str, str] = {}
        self.headers = headers
        self.context = {"timestamp": timestamp}
        self.payload_hash = payload_hash


class _Verifier(SigV4Auth):  # type: ignore[misc]  # botocore ships no type hints
    """botocore's SigV4 signer for one access key and Region, made to sign exactly the headers
    the client signed (botocore itself skips a few, such as User-Agent, that other SDKs may
    sign). Kept per key and Region: it holds no per-request state, only the day's signing
    key."""

    def __init__(self, credentials: Credentials, region: str, service: str = SERVICE) -> None:
        super().__init__(credentials, service, region)
        #: (day, signing key): botocore's four HMACs depend only on the secret, the day and
        #: the Region, so they run once a day (a tuple, replaced atomically: thread-safe)
        self._day_key: tuple[str, bytes] = ("", b"")

    def headers_to_sign(self, request: _SignedRequest) -> _SignedHeaders:
        # the request holds exactly the signed headers (see `Authenticator._signature`)
        return request.headers

    def signature(self, string_to_sign: str, request: _SignedRequest) -> str:
        # botocore's derivation (`SigV4Auth.signature`), the signing key cached per day
        day = request.context["timestamp"][0:8]
        cached_day, k_signing = self._day_key
        if cached_day != day:
            secret = self.credentials.secret_key
            k_date = self._sign(f"AWS4{secret}".encode(), day)
            k_service = self._sign(self._sign(k_date, self._region_name), self._service_name)
            k_signing = self._sign(k_service, "aws4_request")
            self._day_key = (day, k_signing)
        return str(self._sign(k_signing, string_to_sign, hex=True))

    def payload(self, request: _SignedRequest) -> str:
        # botocore's rule for a bytes body (the SHA-256 of the bytes, also when empty),
        # computed once per request by the authenticator
        return request.payload_hash

    def _header_value(self, value: str) -> str:
        # SigV4's Trimall: trim, and collapse runs of spaces. botocore's signer uses
        # str.split(), which also takes U+0085 and U+00A0 (bytes 0x85, 0xA0 of a header read
        # as Latin-1) for spaces: a verifier that did so would let those bytes be added to any
        # signed header value after signing.
        return _SPACES.sub(" ", value.strip(" \t"))


class ResolvedSecret(Protocol):
    """What the authenticator reads of one access key (`service.ResolvedCredentials`)."""

    @property
    def principal_arn(self) -> str: ...
    @property
    def secret(self) -> str: ...
    @property
    def session_token_hash(self) -> bytes | None: ...
    @property
    def expires(self) -> float | None: ...
    @property
    def active(self) -> bool: ...


class CredentialSource(Protocol):
    """Where the authenticator finds the secret of an access key id (`KeyService` is one)."""

    @property
    def region(self) -> str: ...
    def resolve_credentials(self, access_key_id: str, now: float) -> ResolvedSecret | None: ...


@dataclass(frozen=True, slots=True)
class _StaticSecret:
    principal_arn: str
    secret: str = field(repr=False)
    session_token_hash: bytes | None = None
    expires: float | None = None
    active: bool = True


class StaticCredentials:
    """A fixed set of long-term access keys (id -> secret), each signing as `principal_arn`
    (default ``access-key/<id>``): how an XKS proxy knows the credentials AWS KMS signs with.
    Several keys at once let a credential be rotated without downtime. The repr names only
    the key ids."""

    __slots__ = ("_keys", "region")

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("static credentials hold secret access keys and cannot be pickled")

    def __init__(
        self,
        keys: Mapping[str, str],
        region: str,
        *,
        principals: Mapping[str, str] | None = None,
    ) -> None:
        self.region = region
        self._keys = {
            key_id: _StaticSecret((principals or {}).get(key_id, f"access-key/{key_id}"), secret)
            for key_id, secret in keys.items()
        }

    def __repr__(self) -> str:
        return f"StaticCredentials(access_key_ids={sorted(self._keys)!r}, region={self.region!r})"

    def resolve_credentials(self, access_key_id: str, now: float) -> ResolvedSecret | None:
        return self._keys.get(access_key_id)


def _amz_time(text: str) -> float | None:
    m = _AMZ_DATE.match(text)
    if m is None:
        return None
    y, mo, d, h, mi, s = (int(g) for g in m.groups())
    try:
        return float(timegm((y, mo, d, h, mi, s, 0, 0, 0)))
    except (ValueError, OverflowError):
        return None


def _stamp(t: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(t))


def _parse_authorization(value: str) -> tuple[str, list[str], str]:
    """(Credential, SignedHeaders, Signature) of an AWS4-HMAC-SHA256 header, or AuthError."""
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise AuthError(
            "IncompleteSignatureException",
            f"Unsupported AWS 'algorithm': '{algorithm[:64]}'; use {ALGORITHM}",
            audit_message=f"Unsupported AWS 'algorithm'; use {ALGORITHM}",
        )
    fields: dict[str, str] = {}
    for part in rest.split(","):
        name, eq, val = part.strip().partition("=")
        if not eq:
            if part.strip():
                raise AuthError(
                    "IncompleteSignatureException",
                    f"'{part.strip()[:64]}' not a valid key=value pair (missing equal-sign) in "
                    "Authorization header",
                    audit_message="not a valid key=value pair (missing equal-sign) in "
                    "Authorization header",
                )
            continue
        fields[name] = val
    missing = [
        f"Authorization header requires '{f}' parameter."
        for f in ("Credential", "Signature", "SignedHeaders")
        if not fields.get(f)
    ]
    if missing:
        raise AuthError("IncompleteSignatureException", " ".join(missing))
    return fields["Credential"], fields["SignedHeaders"].split(";"), fields["Signature"]


def _by_name(headers: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for name, value in headers:
        values.setdefault(name.lower(), []).append(value)
    return values


class _Claims(NamedTuple):
    """What a request's headers claim, checked up to the signature itself. Its repr leaves the
    secret out (it travels from the header check to the signature check)."""

    claimed: str | None
    key_id: str
    region: str
    amz_date: str
    signed: list[str]
    signature: str
    secret: str
    principal: str

    def __repr__(self) -> str:
        return f"_Claims(key_id={self.key_id!r}, region={self.region!r}, secret=<secret>)"

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("checked claims hold a secret access key and cannot be pickled")


class Authenticator:
    """Checks AWS SigV4 on each request against `service`'s access keys and role sessions.

    `service` is the credential source (the `KeyService`, or `StaticCredentials`);
    `service_name` the service a credential scope must name (``kms``; ``kms-xks-proxy`` for
    an XKS proxy). `regions`: the Regions a credential scope may name (default: the source's
    Region). `clock` gives the server's time;
    `skew` the accepted distance to the request's time. Thread-safe (the source's lookup is;
    this object keeps no per-request state).
    """

    def __init__(
        self,
        service: CredentialSource,
        *,
        clock: Callable[[], float] = time.time,
        skew: float = SKEW,
        regions: Collection[str] | None = None,
        service_name: str = SERVICE,
    ) -> None:
        self.service = service
        self.service_name = service_name
        self._clock = clock
        self.skew = skew
        self.regions = frozenset(regions) if regions is not None else frozenset({service.region})
        #: botocore signers by (access key id, Region), each with its day's signing key
        self._verifiers: dict[tuple[str, str], _Verifier] = {}

    def __repr__(self) -> str:
        return (
            f"Authenticator(service_name={self.service_name!r}, "
            f"regions={sorted(self.regions)!r}, skew={self.skew!r})"
        )

    def authenticate(
        self,
        *,
        method: str,
        host: str,
        path: str,
        query: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
    ) -> str:
        """The principal ARN that signed this request; `AuthError` if none did."""
        return self.verify(
            method=method, host=host, path=path, query=query, headers=headers, body=body
        ).principal

    def verify(
        self,
        *,
        method: str,
        host: str,
        path: str,
        query: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        checked: object = None,
    ) -> Authenticated:
        """`authenticate` with the access key id and the Region of the credential scope.
        `checked`: what `check_headers` returned for these headers (its checks, and the
        access key's lookup, are not done again)."""
        values = _by_name(headers)
        c = checked if isinstance(checked, _Claims) else self._claims(values)
        if not _SIGNATURE.match(c.signature):
            raise AuthError("InvalidSignatureException", MISMATCH, access_key_id=c.claimed)
        expected = self._signature(
            method,
            host,
            path,
            query,
            values,
            c.signed,
            body,
            c.amz_date,
            c.region,
            c.key_id,
            c.secret,
        )
        if expected is None or not hmac.compare_digest(expected, c.signature):
            raise AuthError("InvalidSignatureException", MISMATCH, access_key_id=c.claimed)
        return Authenticated(c.principal, c.key_id, c.region)

    def check_headers(self, headers: Sequence[tuple[str, str]]) -> object:
        """Everything `verify` checks that needs no body (the Authorization header, the
        credential scope, the signing time, the access key and its session token), raising
        the same `AuthError`: a server runs it before it reads a request's body, so that a
        client with no valid access key cannot make it hold bodies in memory. Returns what
        `verify` then takes as `checked`."""
        return self._claims(_by_name(headers))

    def _claims(self, values: dict[str, list[str]]) -> _Claims:
        auth = values.get("authorization")
        if not auth or not auth[0].strip():
            raise AuthError("MissingAuthenticationTokenException", "Missing Authentication Token")
        if len(auth) > 1:
            raise AuthError("IncompleteSignatureException", "Only one Authorization header")
        credential, signed, signature = _parse_authorization(auth[0])

        scope = credential.split("/")
        if len(scope) != 5:
            raise AuthError(
                "IncompleteSignatureException",
                f"Credential must have exactly 5 slash-delimited elements, e.g. "
                f"keyid/date/region/service/term, got '{credential[:200]}'",
                audit_message="Credential must have exactly 5 slash-delimited elements, e.g. "
                f"keyid/date/region/service/term; it has {len(scope)}",
            )
        key_id, scope_date, region, service, term = scope
        claimed = key_id if _KEY_ID.match(key_id) else None
        # SigV4 takes the signing time from X-Amz-Date, else from Date (in the same format)
        amz = values.get("x-amz-date") or values.get("date")
        if not amz:
            raise AuthError(
                "IncompleteSignatureException",
                "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' "
                "header.",
                access_key_id=claimed,
            )
        amz_date = amz[0].strip()
        signed_at = _amz_time(amz_date)
        if signed_at is None:
            raise AuthError(
                "IncompleteSignatureException",
                f"Date must be in ISO-8601 'basic format'. Got '{amz_date[:32]}'. See "
                "http://en.wikipedia.org/wiki/ISO_8601",
                access_key_id=claimed,
            )
        if scope_date != amz_date[:8]:
            raise AuthError(
                "InvalidSignatureException",
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date "
                f"from HTTP: '{scope_date[:16]}' != '{amz_date[:8]}', from '{amz_date}'.",
                access_key_id=claimed,
            )
        if service != self.service_name:
            raise AuthError(
                "InvalidSignatureException",
                f"Credential should be scoped to correct service: '{self.service_name}'. ",
                access_key_id=claimed,
            )
        if region not in self.regions:
            raise AuthError(
                "InvalidSignatureException",
                f"Credential should be scoped to a valid region, not '{region[:64]}'. ",
                access_key_id=claimed,
            )
        if term != "aws4_request":
            raise AuthError(
                "InvalidSignatureException",
                f"Credential should be scoped with a valid terminator: 'aws4_request', not "
                f"'{term[:32]}'. ",
                access_key_id=claimed,
            )
        signed = [h.strip() for h in signed]
        if "host" not in signed:
            raise AuthError(
                "InvalidSignatureException",
                "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.",
                access_key_id=claimed,
            )
        if "x-amz-target" in values and "x-amz-target" not in signed:
            raise AuthError(
                "InvalidSignatureException",
                "'X-Amz-Target' must be a 'SignedHeader' in the AWS Authorization.",
                access_key_id=claimed,
            )
        # "If you include a date or x-amz-date header, you must also include that header in
        # the list of signed headers" (IAM User Guide, creating a signed request)
        dated = "x-amz-date" if "x-amz-date" in values else "date" if "date" in values else None
        if dated is not None and dated not in signed:
            raise AuthError(
                "InvalidSignatureException",
                f"'{'X-Amz-Date' if dated == 'x-amz-date' else 'Date'}' must be a "
                "'SignedHeader' in the AWS Authorization.",
                access_key_id=claimed,
            )

        now = self._clock()
        creds = self.service.resolve_credentials(key_id, now)
        if creds is None or not creds.active:
            raise AuthError("UnrecognizedClientException", INVALID_TOKEN, access_key_id=claimed)
        tokens = values.get("x-amz-security-token")
        if creds.session_token_hash is None:
            if tokens:
                raise AuthError("UnrecognizedClientException", INVALID_TOKEN, access_key_id=claimed)
        else:
            token = tokens[0] if tokens and len(tokens) == 1 else None
            if token is None or not hmac.compare_digest(
                hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest(),
                creds.session_token_hash,
            ):
                raise AuthError("UnrecognizedClientException", INVALID_TOKEN, access_key_id=claimed)
            if creds.expires is not None and now >= creds.expires:
                raise AuthError("ExpiredTokenException", EXPIRED_TOKEN, access_key_id=claimed)

        if signed_at < now - self.skew:
            raise AuthError(
                "InvalidSignatureException",
                f"Signature expired: {amz_date} is now earlier than {_stamp(now - self.skew)} "
                f"({_stamp(now)} - {self.skew / 60:g} min.)",
                access_key_id=claimed,
            )
        if signed_at > now + self.skew:
            raise AuthError(
                "InvalidSignatureException",
                f"Signature not yet current: {amz_date} is still later than "
                f"{_stamp(now + self.skew)} ({_stamp(now)} + {self.skew / 60:g} min.)",
                access_key_id=claimed,
            )

        return _Claims(
            claimed, key_id, region, amz_date, signed, signature, creds.secret, creds.principal_arn
        )

    def _signature(
        self,
        method: str,
        host: str,
        path: str,
        query: str,
        values: dict[str, list[str]],
        signed: list[str],
        body: bytes,
        amz_date: str,
        region: str,
        key_id: str,
        secret: str,
    ) -> str | None:
        """botocore's signature of the request as the client signed it (None: a header the
        client says it signed is not in the request, or is not a header name)."""
        signed_values: dict[str, list[str]] = {}
        for name in signed:
            if not _HEADER_NAME.match(name):
                return None
            found = values.get(name)
            if found is None:
                if name != "host" or not host:
                    return None
                found = [host]
            signed_values.setdefault(name, []).extend(found)
        payload_hash = hashlib.sha256(body).hexdigest()
        if "x-amz-content-sha256" in signed_values and any(
            v.strip() != payload_hash for v in signed_values["x-amz-content-sha256"]
        ):
            return None  # botocore would sign the claimed hash instead of the body's
        request = _SignedRequest(
            method.upper(),
            f"https://{host or 'localhost'}{path or '/'}" + (f"?{query}" if query else ""),
            _SignedHeaders(signed_values),
            amz_date,
            payload_hash,
        )
        signer = self._verifier(key_id, secret, region)
        try:
            canonical = signer.canonical_request(request)
        except ValueError:  # a Host no URL can hold (urlsplit: "Invalid IPv6 URL" for "[::1")
            return None
        return str(signer.signature(signer.string_to_sign(request, canonical), request))

    def _verifier(self, key_id: str, secret: str, region: str) -> _Verifier:
        """The signer of this key and Region (a new one when the secret is not the cached
        one's: a key id is never reused, but a cache must not rely on that)."""
        found = self._verifiers.get((key_id, region))
        if found is None or not hmac.compare_digest(found.credentials.secret_key, secret):
            if len(self._verifiers) >= 4096:
                self._verifiers.clear()
            found = self._verifiers[(key_id, region)] = _Verifier(
                Credentials(key_id, secret), region, self.service_name
            )
        return found
