"""boto3 against `envelope serve` over loopback: the KMS API, its errors and pagination."""

from __future__ import annotations

import hashlib
import json
import re
import time
from functools import partial
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
import pytest

from envelope.service import KeyService

from .conftest import Server


def _code(exc: pytest.ExceptionInfo[botocore.exceptions.ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


@pytest.fixture(scope="module")
def admin(server: Server) -> Any:
    return server.client("admin")


@pytest.fixture(scope="module")
def key_id(admin: Any) -> str:
    return str(admin.create_key(Description="wire tests")["KeyMetadata"]["KeyId"])


def test_create_and_describe_key(server: Server, admin: Any) -> None:
    meta = admin.create_key(Description="d1", Tags=[{"TagKey": "team", "TagValue": "etl"}])[
        "KeyMetadata"
    ]
    assert meta["KeyState"] == "Enabled" and meta["Description"] == "d1"
    assert meta["Arn"] == f"arn:aws:kms:us-east-1:000000000000:key/{meta['KeyId']}"
    described = admin.describe_key(KeyId=meta["Arn"])["KeyMetadata"]
    # timestamps travel as epoch numbers and come back as the same instant
    assert described["CreationDate"] == meta["CreationDate"]
    assert described["KeyId"] == meta["KeyId"]
    tags = admin.list_resource_tags(KeyId=meta["KeyId"])["Tags"]
    assert tags == [{"TagKey": "team", "TagValue": "etl"}]


def test_encrypt_decrypt_round_trip_and_wrong_context(admin: Any, key_id: str) -> None:
    plaintext = bytes(range(256)) * 4
    enc = admin.encrypt(KeyId=key_id, Plaintext=plaintext, EncryptionContext={"path": "a/b"})
    assert plaintext not in enc["CiphertextBlob"]
    dec = admin.decrypt(CiphertextBlob=enc["CiphertextBlob"], EncryptionContext={"path": "a/b"})
    assert dec["Plaintext"] == plaintext
    assert dec["KeyId"].endswith(key_id)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        admin.decrypt(CiphertextBlob=enc["CiphertextBlob"], EncryptionContext={"path": "x"})
    assert _code(e) == "InvalidCiphertextException"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert e.value.response["Error"]["Message"] == ""  # AWS says nothing about why
    with pytest.raises(botocore.exceptions.ClientError) as e:  # garbage, not a key's name
        admin.decrypt(CiphertextBlob=b"\x01" * 60)
    assert _code(e) == "InvalidCiphertextException"


def test_generate_data_key_and_without_plaintext(admin: Any, key_id: str) -> None:
    dk = admin.generate_data_key(KeyId=key_id, KeySpec="AES_256", EncryptionContext={"o": "1"})
    assert len(dk["Plaintext"]) == 32
    back = admin.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext={"o": "1"})
    assert back["Plaintext"] == dk["Plaintext"]
    n = admin.generate_data_key(KeyId=key_id, NumberOfBytes=7)
    assert len(n["Plaintext"]) == 7
    wp = admin.generate_data_key_without_plaintext(KeyId=key_id, KeySpec="AES_128")
    assert "Plaintext" not in wp
    assert len(admin.decrypt(CiphertextBlob=wp["CiphertextBlob"])["Plaintext"]) == 16
    rnd = admin.generate_random(NumberOfBytes=64)["Plaintext"]
    assert len(rnd) == 64 and rnd != admin.generate_random(NumberOfBytes=64)["Plaintext"]


def test_list_keys_pagination(admin: Any) -> None:
    made = {admin.create_key()["KeyMetadata"]["KeyId"] for _ in range(5)}
    page = admin.list_keys(Limit=2)
    assert len(page["Keys"]) == 2 and page["Truncated"] is True and page["NextMarker"]
    seen: list[str] = []
    for p in admin.get_paginator("list_keys").paginate(PaginationConfig={"PageSize": 2}):
        seen += [k["KeyId"] for k in p["Keys"]]
    assert made <= set(seen)
    assert len(seen) == len(set(seen))
    with pytest.raises(botocore.exceptions.ClientError) as e:
        admin.list_keys(Marker="not-a-marker-we-issued")
    assert _code(e) == "InvalidMarkerException"
    # ResourceOwners: SELF is the default; nothing is shared through RAM here
    own = admin.list_keys(ResourceOwners=["SELF"], Limit=1000)["Keys"]
    assert made <= {k["KeyId"] for k in own}
    both = admin.list_keys(ResourceOwners=["OTHER_ACCOUNTS_VIA_RAM", "SELF"], Limit=1000)
    assert both["Keys"] == own
    shared = admin.list_keys(ResourceOwners=["OTHER_ACCOUNTS_VIA_RAM"])
    assert shared["Keys"] == [] and shared["Truncated"] is False
    with pytest.raises(botocore.exceptions.ClientError) as e:
        admin.list_keys(ResourceOwners=["SELF", "SELF"])
    assert _code(e) == "ValidationException"


def test_aliases(admin: Any, key_id: str) -> None:
    admin.create_alias(AliasName="alias/wire-test", TargetKeyId=key_id)
    assert admin.describe_key(KeyId="alias/wire-test")["KeyMetadata"]["KeyId"] == key_id
    names = [a["AliasName"] for a in admin.list_aliases(KeyId=key_id)["Aliases"]]
    assert names == ["alias/wire-test"]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        admin.create_alias(AliasName="alias/wire-test", TargetKeyId=key_id)
    assert _code(e) == "AlreadyExistsException"
    other = admin.create_key()["KeyMetadata"]["KeyId"]
    admin.update_alias(AliasName="alias/wire-test", TargetKeyId=other)
    assert admin.describe_key(KeyId="alias/wire-test")["KeyMetadata"]["KeyId"] == other
    admin.delete_alias(AliasName="alias/wire-test")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        admin.describe_key(KeyId="alias/wire-test")
    assert _code(e) == "NotFoundException"


def test_denied_call_is_access_denied_over_the_wire(server: Server, key_id: str) -> None:
    alice = server.client("alice")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        alice.encrypt(KeyId=key_id, Plaintext=b"x")
    assert _code(e) == "AccessDeniedException"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    msg = e.value.response["Error"]["Message"]
    assert msg.startswith(f"User: {server.arns['alice']} is not authorized to perform: kms:Encrypt")


def test_key_policy_gives_access(server: Server, admin: Any) -> None:
    kid = admin.create_key()["KeyMetadata"]["KeyId"]
    alice = server.client("alice")
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "root",
                "Effect": "Allow",
                "Principal": {"AWS": "arn:aws:iam::000000000000:root"},
                "Action": "kms:*",
                "Resource": "*",
            },
            {
                "Sid": "alice-encrypts",
                "Effect": "Allow",
                "Principal": {"AWS": server.arns["alice"]},
                "Action": "kms:Encrypt",
                "Resource": "*",
            },
        ],
    }
    text = json.dumps(policy)
    admin.put_key_policy(KeyId=kid, PolicyName="default", Policy=text)
    assert admin.get_key_policy(KeyId=kid, PolicyName="default")["Policy"] == text
    assert admin.list_key_policies(KeyId=kid)["PolicyNames"] == ["default"]
    blob = alice.encrypt(KeyId=kid, Plaintext=b"for alice")["CiphertextBlob"]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        alice.decrypt(CiphertextBlob=blob)
    assert _code(e) == "AccessDeniedException"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        admin.put_key_policy(KeyId=kid, PolicyName="default", Policy="{not json")
    assert _code(e) == "MalformedPolicyDocumentException"


def test_grants(server: Server, admin: Any) -> None:
    kid = admin.create_key()["KeyMetadata"]["KeyId"]
    alice = server.client("alice")
    blob = admin.encrypt(KeyId=kid, Plaintext=b"granted", EncryptionContext={"t": "1"})[
        "CiphertextBlob"
    ]
    grant = admin.create_grant(
        KeyId=kid,
        GranteePrincipal=server.arns["alice"],
        Operations=["Decrypt"],
        Constraints={"EncryptionContextEquals": {"t": "1"}},
    )
    assert grant["GrantId"] and grant["GrantToken"]
    out = alice.decrypt(
        CiphertextBlob=blob, EncryptionContext={"t": "1"}, GrantTokens=[grant["GrantToken"]]
    )
    assert out["Plaintext"] == b"granted"
    listed = admin.list_grants(KeyId=kid)["Grants"]
    assert [g["GrantId"] for g in listed] == [grant["GrantId"]]
    assert listed[0]["Constraints"] == {"EncryptionContextEquals": {"t": "1"}}
    admin.revoke_grant(KeyId=kid, GrantId=grant["GrantId"])
    with pytest.raises(botocore.exceptions.ClientError) as e:
        alice.decrypt(CiphertextBlob=blob, EncryptionContext={"t": "1"})
    assert _code(e) == "AccessDeniedException"


def test_key_lifecycle(admin: Any) -> None:
    kid = admin.create_key()["KeyMetadata"]["KeyId"]
    admin.disable_key(KeyId=kid)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        admin.encrypt(KeyId=kid, Plaintext=b"x")
    assert _code(e) == "DisabledException"
    admin.enable_key(KeyId=kid)
    admin.enable_key_rotation(KeyId=kid)
    assert admin.get_key_rotation_status(KeyId=kid)["KeyRotationEnabled"] is True
    out = admin.schedule_key_deletion(KeyId=kid, PendingWindowInDays=7)
    assert out["KeyState"] == "PendingDeletion"
    assert admin.describe_key(KeyId=kid)["KeyMetadata"]["DeletionDate"] == out["DeletionDate"]
    admin.cancel_key_deletion(KeyId=kid)
    assert admin.describe_key(KeyId=kid)["KeyMetadata"]["KeyState"] == "Disabled"


def test_validation_errors_have_aws_shape(server: Server) -> None:
    raw = server.client("admin", validate=False)  # past botocore's own client-side checks
    with pytest.raises(botocore.exceptions.ClientError) as e:
        raw.describe_key(KeyId="k" * 2049)
    assert _code(e) == "ValidationException"
    assert e.value.response["Error"]["Message"] == (
        f"1 validation error detected: Value '{'k' * 2049}' at 'keyId' failed to satisfy "
        "constraint: Member must have length less than or equal to 2048"
    )
    with pytest.raises(botocore.exceptions.ClientError) as e:
        raw.generate_data_key(KeyId="x", NumberOfBytes=2000, KeySpec="AES_512")
    assert e.value.response["Error"]["Message"] == (
        "2 validation errors detected: Value '2000' at 'numberOfBytes' failed to satisfy "
        "constraint: Member must have value less than or equal to 1024; Value 'AES_512' at "
        "'keySpec' failed to satisfy constraint: Member must satisfy enum value set: "
        "[AES_256, AES_128]"
    )
    # a sensitive member's value is never echoed
    with pytest.raises(botocore.exceptions.ClientError) as e:
        raw.encrypt(KeyId="x", Plaintext=b"s" * 4097)
    assert e.value.response["Error"]["Message"] == (
        "1 validation error detected: Value at 'plaintext' failed to satisfy constraint: "
        "Member must have length less than or equal to 4096"
    )
    status, _, body = server.raw("TrentService.DescribeKey", b"{}")
    assert status == 400
    assert json.loads(body) == {
        "__type": "ValidationException",
        "message": "1 validation error detected: Value null at 'keyId' failed to satisfy "
        "constraint: Member must not be null",
    }


def test_unknown_and_unsupported_operations(server: Server, admin: Any) -> None:
    status, headers, body = server.raw("TrentService.MakeCoffee", b"{}")
    assert status == 400 and json.loads(body)["__type"] == "UnknownOperationException"
    assert re.fullmatch(r"[0-9a-f-]{36}", headers["x-amzn-requestid"])
    status, _, body = server.raw(None, b"{}")
    assert status == 400 and json.loads(body)["__type"] == "UnknownOperationException"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        admin.get_key_last_usage(KeyId="alias/anything")  # AWS: no alias names here
    assert _code(e) == "InvalidArnException"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        admin.create_key(CustomKeyStoreId="cks-1234567890abcdef0")
    assert _code(e) == "CustomKeyStoreNotFoundException"


def test_dry_run_never_does_the_operation(admin: Any, key_id: str) -> None:
    before = len(admin.list_grants(KeyId=key_id)["Grants"])
    with pytest.raises(botocore.exceptions.ClientError) as e:
        admin.create_grant(
            KeyId=key_id,
            GranteePrincipal="arn:aws:iam::000000000000:user/alice",
            Operations=["Decrypt"],
            DryRun=True,
        )
    served = "dry_run" in KeyService.create_grant.__code__.co_varnames
    assert _code(e) == ("DryRunOperationException" if served else "UnsupportedOperationException")
    assert len(admin.list_grants(KeyId=key_id)["Grants"]) == before


def test_a_permission_test_ignores_the_ciphertext(server: Server, admin: Any, key_id: str) -> None:
    """Decrypt and ReEncrypt with DryRun and DryRunModifiers=[IGNORE_CIPHERTEXT]: "KMS performs
    only authorization validation without ciphertext validation" (the API reference). They
    were refused ("DryRunModifiers needs DryRun", even with DryRun; review)."""
    alice = server.client("alice")  # no policy: not allowed
    for client, expected in ((admin, "DryRunOperationException"), (alice, "AccessDeniedException")):
        for call in (
            partial(client.decrypt, KeyId=key_id),
            partial(client.decrypt, KeyId=key_id, CiphertextBlob=b"\x00" * 100),
            partial(client.re_encrypt, SourceKeyId=key_id, DestinationKeyId=key_id),
        ):
            with pytest.raises(botocore.exceptions.ClientError) as e:
                call(DryRun=True, DryRunModifiers=["IGNORE_CIPHERTEXT"])
            assert _code(e) == expected, (call, e.value)
    with pytest.raises(botocore.exceptions.ClientError) as e:  # the key must be named
        admin.decrypt(DryRun=True, DryRunModifiers=["IGNORE_CIPHERTEXT"])
    assert _code(e) == "ValidationException"
    with pytest.raises(botocore.exceptions.ClientError) as e:  # without it, the ciphertext counts
        admin.decrypt(KeyId=key_id, CiphertextBlob=b"\x00" * 100, DryRun=True)
    assert _code(e) == "InvalidCiphertextException"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        server.client("admin", validate=False).decrypt(
            KeyId=key_id, DryRun=True, DryRunModifiers=["NOPE"]
        )
    assert _code(e) == "ValidationException"


def test_malformed_bodies(server: Server) -> None:
    status, _, body = server.raw("TrentService.ListKeys", b"{nope")
    assert status == 400 and json.loads(body)["__type"] == "SerializationException"
    status, _, body = server.raw("TrentService.ListKeys", b'{"Limit": "ten"}')
    assert status == 400 and json.loads(body) == {
        "__type": "SerializationException",
        "message": "STRING_VALUE can not be converted to a Integer",
    }
    status, _, body = server.raw("TrentService.Encrypt", b'{"KeyId": "k", "Plaintext": "@@"}')
    assert status == 400 and json.loads(body)["__type"] == "SerializationException"
    for constant in (b"NaN", b"Infinity", b"-Infinity"):  # not JSON, though Python reads them
        status, _, body = server.raw("TrentService.ListKeys", b'{"Foo": ' + constant + b"}")
        assert status == 400 and json.loads(body)["__type"] == "SerializationException"


def test_request_body_limit(server: Server) -> None:
    big = b'{"KeyId": "' + b"k" * (2 << 20) + b'"}'
    status, headers, body = server.raw("TrentService.DescribeKey", big)
    assert status == 413
    assert json.loads(body)["__type"] == "RequestEntityTooLargeException"
    assert "x-amzn-requestid" in headers


def _signed_raw(server: Server, target: str, body: bytes, extra: str = "") -> bytes:
    """One signed request as bytes on the wire (for pipelining on a raw socket)."""
    lines = [b"POST / HTTP/1.1", f"Host: 127.0.0.1:{server.port}".encode()]
    signed = server.signed_headers(target, body).items()
    lines += [f"{k}: {v}".encode() for k, v in signed if k.lower() != "host"]
    lines.append(f"Content-Length: {len(body)}".encode())
    lines += [extra.encode()] if extra else []
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _answers(sock: Any, want: int) -> tuple[list[tuple[int, bytes]], bool]:
    """Up to `want` responses read from `sock` ((status, lower-cased head) each), and whether
    the server closed the connection after them."""

    data, answers, closed = b"", [], False
    sock.settimeout(10)
    while len(answers) < want:
        while b"\r\n\r\n" not in data:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                chunk = b""
            if not chunk:
                return answers, True
            data += chunk
        head, data = data.split(b"\r\n\r\n", 1)
        length = int(re.search(rb"content-length: (\d+)", head.lower()).group(1))  # type: ignore[union-attr]
        while len(data) < length:
            chunk = sock.recv(65536)
            if not chunk:
                return answers, True
            data += chunk
        answers.append((int(head.split()[1]), head.lower()))
        data = data[length:]
    try:
        sock.settimeout(0.5)
        closed = sock.recv(1) == b""
    except TimeoutError:  # (open and quiet)
        closed = False
    except OSError:
        closed = True
    return answers, closed


def test_a_refused_body_is_never_read_as_the_next_request(server: Server) -> None:
    """A body refused for its size is dropped as it arrives and the next request on the
    connection is served (its bytes were taken for the next request's headers: a pipelined
    call after a 413 got an unsolicited 431 and a reset instead of its answer; review)."""
    import socket

    big = b'{"Description": "' + b"a" * (1100 << 10) + b'"}'
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(
            _signed_raw(server, "TrentService.CreateKey", big)
            + _signed_raw(server, "TrentService.ListKeys", b"{}")
        )
        answers, closed = _answers(sock, 2)
    assert [status for status, _ in answers] == [413, 200] and not closed


def test_after_a_dropped_body_the_next_request_has_the_header_limits(server: Server) -> None:
    """The parser does not say that an answered request's body ended: its drop went on into
    the next request, whose headers were then counted against the body's 16 MiB instead of
    their own 64 KiB, and whose header deadline was not reset (review)."""
    import socket

    big = b'{"Description": "' + b"a" * (2400 << 10) + b'"}'
    request = _signed_raw(server, "TrentService.CreateKey", big)
    head = request[: request.index(b"\r\n\r\n")].replace(
        f"Content-Length: {len(big)}".encode(), b"Transfer-Encoding: chunked"
    )
    half = len(big) // 2
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head + b"\r\n\r\n" + b"%x\r\n" % half + big[:half] + b"\r\n")
        answers, closed = _answers(sock, 1)  # refused while the body is still arriving
        assert [status for status, _ in answers] == [413] and not closed
        rest = big[half:]
        sock.sendall(b"%x\r\n" % len(rest) + rest + b"\r\n0\r\n\r\n")
        fat = _signed_raw(server, "TrentService.ListKeys", b"{}").replace(
            b"\r\n\r\n", b"\r\nX-Filler: " + b"f" * (400 << 10) + b"\r\n\r\n", 1
        )
        try:
            sock.sendall(fat)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answers, closed = _answers(sock, 1)
    assert [status for status, _ in answers] in ([431], []) and closed


def test_a_refused_body_that_may_never_come_closes_the_connection(server: Server) -> None:
    """A client that waits for 100 Continue may never send the body it declared; one that
    sends more than the drain allows is not read for ever: both connections close after the
    answer, and nothing else is answered on them."""
    import socket

    from envelope._serving import MAX_DRAIN_BYTES

    big = b'{"Description": "' + b"a" * (1100 << 10) + b'"}'
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        request = _signed_raw(server, "TrentService.CreateKey", big, "Expect: 100-continue")
        sock.sendall(request[: request.index(b"\r\n\r\n") + 4])  # headers only
        answers, closed = _answers(sock, 2)
    assert [status for status, _ in answers] == [413] and closed
    assert b"connection: close" in answers[0][1]
    huge = b'{"Description": "' + b"a" * (MAX_DRAIN_BYTES + (2 << 20)) + b'"}'
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        try:
            sock.sendall(
                _signed_raw(server, "TrentService.CreateKey", huge)
                + _signed_raw(server, "TrentService.ListKeys", b"{}")
            )
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed while the client was still sending: what the cap is for
        answers, closed = _answers(sock, 2)
    assert [status for status, _ in answers] in ([413], []) and closed


def test_request_context_reaches_the_audit_log(server: Server, admin: Any, key_id: str) -> None:
    resp = admin.generate_data_key(KeyId=key_id, KeySpec="AES_256")
    rid = resp["ResponseMetadata"]["RequestId"]
    assert resp["ResponseMetadata"]["HTTPHeaders"]["x-amzn-requestid"] == rid
    svc = server.service()
    try:
        records = [r for r in svc.audit_tail(50) if r.get("request_id") == rid]
    finally:
        svc.close()
    assert len(records) == 1
    rec = records[0]
    assert rec["source_ip"] == "127.0.0.1"
    assert rec["principal"] == server.arns["admin"]
    assert "Boto3" in str(rec["user_agent"])
    # the request log has the same request, and no secret
    lines = [ln for ln in server.log_lines() if ln.get("request_id") == rid]
    assert len(lines) == 1 and lines[0]["operation"] == "GenerateDataKey"
    text = server.log.read_text()
    assert "Authorization" not in text and "Signature=" not in text


def test_healthz_and_metrics(server: Server, admin: Any, key_id: str) -> None:
    status, _, body = server.http("GET", "/healthz")
    assert status == 200 and json.loads(body) == {"status": "ok"}
    for _ in range(3):
        admin.generate_data_key(KeyId=key_id, KeySpec="AES_256")
    status, headers, body = server.http("GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    text = body.decode()
    m = re.search(
        r'^envelope_server_requests_total\{code="OK",operation="GenerateDataKey"\} (\S+)$',
        text,
        re.M,
    )
    assert m is not None and float(m.group(1)) >= 3
    assert 'envelope_server_request_seconds_bucket{le="0.0005",operation="GenerateDataKey"}' in text
    for method, path in (("GET", "/nowhere"), ("GET", "/"), ("PUT", "/"), ("POST", "/x")):
        status, headers, body = server.http(method, path)  # the AWS error shape, a request id
        assert status == 404 and json.loads(body)["__type"] == "UnknownOperationException"
        assert re.fullmatch(r"[0-9a-f-]{36}", headers["x-amzn-requestid"])
        assert headers["content-type"] == "application/x-amz-json-1.1"
        rid = headers["x-amzn-requestid"]  # with its log line (it had none; review),
        deadline = time.monotonic() + 10  # written once the answer is sent: waited for
        while True:
            lines = [ln for ln in server.log_lines() if ln.get("request_id") == rid]
            if lines or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert len(lines) == 1 and lines[0]["status"] == 404, lines
        assert lines[0]["error"] == "UnknownOperationException"
    # and counted, as an unknown X-Amz-Target is (a scanner shows on a dashboard)
    text = server.http("GET", "/metrics")[2].decode()
    m = re.search(
        r'^envelope_server_requests_total\{code="UnknownOperationException",'
        r'operation="unknown"\} (\S+)$',
        text,
        re.M,
    )
    assert m is not None and float(m.group(1)) >= 4, text


def test_unsigned_and_badly_signed_requests_are_refused_and_audited(server: Server) -> None:
    status, headers, body = server.http(
        "POST",
        "/",
        b"{}",
        {"X-Amz-Target": "TrentService.ListKeys", "Content-Type": "application/x-amz-json-1.1"},
    )
    assert json.loads(body)["__type"] == "MissingAuthenticationTokenException"
    assert status in (400, 403)
    unsigned_rid = headers["x-amzn-requestid"]
    key, _ = server.credentials["admin"]
    server.credentials["forger"] = (key, "W" * 40)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        server.client("forger").list_keys()
    assert _code(e) == "InvalidSignatureException"
    forged_rid = e.value.response["ResponseMetadata"]["RequestId"]
    svc = server.service()
    try:
        records = {r.get("request_id"): r for r in svc.audit_tail(50)}
    finally:
        svc.close()
    for rid in (unsigned_rid, forged_rid):
        assert records[rid]["decision"] == "denied"
        assert records[rid]["source_ip"] == "127.0.0.1"


def test_what_an_unauthenticated_client_sends_is_bounded_in_the_audit_log(
    server: Server,
) -> None:
    """An unsigned request is audited; its operation is recorded only when it names one
    (`TrentService.` and a known name: a made-up target such as "XXXXXXXXXXXXXDecrypt" was
    recorded as Decrypt), and its User-Agent is cut at 1 KiB (a log that keeps every record
    stored 60 KB of it per request)."""
    status, headers, _ = server.http(
        "POST",
        "/",
        b"{}",
        {
            "X-Amz-Target": "XXXXXXXXXXXXXDecrypt",
            "Content-Type": "application/x-amz-json-1.1",
            "User-Agent": "u" * 60_000,
        },
    )
    assert status in (400, 403)
    rid = headers["x-amzn-requestid"]
    svc = server.service()
    try:
        (rec,) = [r for r in svc.audit_tail(50) if r.get("request_id") == rid]
    finally:
        svc.close()
    assert rec["operation"] == "unknown" and rec["decision"] == "denied"
    assert len(str(rec["user_agent"])) == 1024


def test_answers_as_aws_recorded_them(admin: Any, key_id: str) -> None:
    """Answers of real AWS KMS to a suite of boto3 calls (recorded by others against AWS), for
    cases where the model alone does not say: a member the model leaves optional but the
    operation needs, grantees retiring their own grants through the account's delegation
    (the test user has kms:* in an identity policy), and grants for operations the key lacks."""
    with pytest.raises(botocore.exceptions.ClientError) as e:
        admin.generate_random()
    assert _code(e) == "ValidationException"
    assert e.value.response["Error"]["Message"] == "NumberOfBytes is required."
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    me = "arn:aws:iam::000000000000:user/admin"
    for by_token in (True, False):  # a grant without RetireGrant, retired by its own grantee
        g = admin.create_grant(KeyId=key_id, GranteePrincipal=me, Operations=["Decrypt"])
        if by_token:
            admin.retire_grant(GrantToken=g["GrantToken"])
        else:
            admin.retire_grant(KeyId=key_id, GrantId=g["GrantId"])
        grants = admin.list_grants(KeyId=key_id)["Grants"]
        assert g["GrantId"] not in {x["GrantId"] for x in grants}
    with pytest.raises(botocore.exceptions.ClientError) as e:
        admin.create_grant(
            KeyId=key_id, GranteePrincipal="arn:aws:iam::000000000000:root", Operations=["Sign"]
        )
    assert _code(e) == "ValidationException"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        admin.create_alias(AliasName="no-prefix", TargetKeyId=key_id)
    assert _code(e) == "ValidationException"
    assert 'must start with the prefix "alias/"' in e.value.response["Error"]["Message"]


def test_every_region_of_the_store_is_served(server: Server, admin: Any) -> None:
    """A client configured for another Region reaches that Region of the store, as AWS's
    Regional endpoints would: a multi-Region key's replica is described and used there, and
    its ciphertext opens in either Region."""
    key, secret = server.credentials["admin"]
    eu = boto3.client(
        "kms",
        endpoint_url=server.endpoint,
        region_name="eu-west-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=botocore.config.Config(retries={"total_max_attempts": 1}),
    )
    kid = admin.create_key(MultiRegion=True)["KeyMetadata"]["KeyId"]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        eu.describe_key(KeyId=kid)  # not replicated yet: no such key in eu-west-1
    assert _code(e) == "NotFoundException"
    out = admin.replicate_key(KeyId=kid, ReplicaRegion="eu-west-1")
    assert out["ReplicaKeyMetadata"]["Arn"].startswith("arn:aws:kms:eu-west-1:")
    # as AWS answers it (a recorded response): the replica being made; then Enabled
    made = out["ReplicaKeyMetadata"]
    assert (made["KeyState"], made["Enabled"]) == ("Creating", False)
    assert "CurrentKeyMaterialId" not in made
    meta = eu.describe_key(KeyId=kid)["KeyMetadata"]
    assert meta["MultiRegionConfiguration"]["MultiRegionKeyType"] == "REPLICA"
    assert (meta["KeyState"], meta["Enabled"]) == ("Enabled", True)
    blob = admin.encrypt(KeyId=kid, Plaintext=b"both ways")["CiphertextBlob"]
    assert eu.decrypt(CiphertextBlob=blob)["Plaintext"] == b"both ways"
    home_only = admin.create_key()["KeyMetadata"]["KeyId"]
    listed = {k["KeyId"] for k in eu.list_keys()["Keys"]}
    assert kid in listed and home_only not in listed  # each Region lists its own keys


def _wrapped_for(client: Any, kid: str, material: bytes) -> dict[str, Any]:
    """ImportToken and EncryptedKeyMaterial for `material` (GetParametersForImport over the
    wire, RSAES_OAEP_SHA_256 wrapping done here as a client would)."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    params = client.get_parameters_for_import(
        KeyId=kid, WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_2048"
    )
    public = serialization.load_der_public_key(params["PublicKey"])
    assert isinstance(public, rsa.RSAPublicKey)
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    return {
        "ImportToken": params["ImportToken"],
        "EncryptedKeyMaterial": public.encrypt(material, oaep),
    }


def test_imported_key_material_rotates_over_the_wire(admin: Any) -> None:
    """ImportType, KeyMaterialId, KeyMaterialDescription and IncludeKeyMaterial as boto3 sends
    them: import, import new material, rotate on demand, list, delete one material."""
    kid = admin.create_key(Origin="EXTERNAL")["KeyMetadata"]["KeyId"]
    never = {"ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE"}
    first = admin.import_key_material(
        KeyId=kid, KeyMaterialDescription="v1", **never, **_wrapped_for(admin, kid, b"\x11" * 32)
    )
    old = admin.encrypt(KeyId=kid, Plaintext=b"old")["CiphertextBlob"]
    second = admin.import_key_material(
        KeyId=kid, ImportType="NEW_KEY_MATERIAL", **never, **_wrapped_for(admin, kid, b"\x22" * 32)
    )
    listed = admin.list_key_rotations(KeyId=kid, IncludeKeyMaterial="ALL_KEY_MATERIAL")
    assert [(r["KeyMaterialId"], r["KeyMaterialState"]) for r in listed["Rotations"]] == [
        (first["KeyMaterialId"], "CURRENT"),
        (second["KeyMaterialId"], "PENDING_ROTATION"),
    ]
    assert listed["Rotations"][0]["KeyMaterialDescription"] == "v1"
    assert admin.list_key_rotations(KeyId=kid)["Rotations"] == []
    admin.rotate_key_on_demand(KeyId=kid)
    meta = admin.describe_key(KeyId=kid)["KeyMetadata"]
    assert meta["CurrentKeyMaterialId"] == second["KeyMaterialId"]
    rotation = admin.list_key_rotations(KeyId=kid)["Rotations"][0]
    assert rotation["RotationType"] == "ON_DEMAND" and "RotationDate" in rotation
    out = admin.decrypt(CiphertextBlob=old)
    assert (out["Plaintext"], out["KeyMaterialId"]) == (b"old", first["KeyMaterialId"])
    gone = admin.delete_imported_key_material(KeyId=kid, KeyMaterialId=first["KeyMaterialId"])
    assert gone["KeyMaterialId"] == first["KeyMaterialId"] and gone["KeyId"] == meta["Arn"]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        admin.decrypt(CiphertextBlob=old)
    assert _code(e) == "KMSInvalidStateException"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        admin.import_key_material(
            KeyId=kid,
            KeyMaterialId=second["KeyMaterialId"],
            **never,
            **_wrapped_for(admin, kid, b"\x11" * 32),
        )
    assert _code(e) == "IncorrectKeyMaterialException"
    admin.import_key_material(
        KeyId=kid,
        ImportType="EXISTING_KEY_MATERIAL",
        KeyMaterialId=first["KeyMaterialId"],
        **never,
        **_wrapped_for(admin, kid, b"\x11" * 32),
    )
    assert admin.decrypt(CiphertextBlob=old)["Plaintext"] == b"old"


def test_ed25519_keys_over_the_wire(admin: Any) -> None:
    """An ECC_NIST_EDWARDS25519 key as boto3 makes and uses it; the signature verifies with
    the public key GetPublicKey returns."""
    from cryptography.hazmat.primitives import serialization

    meta = admin.create_key(KeySpec="ECC_NIST_EDWARDS25519", KeyUsage="SIGN_VERIFY")
    kid = meta["KeyMetadata"]["KeyId"]
    assert meta["KeyMetadata"]["SigningAlgorithms"] == ["ED25519_SHA_512", "ED25519_PH_SHA_512"]
    sig = admin.sign(KeyId=kid, Message=b"m", SigningAlgorithm="ED25519_SHA_512")["Signature"]
    public = serialization.load_der_public_key(admin.get_public_key(KeyId=kid)["PublicKey"])
    public.verify(sig, b"m")
    out = admin.verify(KeyId=kid, Message=b"m", Signature=sig, SigningAlgorithm="ED25519_SHA_512")
    assert out["SignatureValid"] is True
    digest = hashlib.sha512(b"m").digest()
    ph = admin.sign(
        KeyId=kid, Message=digest, MessageType="DIGEST", SigningAlgorithm="ED25519_PH_SHA_512"
    )["Signature"]
    assert admin.verify(
        KeyId=kid,
        Message=digest,
        MessageType="DIGEST",
        Signature=ph,
        SigningAlgorithm="ED25519_PH_SHA_512",
    )["SignatureValid"]


def test_ml_dsa_keys_over_the_wire(admin: Any) -> None:
    """An ML_DSA_65 key over boto3: a 3,309-byte signature of a RAW message and of an
    EXTERNAL_MU, verified by the server and offline."""
    from cryptography.hazmat.primitives import serialization

    kid = admin.create_key(KeySpec="ML_DSA_65", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    public: Any = serialization.load_der_public_key(admin.get_public_key(KeyId=kid)["PublicKey"])
    sig = admin.sign(KeyId=kid, Message=b"m", SigningAlgorithm="ML_DSA_SHAKE_256")["Signature"]
    assert len(sig) == 3309
    public.verify(sig, b"m")
    mu = bytes(range(64))
    by_mu = admin.sign(
        KeyId=kid, Message=mu, MessageType="EXTERNAL_MU", SigningAlgorithm="ML_DSA_SHAKE_256"
    )["Signature"]
    public.verify_mu(by_mu, mu)
    out = admin.verify(
        KeyId=kid,
        Message=mu,
        MessageType="EXTERNAL_MU",
        Signature=by_mu,
        SigningAlgorithm="ML_DSA_SHAKE_256",
    )
    assert out["SignatureValid"] is True


def test_ml_kem_keys_over_the_wire(admin: Any) -> None:
    """Encapsulate and Decapsulate as boto3 calls them, with an ML_KEM_768 key."""
    kid = admin.create_key(KeySpec="ML_KEM_768", KeyUsage="ENCAPSULATE_DECAPSULATE")[
        "KeyMetadata"
    ]["KeyId"]
    out = admin.encapsulate(KeyId=kid, EncapsulationAlgorithm="ML_KEM")
    back = admin.decapsulate(
        KeyId=kid,
        SharedSecretCiphertextBlob=out["SharedSecretCiphertextBlob"],
        EncapsulationAlgorithm="ML_KEM",
    )
    assert back["SharedSecret"] == out["SharedSecret"] and len(out["SharedSecret"]) == 32
    with pytest.raises(botocore.exceptions.ClientError) as e:
        admin.decapsulate(
            KeyId=kid, SharedSecretCiphertextBlob=b"\0" * 10, EncapsulationAlgorithm="ML_KEM"
        )
    assert _code(e) == "InvalidCiphertextException"
    from cryptography.hazmat.primitives.asymmetric import mlkem

    if hasattr(mlkem, "MLKEM512PrivateKey"):  # served once cryptography has it
        admin.create_key(KeySpec="ML_KEM_512", KeyUsage="ENCAPSULATE_DECAPSULATE")
    else:
        with pytest.raises(botocore.exceptions.ClientError) as e:
            admin.create_key(KeySpec="ML_KEM_512", KeyUsage="ENCAPSULATE_DECAPSULATE")
        assert _code(e) == "UnsupportedOperationException"


def test_key_last_usage_over_the_wire(admin: Any) -> None:
    kid = admin.create_key()["KeyMetadata"]["KeyId"]
    assert admin.get_key_last_usage(KeyId=kid)["KeyLastUsage"] == {}
    admin.generate_data_key(KeyId=kid, KeySpec="AES_256")
    out = admin.get_key_last_usage(KeyId=kid)
    assert out["KeyId"] == kid and out["KeyLastUsage"]["Operation"] == "GenerateDataKey"
    assert out["KeyLastUsage"]["KmsRequestId"] and out["TrackingStartDate"]


def test_a_forwarded_for_header_does_not_choose_the_source_address(
    server: Server, admin: Any, key_id: str
) -> None:
    """The source address (aws:SourceIp, the audit record) is the socket's peer: uvicorn
    trusted X-Forwarded-For from loopback, so any local client could pick the address that
    an IpAddress condition tests."""

    def forwarded(request: Any, **_: Any) -> None:
        request.headers["X-Forwarded-For"] = "10.9.9.7"

    admin.meta.events.register("before-sign.kms.GenerateDataKey", forwarded)
    try:
        resp = admin.generate_data_key(KeyId=key_id, KeySpec="AES_256")
    finally:
        admin.meta.events.unregister("before-sign.kms.GenerateDataKey", forwarded)
    rid = resp["ResponseMetadata"]["RequestId"]
    svc = server.service()
    try:
        (rec,) = [r for r in svc.audit_tail(50) if r.get("request_id") == rid]
    finally:
        svc.close()
    assert rec["source_ip"] == "127.0.0.1"


def test_an_operation_without_output_answers_an_empty_body(server: Server, key_id: str) -> None:
    """CreateAlias, EnableKey, TagResource...: "HTTP 200 response with an empty HTTP body" (the
    API reference of each); `{}` was answered. An operation with output answers its JSON."""
    for target, doc in (
        ("CreateAlias", {"AliasName": "alias/empty-body", "TargetKeyId": key_id}),
        ("EnableKey", {"KeyId": key_id}),
        ("TagResource", {"KeyId": key_id, "Tags": [{"TagKey": "k", "TagValue": "v"}]}),
        ("DeleteAlias", {"AliasName": "alias/empty-body"}),
    ):
        status, headers, body = server.raw(f"TrentService.{target}", json.dumps(doc).encode())
        assert (status, body, headers.get("content-length")) == (200, b"", "0"), target
    status, _, body = server.raw("TrentService.DescribeKey", json.dumps({"KeyId": key_id}).encode())
    assert status == 200 and json.loads(body)["KeyMetadata"]["KeyId"] == key_id
