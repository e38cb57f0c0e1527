"""SigV4 for ``kms-xks-proxy``: the client's light signer (`envelope.xks._sigv4.Signer`) signs
exactly as botocore's `SigV4Auth.add_auth` does, and the KMS server's verifier
(`envelope.server.auth.Authenticator`), parametrised by service name over a static credential
set, accepts those signatures and refuses the wrong service, key, secret, time or body."""

from __future__ import annotations

import datetime
from unittest import mock

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from envelope.server.auth import Authenticator, AuthError, StaticCredentials
from envelope.xks._sigv4 import Signer

KEY_ID = "AKIAI2SFODNN7EXAMPLE"
SECRET = "FYtE5EFA5FT0mCc3DrGUe2sti527BitkQ0Zr9MO9fvE"
OTHER_ID = "BKIAI2SFODNN7EXAMPLE"
OTHER_SECRET = "GYtE5EFA5FT0mCc3DrGUe2sti527BitkQ0Zr9MO9fvE"
HOST = "xks.example.com:8443"
PATH = "/keystores/a/kms/xks/v1/keys/k1/encrypt"
BODY = b'{"requestMetadata":{"kmsRequestId":"r"},"plaintext":"SGVsbG8="}'
NOW = 1_800_000_000.0


def botocore_headers(key: str, secret: str, service: str, at: float) -> dict[str, str]:
    req = AWSRequest("POST", f"https://{HOST}{PATH}", data=BODY, headers={"Host": HOST})
    fixed = datetime.datetime.fromtimestamp(at, datetime.UTC).replace(tzinfo=None)
    with mock.patch("botocore.auth.get_current_datetime", return_value=fixed):
        SigV4Auth(Credentials(key, secret), service, "us-east-1").add_auth(req)
    return dict(req.headers.items())


def verifier() -> Authenticator:
    creds = StaticCredentials({KEY_ID: SECRET, OTHER_ID: OTHER_SECRET}, "us-east-1")
    return Authenticator(creds, clock=lambda: NOW, service_name="kms-xks-proxy")


def verify(
    auth: Authenticator, headers: dict[str, str], body: bytes = BODY, path: str = PATH
) -> str:
    return auth.verify(
        method="POST",
        host=HOST,
        path=path,
        query="",
        headers=[(k.lower(), v) for k, v in headers.items()],
        body=body,
    ).access_key_id


def test_the_light_signer_is_botocores_signature() -> None:
    ours = Signer(KEY_ID, SECRET, "us-east-1").sign(HOST, PATH, BODY, NOW)
    theirs = botocore_headers(KEY_ID, SECRET, "kms-xks-proxy", NOW)
    assert ours["Authorization"] == theirs["Authorization"]
    assert ours["X-Amz-Date"] == theirs["X-Amz-Date"]
    assert "SignedHeaders=host;x-amz-date," in ours["Authorization"]
    # the next day's signing key is derived again, not reused
    signer = Signer(KEY_ID, SECRET, "us-east-1")
    signer.sign(HOST, PATH, BODY, NOW)
    later = signer.sign(HOST, PATH, BODY, NOW + 86400)
    assert (
        later["Authorization"]
        == botocore_headers(KEY_ID, SECRET, "kms-xks-proxy", NOW + 86400)["Authorization"]
    )


def test_the_signer_repr_has_no_secret() -> None:
    assert SECRET not in repr(Signer(KEY_ID, SECRET, "us-east-1"))
    assert SECRET not in repr(StaticCredentials({KEY_ID: SECRET}, "us-east-1"))


def test_both_credentials_verify_for_rotation() -> None:
    auth = verifier()
    assert verify(auth, Signer(KEY_ID, SECRET, "us-east-1").sign(HOST, PATH, BODY, NOW)) == KEY_ID
    assert verify(auth, botocore_headers(OTHER_ID, OTHER_SECRET, "kms-xks-proxy", NOW)) == OTHER_ID


def test_a_kms_signature_is_refused_by_the_xks_verifier_and_back() -> None:
    with pytest.raises(AuthError) as e:
        verify(verifier(), botocore_headers(KEY_ID, SECRET, "kms", NOW))
    assert e.value.code == "InvalidSignatureException" and "kms-xks-proxy" in e.value.message
    kms_side = Authenticator(StaticCredentials({KEY_ID: SECRET}, "us-east-1"), clock=lambda: NOW)
    with pytest.raises(AuthError):
        verify(kms_side, botocore_headers(KEY_ID, SECRET, "kms-xks-proxy", NOW))


@pytest.mark.parametrize(
    "case",
    ["unknown key", "wrong secret", "too old", "too new", "other body", "other path", "tampered"],
)
def test_refusals(case: str) -> None:
    auth = verifier()
    key, secret, at, body, path = KEY_ID, SECRET, NOW, BODY, PATH
    if case == "unknown key":
        key = "CKIAI2SFODNN7EXAMPLE"
    elif case == "wrong secret":
        secret = OTHER_SECRET
    elif case == "too old":
        at = NOW - 301
    elif case == "too new":
        at = NOW + 301
    headers = botocore_headers(key, secret, "kms-xks-proxy", at)
    if case == "other body":
        body = BODY.replace(b"SGVsbG8=", b"SGVsbG9=")
    elif case == "other path":
        path = PATH.replace("/k1/", "/k2/")
    elif case == "tampered":
        sig = headers["Authorization"][-64:]
        flipped = ("0" if sig[0] != "0" else "1") + sig[1:]
        headers["Authorization"] = headers["Authorization"][:-64] + flipped
    with pytest.raises(AuthError) as e:
        verify(auth, headers, body, path)
    assert SECRET not in str(e.value) and OTHER_SECRET not in str(e.value)


def test_within_the_five_minute_window() -> None:
    auth = verifier()
    for at in (NOW - 299, NOW + 299):
        assert verify(auth, botocore_headers(KEY_ID, SECRET, "kms-xks-proxy", at)) == KEY_ID


@pytest.mark.parametrize(
    "path",
    [
        "/kms/xks/v1/health",
        "/a/b_c-d/kms/xks/v1/keys/Key.1_x-y~z/encrypt",
        "/kms/xks/v1/keys/.../metadata",  # three periods: an ordinary segment
        "/a/./b",  # botocore normalises these: the signer must too (its own code path)
        "/a/../b",
        "/a b/%41",
        "/",
    ],
)
def test_every_path_signs_as_botocore_does(path: str) -> None:
    req = AWSRequest("POST", f"https://{HOST}{path}", data=BODY, headers={"Host": HOST})
    fixed = datetime.datetime.fromtimestamp(NOW, datetime.UTC).replace(tzinfo=None)
    with mock.patch("botocore.auth.get_current_datetime", return_value=fixed):
        SigV4Auth(Credentials(KEY_ID, SECRET), "kms-xks-proxy", "us-east-1").add_auth(req)
    ours = Signer(KEY_ID, SECRET, "us-east-1").sign(HOST, path, BODY, NOW)
    assert ours["Authorization"] == req.headers["Authorization"]
