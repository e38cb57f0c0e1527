"""`envelope.xks.spec` against the specification's own examples and rules."""

from __future__ import annotations

import base64

import pytest

from envelope.xks.spec import (
    ERROR_STATUS,
    RequestMetadata,
    SpecViolation,
    b64decode,
    cdiv,
    check_access_key_id,
    check_key_id,
    check_secret_access_key,
    error_message,
    key_path,
    proxy_aad,
    split_uri_path,
)


def test_cdiv_is_the_specifications_appendix_c_example() -> None:
    # Appendix C: 33 bytes of AAD, 13 of ciphertextMetadata, 12 of IV, 12 of ciphertext and a
    # 16-byte tag hash to the CDIV of the Encrypt response example
    value = cdiv(
        b"project=nile,department=marketing",
        base64.b64decode("a2V5X3ZlcnNpb249MQ=="),
        base64.b64decode("HMrlRw85cAJUd5Ax"),
        base64.b64decode("ghxkK1txeDNn3q8Y"),
        base64.b64decode("vBxN2ncH1oEkR8WVXpmyYQ=="),
    )
    assert value.hex() == "a8703f2260bd8791ec2d15ea0b23e65a0631eedcf2a13a65cc82db3f47cf5ec7"
    assert base64.b64encode(value).decode() == "qHA/ImC9h5HsLRXqCyPmWgYx7tzyoTplzILbP0fPXsc="


def test_cdiv_treats_absent_fields_as_empty() -> None:
    iv, ct, tag = b"i" * 12, b"c" * 5, b"t" * 16
    assert cdiv(None, None, iv, ct, tag) == cdiv(b"", b"", iv, ct, tag)
    assert cdiv(b"ab", None, iv, ct, tag) == cdiv(b"a", b"b", iv, ct, tag)  # no lengths: spec


def test_proxy_aad_has_both_lengths() -> None:
    # 2-byte big-endian AAD length || AAD || 1-byte metadata length || metadata
    assert proxy_aad(b"hello", b"v1") == b"\x00\x05hello\x02v1"
    assert proxy_aad(None, None) == b"\x00\x00\x00"
    assert proxy_aad(b"", None) == proxy_aad(None, b"")
    # moving bytes between the AAD and the metadata changes the AAD given to AES-GCM
    assert proxy_aad(b"ab", None) != proxy_aad(b"a", b"b") != proxy_aad(None, b"ab")
    assert proxy_aad(b"x" * 300, None)[:2] == b"\x01\x2c"
    with pytest.raises(SpecViolation):
        proxy_aad(None, b"m" * 21)
    with pytest.raises(SpecViolation):
        proxy_aad(b"a" * 65536, None)


def test_error_statuses_are_the_specifications() -> None:
    assert ERROR_STATUS == {
        "ValidationException": 400,
        "InvalidStateException": 400,
        "InvalidCiphertextException": 400,
        "InvalidKeyUsageException": 400,
        "AuthenticationFailedException": 401,
        "AccessDeniedException": 403,
        "KeyNotFoundException": 404,
        "InvalidUriPathException": 404,
        "ThrottlingException": 429,
        "InternalException": 500,
        "UnsupportedOperationException": 501,
        "DependencyTimeoutException": 503,
    }


@pytest.mark.parametrize(
    "key_id", ["a", "Key-1.v2_x", "b42c7fbf-de61-441c-ae24-123456789012", "k" * 128]
)
def test_valid_key_ids(key_id: str) -> None:
    assert check_key_id(key_id) == key_id


@pytest.mark.parametrize("key_id", ["", "a/b", "a b", "k" * 129, "..", ".", "ké", "a%2Fb"])
def test_invalid_key_ids(key_id: str) -> None:
    with pytest.raises(SpecViolation):
        check_key_id(key_id)


def test_uri_paths() -> None:
    assert split_uri_path("/kms/xks/v1") == ""
    assert split_uri_path("/keystores/4a0d79d6-1d1b_x/kms/xks/v1") == "/keystores/4a0d79d6-1d1b_x"
    for bad in (
        "kms/xks/v1",
        "/a//kms/xks/v1",
        "/a.b/kms/xks/v1",
        "/a/kms/xks/v2",
        "/" + "a" * 120 + "/kms/xks/v1",
    ):
        with pytest.raises(SpecViolation):
            split_uri_path(bad)
    assert key_path("/p", "k1", "GetKeyMetadata") == "/p/kms/xks/v1/keys/k1/metadata"


def test_credentials_shapes() -> None:
    check_access_key_id("AKIAI2SFODNN7EXAMPLE")
    check_secret_access_key("FYtE5EFA5FT0mCc3DrGUe2sti527BitkQ0Zr9MO9fvE")
    for bad in ("short", "AKIAI2SFODNN7EXAMPLE1", "akiai2sfodnn7example"):  # 1 is not base32
        with pytest.raises(SpecViolation):
            check_access_key_id(bad)
    secret = "x" * 42
    with pytest.raises(SpecViolation) as e:
        check_secret_access_key(secret)
    assert secret not in str(e.value)


def test_base64_is_strict_standard() -> None:
    assert b64decode("SGVsbG8gV29ybGQh", "plaintext") == b"Hello World!"
    assert b64decode("", "plaintext") == b""
    for bad in (
        "SGVsbG8",
        "SGV sbG8=",
        "-_8=",
        "SGVsbG8==",
        "SGVsbG8=\n",
        "SGVsbG8=A",
        "é",
        5,
        None,
    ):
        with pytest.raises(SpecViolation):
            b64decode(bad, "plaintext")


def test_error_message_is_printable_ascii_under_512() -> None:
    assert error_message("ok é\n") == "ok ??"
    assert len(error_message("x" * 2000)) == 511


def test_request_metadata_wire_per_operation() -> None:
    md = RequestMetadata(
        "arn:aws:iam::123456789012:user/Alice",
        "arn:aws:kms:k",
        "Encrypt",
        "r1",
        kms_via_service="ebs",
    )
    assert md.to_wire("GetHealthStatus") == {"kmsRequestId": "r1", "kmsOperation": "Encrypt"}
    assert md.to_wire("Encrypt") == {
        "awsPrincipalArn": "arn:aws:iam::123456789012:user/Alice",
        "kmsKeyArn": "arn:aws:kms:k",
        "kmsOperation": "Encrypt",
        "kmsRequestId": "r1",
        "kmsViaService": "ebs",
    }
    no_key = RequestMetadata("arn:aws:iam::1:user/a", None, "CreateKey", "r2")
    assert "kmsKeyArn" not in no_key.to_wire("GetKeyMetadata")
    with pytest.raises(SpecViolation):
        no_key.to_wire("Decrypt")
    back = RequestMetadata.from_wire("Encrypt", md.to_wire("Encrypt") | {"futureField": 1})
    assert back == md
    # any kmsOperation, an opaque request id; required members must be there
    RequestMetadata.from_wire(
        "GetHealthStatus", {"kmsRequestId": "not-a-uuid", "kmsOperation": "BulkDecrypt"}
    )
    for bad in (None, {}, {"kmsRequestId": "r"}, {"kmsRequestId": 1, "kmsOperation": "x"}):
        with pytest.raises(SpecViolation):
            RequestMetadata.from_wire("GetHealthStatus", bad)
    with pytest.raises(SpecViolation):
        RequestMetadata.from_wire("Decrypt", md.to_wire("GetHealthStatus"))
