"""SigV4 authentication (`envelope.server.auth`) against a real store, with requests genuinely
signed by botocore's own signer (`SigV4Auth.add_auth`), as boto3 signs them.

Each attack of issue 11 is refused with the AWS error code and message, and changes nothing
(the service is never reached: `authenticate` only reads).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from envelope.server.auth import (
    EXPIRED_TOKEN,
    INVALID_TOKEN,
    MISMATCH,
    Authenticator,
    AuthError,
)
from envelope.service import FileRootKey, KeyService, Store

HOST = "kms.us-east-1.amazonaws.com"
REGION = "us-east-1"
NOW = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def kms(tmp_path: Path, clock: Clock) -> Iterator[KeyService]:
    home = tmp_path / "home"
    home.mkdir()
    store = Store.open(home / "kms.sqlite3", FileRootKey(home / "root.key"))
    svc = KeyService(store, clock=clock, owns_store=True)
    yield svc
    svc.close()


@pytest.fixture
def auth(kms: KeyService, clock: Clock) -> Authenticator:
    return Authenticator(kms, clock=clock)


@pytest.fixture
def alice(kms: KeyService) -> Credentials:
    arn = kms.create_user(user_name="alice")["User"]["Arn"]
    key = kms.create_access_key(user_arn=arn)["AccessKey"]
    return Credentials(key["AccessKeyId"], key["SecretAccessKey"])


@pytest.fixture
def session(kms: KeyService) -> Credentials:
    role = kms.create_role(role_name="reader")["Role"]["Arn"]
    c = kms.assume_role(role_arn=role, role_session_name="job-1", duration_seconds=900)
    cr = c["Credentials"]
    return Credentials(cr["AccessKeyId"], cr["SecretAccessKey"], cr["SessionToken"])


def signed(
    creds: Credentials,
    *,
    at: float = NOW,
    target: str = "TrentService.ListKeys",
    body: bytes = b"{}",
    region: str = REGION,
    service: str = "kms",
    signer: type[SigV4Auth] = SigV4Auth,
) -> dict[str, Any]:
    """A KMS request signed by botocore (or `signer`) at time `at`, as authenticate's keyword
    arguments."""
    req = AWSRequest(
        method="POST",
        url=f"https://{HOST}/",
        data=body,
        headers={"X-Amz-Target": target, "Content-Type": "application/x-amz-json-1.1"},
    )
    fixed = datetime.datetime(*time.gmtime(at)[:6])
    with mock.patch("botocore.auth.get_current_datetime", return_value=fixed):
        signer(creds, service, region).add_auth(req)
    return {
        "method": "POST",
        "host": HOST,
        "path": "/",
        "query": "",
        "headers": list(req.headers.items()),
        "body": body,
    }


def header(req: dict[str, Any], name: str, value: str | None) -> dict[str, Any]:
    """`req` with header `name` replaced (None: removed)."""
    headers = [(k, v) for k, v in req["headers"] if k.lower() != name.lower()]
    if value is not None:
        headers.append((name, value))
    return {**req, "headers": headers}


def refused(auth: Authenticator, req: dict[str, Any], code: str) -> AuthError:
    with pytest.raises(AuthError) as info:
        auth.authenticate(**req)
    assert info.value.code == code, info.value.message
    assert info.value.status == 400
    return info.value


def test_user_key_authenticates(auth: Authenticator, alice: Credentials) -> None:
    assert auth.authenticate(**signed(alice)) == "arn:aws:iam::000000000000:user/alice"
    got = auth.verify(**signed(alice))
    assert (got.access_key_id, got.region) == (alice.access_key, REGION)


def test_role_session_authenticates(auth: Authenticator, session: Credentials) -> None:
    assert session.access_key.startswith("ASIA")
    principal = auth.authenticate(**signed(session))
    assert principal == "arn:aws:sts::000000000000:assumed-role/reader/job-1"


def test_within_five_minutes_either_side_is_accepted(
    auth: Authenticator, alice: Credentials
) -> None:
    for skew in (-299, 299):
        assert auth.authenticate(**signed(alice, at=NOW + skew)).endswith("user/alice")


def test_wrong_secret(auth: Authenticator, alice: Credentials) -> None:
    last = "A" if alice.secret_key[-1] != "A" else "B"
    forged = Credentials(alice.access_key, alice.secret_key[:-1] + last)
    err = refused(auth, signed(forged), "InvalidSignatureException")
    assert err.message == MISMATCH
    assert err.access_key_id == alice.access_key


def test_tampered_body(auth: Authenticator, alice: Credentials) -> None:
    req = signed(alice, target="TrentService.Encrypt", body=b'{"KeyId":"alias/a"}')
    refused(auth, {**req, "body": b'{"KeyId":"alias/b"}'}, "InvalidSignatureException")


def test_tampered_signed_header(auth: Authenticator, alice: Credentials) -> None:
    req = signed(alice)
    refused(auth, header(req, "Content-Type", "application/json"), "InvalidSignatureException")


def test_replayed_with_another_target(auth: Authenticator, alice: Credentials) -> None:
    req = signed(alice, target="TrentService.DescribeKey", body=b'{"KeyId":"k"}')
    replay = header(req, "X-Amz-Target", "TrentService.ScheduleKeyDeletion")
    refused(auth, replay, "InvalidSignatureException")


def test_unsigned_target_is_refused(auth: Authenticator, alice: Credentials) -> None:
    """A target the signature does not cover could be swapped at will."""
    req = signed(alice)
    (value,) = [v for k, v in req["headers"] if k == "Authorization"]
    stripped = value.replace("x-amz-target;", "").replace(";x-amz-target", "")
    err = refused(auth, header(req, "Authorization", stripped), "InvalidSignatureException")
    assert "X-Amz-Target" in err.message


def test_an_unsigned_date_header_is_refused(auth: Authenticator, alice: Credentials) -> None:
    """ "If you include a date or x-amz-date header, you must also include that header in the
    list of signed headers" (IAM User Guide): one left out was accepted (review)."""

    class UndatedSigner(SigV4Auth):  # type: ignore[misc]
        def headers_to_sign(self, request: AWSRequest) -> Any:
            headers = super().headers_to_sign(request)
            del headers["x-amz-date"]
            return headers

    req = signed(alice, signer=UndatedSigner)  # a valid signature over the other headers
    headers = dict(req["headers"])
    assert "X-Amz-Date" in headers and "x-amz-date" not in headers["Authorization"]
    err = refused(auth, req, "InvalidSignatureException")
    assert "X-Amz-Date" in err.message


def test_signed_20_minutes_ago(auth: Authenticator, alice: Credentials, clock: Clock) -> None:
    req = signed(alice, at=NOW - 1200)
    err = refused(auth, req, "InvalidSignatureException")
    # AWS's wording: "Signature expired: <signed> is now earlier than <now - 5 min>
    # (<now> - 5 min.)"
    assert err.message == (
        "Signature expired: 20270115T074000Z is now earlier than 20270115T075500Z "
        "(20270115T080000Z - 5 min.)"
    )


def test_signed_in_the_future(auth: Authenticator, alice: Credentials) -> None:
    err = refused(auth, signed(alice, at=NOW + 600), "InvalidSignatureException")
    assert err.message.startswith("Signature not yet current: 20270115T081000Z is still later")


def test_missing_authorization(auth: Authenticator, alice: Credentials) -> None:
    err = refused(
        auth, header(signed(alice), "Authorization", None), "MissingAuthenticationTokenException"
    )
    assert err.message == "Missing Authentication Token"
    assert err.access_key_id is None


@pytest.mark.parametrize(
    "value",
    [
        "AWS4-HMAC-SHA256 Credential=AKIAX/20270115/us-east-1/kms/aws4_request",
        "AWS AKIAIOSFODNN7EXAMPLE:frJIUN8DYpKDtOLCwo//yllqDzg=",
        "AWS4-HMAC-SHA256 Credential=AKIAX, SignedHeaders=host, Signature=00",
        "AWS4-HMAC-SHA256 garbage",
    ],
)
def test_malformed_authorization(auth: Authenticator, alice: Credentials, value: str) -> None:
    refused(auth, header(signed(alice), "Authorization", value), "IncompleteSignatureException")


def test_missing_date(auth: Authenticator, alice: Credentials) -> None:
    refused(auth, header(signed(alice), "X-Amz-Date", None), "IncompleteSignatureException")


def test_unknown_access_key(auth: Authenticator, alice: Credentials) -> None:
    ghost = Credentials("AKIAZZZZZZZZZZZZZZZZ", alice.secret_key)
    err = refused(auth, signed(ghost), "UnrecognizedClientException")
    assert err.message == INVALID_TOKEN
    assert err.access_key_id == "AKIAZZZZZZZZZZZZZZZZ"


def test_inactive_then_reactivated_key(
    auth: Authenticator, alice: Credentials, kms: KeyService
) -> None:
    assert auth.authenticate(**signed(alice))  # cached now: deactivation must still take effect
    kms.update_access_key(access_key_id=alice.access_key, status="Inactive")
    refused(auth, signed(alice), "UnrecognizedClientException")
    kms.update_access_key(access_key_id=alice.access_key, status="Active")
    assert auth.authenticate(**signed(alice)).endswith("user/alice")


def test_deleted_key_and_deleted_user(
    auth: Authenticator, alice: Credentials, kms: KeyService
) -> None:
    user = "arn:aws:iam::000000000000:user/alice"
    assert auth.authenticate(**signed(alice)) == user
    kms.delete_principal(arn=user)
    refused(auth, signed(alice), "UnrecognizedClientException")
    kms.create_user(user_name="alice")  # the same name again is someone else
    refused(auth, signed(alice), "UnrecognizedClientException")


def test_expired_session_token(auth: Authenticator, session: Credentials, clock: Clock) -> None:
    clock.now = NOW + 901
    err = refused(auth, signed(session, at=clock.now), "ExpiredTokenException")
    assert err.message == EXPIRED_TOKEN


def test_session_token_missing_or_wrong(auth: Authenticator, session: Credentials) -> None:
    no_token = Credentials(session.access_key, session.secret_key)
    assert refused(auth, signed(no_token), "UnrecognizedClientException").message == INVALID_TOKEN
    other = Credentials(session.access_key, session.secret_key, session.token[:-4] + "AAAA")
    refused(auth, signed(other), "UnrecognizedClientException")


def test_user_key_with_a_session_token(auth: Authenticator, alice: Credentials) -> None:
    with_token = Credentials(alice.access_key, alice.secret_key, "bogus-token")
    refused(auth, signed(with_token), "UnrecognizedClientException")


def test_scope_must_be_kms_and_the_servers_region(auth: Authenticator, alice: Credentials) -> None:
    err = refused(auth, signed(alice, service="s3"), "InvalidSignatureException")
    assert "'kms'" in err.message
    err = refused(auth, signed(alice, region="eu-west-1"), "InvalidSignatureException")
    assert "region" in err.message
    other = Authenticator(auth.service, clock=auth._clock, regions=["us-east-1", "eu-west-1"])
    assert other.verify(**signed(alice, region="eu-west-1")).region == "eu-west-1"


def test_content_sha256_must_be_the_bodys(auth: Authenticator, alice: Credentials) -> None:
    """botocore uses a signed X-Amz-Content-SHA256 as the payload hash: it must be the real
    one, or a body could be swapped under a signature over a claimed hash."""
    body = b'{"KeyId":"a"}'
    req = AWSRequest(
        method="POST",
        url=f"https://{HOST}/",
        data=b'{"KeyId":"b"}',
        headers={
            "X-Amz-Target": "TrentService.DescribeKey",
            "X-Amz-Content-SHA256": hashlib.sha256(body).hexdigest(),
        },
    )
    fixed = datetime.datetime(*time.gmtime(NOW)[:6])
    with mock.patch("botocore.auth.get_current_datetime", return_value=fixed):
        SigV4Auth(alice, "kms", REGION).add_auth(req)
    kwargs = {
        "method": "POST",
        "host": HOST,
        "path": "/",
        "query": "",
        "headers": list(req.headers.items()),
    }
    assert auth.authenticate(**kwargs, body=body)
    refused(auth, {**kwargs, "body": b'{"KeyId":"b"}'}, "InvalidSignatureException")


def test_nothing_secret_in_errors_or_reprs(
    auth: Authenticator, alice: Credentials, session: Credentials, kms: KeyService
) -> None:
    errors = [
        refused(auth, signed(Credentials(alice.access_key, "x" * 40)), "InvalidSignatureException"),
        refused(auth, signed(session, at=NOW - 1200), "InvalidSignatureException"),
    ]
    resolved = kms.resolve_credentials(alice.access_key, NOW)
    assert resolved is not None
    shown = " ".join([*(repr(e) + str(e) for e in errors), repr(auth), repr(resolved)])
    for secret in (alice.secret_key, session.secret_key, session.token):
        assert secret not in shown


def test_authenticate_reads_only(auth: Authenticator, alice: Credentials, kms: KeyService) -> None:
    """Authentication writes nothing (refusals are audited by the server, see
    `record_unauthenticated`), so a flood of forged requests cannot change the store."""
    seq = len(kms.audit_tail(1000))
    auth.authenticate(**signed(alice))
    with pytest.raises(AuthError):
        auth.authenticate(**signed(Credentials("AKIAZZZZZZZZZZZZZZZZ", "x")))
    assert len(kms.audit_tail(1000)) == seq


def test_refusal_audit_record(kms: KeyService) -> None:
    """What the server records for a refused request: one denial, principal anonymous, the
    claimed key id, the error code and source address; and the log still verifies."""
    from envelope.service import RequestContext

    kms.record_unauthenticated(
        operation="ListKeys",
        context=RequestContext(source_ip="203.0.113.7", user_agent="boto3"),
        error_code="InvalidSignatureException",
        reason="Signature expired",
        access_key_id="AKIAZZZZZZZZZZZZZZZZ",
    )
    rec = kms.audit_tail(1)[0]
    assert rec["principal"] == "anonymous"
    assert rec["decision"] == "denied"
    assert rec["error_code"] == "InvalidSignatureException"
    assert rec["source_ip"] == "203.0.113.7"
    assert rec["operation"] == "ListKeys"
    assert rec["params"] == {"AccessKeyId": "AKIAZZZZZZZZZZZZZZZZ"}
    assert kms.verify_audit_log().ok


def test_the_same_json_spelled_differently_is_refused(
    auth: Authenticator, alice: Credentials
) -> None:
    """The signature covers the raw bytes: the same JSON spelled differently is refused."""
    req = signed(alice, target="TrentService.DescribeKey", body=b'{"KeyId": "k"}')
    assert auth.authenticate(**req)
    compact = json.dumps({"KeyId": "k"}, separators=(",", ":")).encode()
    refused(auth, {**req, "body": compact}, "InvalidSignatureException")


# -- found by an adversarial review of authentication ----------------------------------------


@pytest.mark.parametrize("slash", [False, True])
def test_a_secret_sent_as_the_key_id_is_never_kept_for_the_audit(
    auth: Authenticator, alice: Credentials, slash: bool
) -> None:
    """A client with its key id and secret swapped sends its secret where the key id goes:
    it reached the audit record, as the claimed AccessKeyId or, with a '/' in it, inside the
    echoed Credential of the message. The client is still told what it sent (as AWS does)."""
    # (a real secret is base64: about half of them hold a '/')
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY" if slash else "K+IOb6cT6top2CApWi+2SdmfJrL1"
    err = refused(
        auth,
        signed(Credentials(secret, alice.access_key)),
        "IncompleteSignatureException" if slash else "UnrecognizedClientException",
    )
    assert err.access_key_id is None
    assert secret not in err.audit_message
    assert (secret in err.message) == slash  # AWS's echo, to the sender only


def test_a_foreign_token_in_authorization_is_not_kept_for_the_audit(
    auth: Authenticator, alice: Credentials
) -> None:
    token = "sk_live_51HxVERYSECRETTOKENVALUE0123456789"
    for value in (token, f"Bearer\t{token}", f"AWS4-HMAC-SHA256 {token}"):
        err = refused(
            auth, header(signed(alice), "Authorization", value), "IncompleteSignatureException"
        )
        assert token not in err.audit_message and err.access_key_id is None


@pytest.mark.parametrize("extra", ["\xa0", "\x85"])
def test_non_ascii_spaces_cannot_be_added_to_a_signed_header(
    auth: Authenticator, alice: Credentials, extra: str
) -> None:
    """SigV4 collapses spaces only; botocore's signer's str.split() also took U+00A0 and U+0085
    (bytes 0xA0 and 0x85 read as Latin-1) for spaces, so a verifier built on it accepted them
    added to any signed header value after signing."""
    req = signed(alice)
    refused(
        auth,
        header(req, "X-Amz-Target", "TrentService.ListKeys" + extra),
        "InvalidSignatureException",
    )
    (date,) = [v for k, v in req["headers"] if k == "X-Amz-Date"]
    refused(auth, header(req, "X-Amz-Date", extra + date), "InvalidSignatureException")


def test_a_request_signed_with_a_date_header(auth: Authenticator, alice: Credentials) -> None:
    """SigV4 takes the signing time from Date when there is no X-Amz-Date (the error for neither
    said so, and a Date header was refused)."""

    class DateSigner(SigV4Auth):  # type: ignore[misc]
        def _set_necessary_date_headers(self, request: AWSRequest) -> None:
            request.headers["Date"] = request.context["timestamp"]

    req = signed(alice, signer=DateSigner)
    headers = dict(req["headers"])
    assert "X-Amz-Date" not in headers and "date;" in headers["Authorization"]
    assert auth.authenticate(**req).endswith("user/alice")


def test_the_server_answers_for_aws_regions_only(kms: KeyService, alice: Credentials) -> None:
    """`envelope serve` took any well-formed Region name: a signed-in caller with no
    permissions grew a worker by about 4 kB for each Region it made up (a service kept per
    Region), and CreateKey in "zz-madeup-7" succeeded. AWS has no endpoint for such a name."""
    from envelope.server.run import authenticator_for

    verify = authenticator_for(kms)
    now = time.time()
    assert verify(**signed(alice, at=now, region="eu-west-1")).region == "eu-west-1"
    with pytest.raises(AuthError) as info:
        verify(**signed(alice, at=now, region="zz-madeup-7"))
    assert info.value.code == "InvalidSignatureException" and "valid region" in info.value.message
    # a Region the store already holds keys in (an earlier release let a replica go anywhere)
    # is still served, read from the store when the server starts
    kms.for_region("eu-mars-1").create_key()
    verify = authenticator_for(kms)
    assert verify(**signed(alice, at=now, region="eu-mars-1")).region == "eu-mars-1"


def test_replicas_go_only_to_aws_regions(kms: KeyService) -> None:
    """A replica in a Region AWS does not have could never be reached over the wire."""
    from envelope.service.errors import ValidationException

    kid = kms.create_key(multi_region=True)["KeyMetadata"]["KeyId"]
    with pytest.raises(ValidationException, match="not an AWS Region"):
        kms.replicate_key(key_id=kid, replica_region="eu-mars-1")
    assert kms.replicate_key(key_id=kid, replica_region="eu-west-1")["ReplicaKeyMetadata"]


@pytest.mark.parametrize("region", ["cn-north-1", "us-gov-west-1"])
def test_another_partition_is_neither_served_nor_a_replica_region(
    kms: KeyService, alice: Credentials, region: str
) -> None:
    """This KMS's ARNs are ``arn:aws:``: a key made in cn-north-1 got ``arn:aws:kms:cn-north-1``,
    an ARN that partition (``aws-cn``) cannot have, and its real ARN reached nothing; and
    ReplicateKey put a replica there although AWS requires "the same ... partition" (review)."""
    from envelope.server.run import authenticator_for
    from envelope.service.errors import ValidationException

    with pytest.raises(AuthError) as info:
        authenticator_for(kms)(**signed(alice, at=time.time(), region=region))
    assert info.value.code == "InvalidSignatureException"
    kid = kms.create_key(multi_region=True)["KeyMetadata"]["KeyId"]
    with pytest.raises(ValidationException, match="same partition"):
        kms.replicate_key(key_id=kid, replica_region=region)


def test_the_server_looks_up_a_request_s_access_key_once(
    kms: KeyService, alice: Credentials, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The header check before the body and the signature check after it each looked the
    access key up (a store read per request, twice). The second now takes the first's result."""
    import asyncio

    from envelope.server.app import KmsApp
    from envelope.server.run import _authenticator

    from .asgi import answer, signed_request

    kms.put_principal_policy(
        arn="arn:aws:iam::000000000000:user/alice",
        policy_name="all",
        policy_document=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*"}],
            }
        ),
    )
    authenticator = _authenticator(kms)
    app = KmsApp(
        kms, authenticator.verify, close_service=False, check_headers=authenticator.check_headers
    )
    lookups = []
    real = kms.resolve_credentials

    def counted(key_id: str, now: float) -> Any:
        lookups.append(key_id)
        return real(key_id, now)

    monkeypatch.setattr(kms, "resolve_credentials", counted)
    access = {"AccessKeyId": alice.access_key, "SecretAccessKey": alice.secret_key}
    status, doc = asyncio.run(answer(app, signed_request(access, "ListKeys", {})))
    assert status == 200, doc
    assert lookups == [alice.access_key]


def test_a_tampered_access_key_row_is_the_operators_alarm_not_the_callers_answer(
    kms: KeyService, alice: Credentials, caplog: pytest.LogCaptureFixture
) -> None:
    """A store error met while looking up the caller's key carries a code, so it went out to
    an unauthenticated caller verbatim (naming the row and the root key) and reached no log:
    the operator never saw the tampering (review). Now: KMSInternalException, and logged."""
    import asyncio
    import sqlite3

    from envelope.server.app import INTERNAL_MESSAGE, KmsApp
    from envelope.server.run import _authenticator

    from .asgi import answer, signed_request

    authenticator = _authenticator(kms)
    app = KmsApp(
        kms, authenticator.verify, close_service=False, check_headers=authenticator.check_headers
    )
    db = sqlite3.connect(kms.store.path, isolation_level=None)
    try:
        db.execute(
            "UPDATE access_keys SET body = replace(body, 'Active', 'Inactive') "
            "WHERE access_key_id = ?",
            (alice.access_key,),
        )
    finally:
        db.close()
    access = {"AccessKeyId": alice.access_key, "SecretAccessKey": alice.secret_key}
    with caplog.at_level("ERROR", logger="envelope.server"):
        status, doc = asyncio.run(answer(app, signed_request(access, "ListKeys", {})))
    assert status == 500 and doc == {"__type": "KMSInternalException", "message": INTERNAL_MESSAGE}
    assert alice.access_key in caplog.text and "root key" in caplog.text


def test_the_latency_histogram_does_not_count_the_clients_upload(
    kms: KeyService, alice: Credentials
) -> None:
    """envelope_server_request_seconds ("from the request's body to its response") started
    before the body was read: a body trickled over seconds made a 1 ms call look that slow,
    and any signed-in client could push any operation's p99 toward the body timeout (review)."""
    import asyncio

    from envelope.server.app import KmsApp
    from envelope.server.run import _authenticator

    from .asgi import signed_request

    authenticator = _authenticator(kms)
    app = KmsApp(
        kms, authenticator.verify, close_service=False, check_headers=authenticator.check_headers
    )
    access = {"AccessKeyId": alice.access_key, "SecretAccessKey": alice.secret_key}
    scope, data = signed_request(access, "ListAliases", {})
    chunks = [data[:1], data[1:]]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(0.3)  # a slow client
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] in (200, 400)
    total = app.metrics.registry.get_sample_value(
        "envelope_server_request_seconds_sum", {"operation": "ListAliases"}
    )
    assert total is not None and total < 0.3, total
