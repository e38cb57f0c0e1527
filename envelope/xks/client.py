"""`XksClient`: calls an XKS proxy the way AWS KMS does (XKS proxy API v1, `envelope.xks.spec`).

    client = XksClient("https://xks.example.com", "/keystores/demo/kms/xks/v1",
                       access_key_id, secret_access_key, region="us-east-1",
                       ca_file="/etc/envelope/xks-ca.pem")
    md = RequestMetadata("arn:aws:iam::111122223333:user/alice", key_arn,
                         "GenerateDataKey", request_id)
    blob = client.encrypt("orders", data_key, aad, md)        # XksCiphertext
    data_key == client.decrypt("orders", blob, aad, md)

Synchronous and thread-safe: one keep-alive pool of HTTPS connections shared by every thread
(`envelope.xks._transport`: one write per request), so a call costs one
request/response on an open connection, not a TCP and TLS handshake. Every request is signed
with SigV4 for ``kms-xks-proxy`` (botocore's signer, see `envelope.xks._sigv4`) and bounded by
`timeout` (default 250 ms, what AWS KMS allows a proxy: the connection, the TLS handshake, the
write and the answer together). Nothing is retried, except a request on a kept-alive connection
the proxy had closed (sent again once, on a new connection, if the time allows).

Every answer is checked against the specification before it is believed: a member missing, a
length that is not the specification's, Base64 that is not, or a ciphertext data integrity value
(CDIV, requested by default on Encrypt as AWS KMS does) that does not match the ciphertext is
`XksInvalidResponse`. Failures are typed (`envelope.xks.errors`): the proxy's own error answer
is `XksProxyError(error_name, message, status)`; `XksUnreachable`, `XksTimeout` and
`XksTlsError` when there was no answer. Each call is timed into the Prometheus histogram
``envelope_xks_client_seconds{operation,outcome}`` (sub-millisecond buckets).

The secret access key is held only by the signer: never in a repr, a message or a log.
"""

from __future__ import annotations

import hmac
import json
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from ..errors import ConfigurationError
from ._sigv4 import Signer
from ._transport import Transport
from .errors import XksError, XksInvalidResponse, XksProxyError
from .spec import (
    AES_GCM,
    API_PATH,
    CDIV_SHA_256,
    DEFAULT_TIMEOUT,
    ERROR_STATUS,
    HEALTH_STATUSES,
    IV_LENGTHS,
    KEY_STATUSES,
    MAX_CIPHERTEXT_METADATA,
    MAX_EKM_FLEET,
    MAX_KEY_USAGES,
    TAG_LENGTH,
    RequestMetadata,
    SpecViolation,
    b64decode,
    b64encode,
    cdiv,
    check_key_id,
    check_secret_access_key,
    health_path,
    key_path,
    split_uri_path,
)

__all__ = (
    "RequestMetadata",
    "XksCiphertext",
    "XksClient",
    "XksKeyMetadata",
)

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class XksKeyMetadata:
    """GetKeyMetadata's answer: ``keySpec``, ``keyUsage`` and ``keyStatus``."""

    key_spec: str
    key_usage: tuple[str, ...]
    key_status: str


@dataclass(frozen=True, slots=True, repr=False)
class XksCiphertext:
    """Encrypt's answer, everything Decrypt needs back besides the AAD."""

    ciphertext: bytes
    iv: bytes
    tag: bytes
    ciphertext_metadata: bytes | None = None

    def __repr__(self) -> str:
        meta = self.ciphertext_metadata
        return (
            f"XksCiphertext(ciphertext=<{len(self.ciphertext)} bytes>, iv=<{len(self.iv)} "
            f"bytes>, tag=<{len(self.tag)} bytes>, ciphertext_metadata="
            f"{None if meta is None else f'<{len(meta)} bytes>'})"
        )


class _Metrics:
    """The client histogram, registered once per process in the default registry."""

    _lock = threading.Lock()
    _histogram: Any = None
    _children: dict[tuple[str, str], Any] = {}  # noqa: RUF012  # process-wide on purpose

    @classmethod
    def observe(cls, operation: str, outcome: str, seconds: float) -> None:
        child = cls._children.get((operation, outcome))
        if child is None:
            with cls._lock:
                if cls._histogram is None:
                    from prometheus_client import Histogram

                    from ..prometheus import LATENCY_BUCKETS

                    cls._histogram = Histogram(
                        "envelope_xks_client_seconds",
                        "XKS proxy calls made by this process, by operation and outcome (OK, "
                        "the proxy's errorName, or Unreachable/Timeout/TlsError/InvalidResponse)",
                        ("operation", "outcome"),
                        buckets=LATENCY_BUCKETS,
                    )
                child = cls._children[(operation, outcome)] = cls._histogram.labels(
                    operation, outcome
                )
        child.observe(seconds)


def _outcome(e: BaseException) -> str:
    if isinstance(e, XksProxyError):
        return e.error_name
    return type(e).__name__.removeprefix("Xks")


class XksClient:
    """A client of one XKS proxy endpoint and URI path, with one SigV4 credential.

    `endpoint`: ``https://host[:port]`` (AWS's XksProxyUriEndpoint). `uri_path`: the
    XksProxyUriPath (``[/prefix]/kms/xks/v1``); a bare prefix (``/prefix``, or ``""``) is
    accepted too and completed with ``/kms/xks/v1``. `ca_file`: PEM bundle of CAs trusted
    for the proxy's certificate besides the system's. `timeout`: seconds per request.
    `max_connections`: idle connections kept open (more concurrent calls open extra ones,
    closed after use). `region`: the Region of the credential scope. `client_cert` (PEM
    chain) and `client_key`: a certificate for proxies that ask for one (mutual TLS).
    """

    def __init__(
        self,
        endpoint: str,
        uri_path: str,
        access_key_id: str,
        secret_access_key: str,
        *,
        region: str = "us-east-1",
        ca_file: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_connections: int = 32,
        client_cert: str | None = None,
        client_key: str | None = None,
    ) -> None:
        parts = urlsplit(endpoint)
        if parts.scheme != "https" or not parts.hostname:
            raise ConfigurationError(
                f"XKS proxy endpoint must be https://host[:port], not {endpoint[:200]!r}"
            )
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
            raise ConfigurationError(
                "XKS proxy endpoint must be only https://host[:port]; the path goes in uri_path"
            )
        if not timeout > 0:
            raise ConfigurationError(f"timeout must be > 0 seconds, not {timeout!r}")
        if max_connections < 1:
            raise ConfigurationError("max_connections must be at least 1")
        if not uri_path.endswith(API_PATH):
            uri_path = uri_path.rstrip("/") + API_PATH
        try:
            self.prefix = split_uri_path(uri_path)
        except SpecViolation as e:
            raise ConfigurationError(str(e)) from None
        if not access_key_id or not secret_access_key:
            raise ConfigurationError("an XKS client needs an access key id and a secret")
        try:  # (a secret of other characters failed later, inside the signer, holding it)
            check_secret_access_key(secret_access_key)
        except SpecViolation as e:
            raise ConfigurationError(str(e)) from None  # (its message never quotes the value)
        self.endpoint = f"https://{parts.netloc}"
        self.uri_path = uri_path
        self.access_key_id = access_key_id
        self.region = region
        self.timeout = float(timeout)
        port = parts.port or 443
        name = parts.hostname
        shown = f"[{name}]" if ":" in name else name
        #: the Host header, exactly as signed and sent
        self._host = shown if port == 443 else f"{shown}:{port}"
        self._signer = Signer(access_key_id, secret_access_key, region)
        # the system's CAs, and `ca_file`'s besides (a private CA for one proxy must not take
        # the public ones away from another)
        context = ssl.create_default_context()
        if ca_file is not None:
            try:
                context.load_verify_locations(cafile=ca_file)
            except (OSError, ssl.SSLError) as e:
                raise ConfigurationError(f"cannot load the CA file {ca_file}: {e}") from None
        context.minimum_version = ssl.TLSVersion.TLSv1_2  # the specification's floor
        if client_cert is not None:
            try:
                context.load_cert_chain(client_cert, client_key)
            except (OSError, ssl.SSLError) as e:
                raise ConfigurationError(f"cannot load the client certificate: {e}") from None
        self._transport = Transport(name, port, context, self.timeout, max_connections)
        self._paths: dict[tuple[str, str], str] = {}

    def __repr__(self) -> str:
        return (
            f"XksClient(endpoint={self.endpoint!r}, uri_path={self.uri_path!r}, "
            f"access_key_id={self.access_key_id!r}, region={self.region!r}, "
            f"timeout={self.timeout!r})"
        )

    def close(self) -> None:
        """Close every pooled connection (calls after this open new ones)."""
        self._transport.close()

    def __enter__(self) -> XksClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the four operations ------------------------------------------------------------

    def health(self, md: RequestMetadata) -> dict[str, Any]:
        """GetHealthStatus: the proxy's answer, checked (xksProxyFleetSize > 0, vendor and
        model strings, 1-10 ekmFleetDetails each with id, model and an ACTIVE, DEGRADED or
        UNAVAILABLE healthStatus)."""
        doc = self._call(
            "GetHealthStatus",
            health_path(self.prefix),
            {"requestMetadata": self._metadata(md, "GetHealthStatus")},
            self._check_health,
        )
        return doc

    def key_metadata(self, key_id: str, md: RequestMetadata) -> XksKeyMetadata:
        """GetKeyMetadata of the external key `key_id`."""
        return self._call(
            "GetKeyMetadata",
            self._key_path(key_id, "GetKeyMetadata"),
            {"requestMetadata": self._metadata(md, "GetKeyMetadata")},
            self._check_metadata,
        )

    def encrypt(
        self,
        key_id: str,
        plaintext: bytes,
        aad: bytes,
        md: RequestMetadata,
        *,
        integrity: bool = True,
    ) -> XksCiphertext:
        """Encrypt `plaintext` under the external key `key_id` with AES-GCM, binding `aad`
        (empty: none). `integrity`: request the CDIV (SHA_256) and check it, as AWS KMS does
        before it keeps a wrapped data key."""
        doc: dict[str, Any] = {
            "requestMetadata": self._metadata(md, "Encrypt"),
            "plaintext": b64encode(plaintext),
            "encryptionAlgorithm": AES_GCM,
        }
        if aad:
            doc["additionalAuthenticatedData"] = b64encode(aad)
        if integrity:
            doc["ciphertextDataIntegrityValueAlgorithm"] = CDIV_SHA_256

        def check(answer: dict[str, Any]) -> XksCiphertext:
            return self._check_encrypt(answer, len(plaintext), aad, integrity)

        return self._call("Encrypt", self._key_path(key_id, "Encrypt"), doc, check)

    def decrypt(self, key_id: str, ct: XksCiphertext, aad: bytes, md: RequestMetadata) -> bytes:
        """Decrypt what `encrypt` returned, with the same `aad`."""
        doc: dict[str, Any] = {
            "requestMetadata": self._metadata(md, "Decrypt"),
            "ciphertext": b64encode(ct.ciphertext),
            "encryptionAlgorithm": AES_GCM,
            "initializationVector": b64encode(ct.iv),
            "authenticationTag": b64encode(ct.tag),
        }
        if ct.ciphertext_metadata is not None:
            doc["ciphertextMetadata"] = b64encode(ct.ciphertext_metadata)
        if aad:
            doc["additionalAuthenticatedData"] = b64encode(aad)

        def check(answer: dict[str, Any]) -> bytes:
            plaintext = b64decode(_member(answer, "plaintext"), "plaintext")
            if len(plaintext) != len(ct.ciphertext):
                raise SpecViolation("plaintext", "is not as long as the ciphertext")
            return plaintext

        return self._call("Decrypt", self._key_path(key_id, "Decrypt"), doc, check)

    # -- plumbing -----------------------------------------------------------------------

    def _key_path(self, key_id: str, operation: str) -> str:
        path = self._paths.get((key_id, operation))
        if path is None:
            try:
                check_key_id(key_id)
            except SpecViolation as e:
                raise ConfigurationError(str(e)) from None
            if len(self._paths) >= 4096:
                self._paths.clear()
            path = self._paths[(key_id, operation)] = key_path(self.prefix, key_id, operation)
        return path

    @staticmethod
    def _metadata(md: RequestMetadata, operation: str) -> dict[str, str]:
        try:
            return md.to_wire(operation)
        except SpecViolation as e:
            raise ConfigurationError(str(e)) from None

    def _call(
        self,
        operation: str,
        path: str,
        doc: dict[str, Any],
        check: Callable[[dict[str, Any]], _T],
    ) -> _T:
        started = time.perf_counter()
        try:
            status, data = self._post(path, json.dumps(doc, separators=(",", ":")).encode())
            result = self._answer(operation, status, data, check)
        except XksError as e:
            _Metrics.observe(operation, _outcome(e), time.perf_counter() - started)
            raise
        _Metrics.observe(operation, "OK", time.perf_counter() - started)
        return result

    def _post(self, path: str, body: bytes) -> tuple[int, bytes]:
        h = self._signer.sign(self._host, path, body)
        head = (
            f"Host: {h['Host']}\r\nX-Amz-Date: {h['X-Amz-Date']}\r\n"
            f"Authorization: {h['Authorization']}\r\nContent-Type: application/json\r\n"
        )
        return self._transport.post(path, head.encode("latin-1"), body)

    @staticmethod
    def _answer(
        operation: str, status: int, data: bytes, check: Callable[[dict[str, Any]], _T]
    ) -> _T:
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError):  # (a proxy's answer nested past the parser's stack)
            doc = None
        if status != 200:
            name = doc.get("errorName") if isinstance(doc, dict) else None
            if not isinstance(name, str) or name not in ERROR_STATUS:
                raise XksInvalidResponse(
                    f"{operation}: the XKS proxy answered HTTP {status} without a known errorName"
                )
            message = doc.get("errorMessage") if isinstance(doc, dict) else None
            raise XksProxyError(name, message if isinstance(message, str) else "", status)
        if not isinstance(doc, dict):
            raise XksInvalidResponse(f"{operation}: the XKS proxy's answer is not a JSON object")
        try:
            return check(doc)
        except SpecViolation as e:
            raise XksInvalidResponse(f"{operation}: {e}") from None

    @staticmethod
    def _check_health(doc: dict[str, Any]) -> dict[str, Any]:
        size = doc.get("xksProxyFleetSize")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise SpecViolation("xksProxyFleetSize", "must be an integer greater than zero")
        for name in ("xksProxyVendor", "xksProxyModel", "ekmVendor"):
            if not isinstance(doc.get(name), str):
                raise SpecViolation(name, "is required (a string)")
        fleet = doc.get("ekmFleetDetails")
        if not isinstance(fleet, list) or not 1 <= len(fleet) <= MAX_EKM_FLEET:
            raise SpecViolation("ekmFleetDetails", f"must list 1 to {MAX_EKM_FLEET} entries")
        for entry in fleet:
            if not isinstance(entry, dict):
                raise SpecViolation("ekmFleetDetails", "entries must be objects")
            for name in ("id", "model"):
                if not isinstance(entry.get(name), str):
                    raise SpecViolation(f"ekmFleetDetails.{name}", "is required (a string)")
            if entry.get("healthStatus") not in HEALTH_STATUSES:
                raise SpecViolation(
                    "ekmFleetDetails.healthStatus", "must be ACTIVE, DEGRADED or UNAVAILABLE"
                )
        return doc

    @staticmethod
    def _check_metadata(doc: dict[str, Any]) -> XksKeyMetadata:
        spec = doc.get("keySpec")
        usage = doc.get("keyUsage")
        status = doc.get("keyStatus")
        if not isinstance(spec, str):
            raise SpecViolation("keySpec", "is required (a string)")
        if (
            not isinstance(usage, list)
            or len(usage) > MAX_KEY_USAGES
            or not all(isinstance(u, str) for u in usage)
        ):
            raise SpecViolation("keyUsage", f"must be a list of at most {MAX_KEY_USAGES} strings")
        if status not in KEY_STATUSES:
            raise SpecViolation("keyStatus", "must be ENABLED or DISABLED")
        return XksKeyMetadata(spec, tuple(usage), str(status))

    @staticmethod
    def _check_encrypt(
        doc: dict[str, Any], plaintext_len: int, aad: bytes, integrity: bool
    ) -> XksCiphertext:
        ciphertext = b64decode(_member(doc, "ciphertext"), "ciphertext")
        iv = b64decode(_member(doc, "initializationVector"), "initializationVector")
        tag = b64decode(_member(doc, "authenticationTag"), "authenticationTag")
        meta_text = doc.get("ciphertextMetadata")
        meta = None if meta_text is None else b64decode(meta_text, "ciphertextMetadata")
        if len(ciphertext) != plaintext_len:
            raise SpecViolation("ciphertext", "is not as long as the plaintext")
        if len(iv) not in IV_LENGTHS:
            raise SpecViolation("initializationVector", "must be 12 or 16 bytes")
        if len(tag) != TAG_LENGTH:
            raise SpecViolation("authenticationTag", f"must be {TAG_LENGTH} bytes")
        if meta is not None and len(meta) > MAX_CIPHERTEXT_METADATA:
            raise SpecViolation(
                "ciphertextMetadata", f"must be at most {MAX_CIPHERTEXT_METADATA} bytes"
            )
        if integrity:
            got = b64decode(
                _member(doc, "ciphertextDataIntegrityValue"), "ciphertextDataIntegrityValue"
            )
            if not hmac.compare_digest(got, cdiv(aad, meta, iv, ciphertext, tag)):
                raise SpecViolation(
                    "ciphertextDataIntegrityValue", "does not match the ciphertext returned"
                )
        return XksCiphertext(ciphertext, iv, tag, meta)


def _member(doc: dict[str, Any], name: str) -> Any:
    value = doc.get(name)
    if value is None:
        raise SpecViolation(name, "is required")
    return value
