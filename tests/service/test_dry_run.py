"""DryRun: a call that would succeed answers DryRunOperationException and changes nothing; a
call that would fail answers its own error. Both are audit records."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from envelope.service import KeyService
from envelope.service.errors import DryRunOperationException, NotFoundException

from .conftest import new_key


def _state(svc: KeyService) -> list[Any]:
    conn = sqlite3.connect(svc.store.path)
    try:
        rows: list[Any] = []
        for table in ("keys", "material", "grants", "grant_tokens", "aliases"):
            rows.append(sorted(conn.execute(f"SELECT * FROM {table}").fetchall(), key=repr))
        return rows
    finally:
        conn.close()


CALLS: dict[str, Callable[[KeyService, str, bytes], Any]] = {
    "encrypt": lambda s, k, b: s.encrypt(key_id=k, plaintext=b"x", dry_run=True),
    "decrypt": lambda s, k, b: s.decrypt(ciphertext_blob=b, dry_run=True),
    "re_encrypt": lambda s, k, b: s.re_encrypt(
        ciphertext_blob=b, destination_key_id=k, dry_run=True
    ),
    "generate_data_key": lambda s, k, b: s.generate_data_key(
        key_id=k, key_spec="AES_256", dry_run=True
    ),
    "generate_data_key_without_plaintext": lambda s, k, b: (
        s.generate_data_key_without_plaintext(key_id=k, number_of_bytes=16, dry_run=True)
    ),
    "generate_data_key_pair": lambda s, k, b: s.generate_data_key_pair(
        key_id=k, key_pair_spec="ECC_NIST_P256", dry_run=True
    ),
    "create_grant": lambda s, k, b: s.create_grant(
        key_id=k,
        grantee_principal="arn:aws:iam::000000000000:root",
        operations=["Decrypt"],
        dry_run=True,
    ),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_a_dry_run_that_would_succeed_changes_nothing(svc: KeyService, name: str) -> None:
    kid = new_key(svc)
    blob = svc.encrypt(key_id=kid, plaintext=b"secret")["CiphertextBlob"]
    before = _state(svc)
    with pytest.raises(DryRunOperationException):
        CALLS[name](svc, kid, blob)
    assert _state(svc) == before
    rec = svc.audit_tail(1)[0]
    assert rec["error_code"] == "DryRunOperationException" and rec["params"]["DryRun"] is True


def test_a_dry_run_that_would_fail_gets_its_own_error(svc: KeyService, home: Path) -> None:
    with pytest.raises(NotFoundException):
        svc.encrypt(key_id="alias/none", plaintext=b"x", dry_run=True)
    kid = new_key(svc)
    user = svc.create_user(user_name="u")["User"]["Arn"]
    with pytest.raises(Exception, match="not authorized"):
        svc.encrypt(key_id=kid, plaintext=b"x", dry_run=True, principal=user)


def test_retire_and_revoke_dry_runs_keep_the_grant(svc: KeyService) -> None:
    kid = new_key(svc)
    g = svc.create_grant(
        key_id=kid, grantee_principal="arn:aws:iam::000000000000:root", operations=["Decrypt"]
    )
    for call in (
        lambda: svc.retire_grant(grant_token=g["GrantToken"], dry_run=True),
        lambda: svc.revoke_grant(key_id=kid, grant_id=g["GrantId"], dry_run=True),
    ):
        with pytest.raises(DryRunOperationException):
            call()
    assert [x["GrantId"] for x in svc.list_grants(key_id=kid)["Grants"]] == [g["GrantId"]]


def test_a_permission_test_checks_what_the_real_call_checks_before_the_ciphertext(
    svc: KeyService,
) -> None:
    """DryRun with IGNORE_CIPHERTEXT said "would have succeeded" where the real call fails: a
    ReEncrypt onto the same key under a Deny on kms:ReEncryptOnSameKey, a Decrypt with a
    signing key or an algorithm the key does not take; its audit record did not say it was a
    permission test (diff review)."""
    from envelope.service.errors import (
        AccessDeniedException,
        DryRunOperationException,
        InvalidKeyUsageException,
    )

    from .access_helpers import attach, stmt, user

    key = svc.create_key()["KeyMetadata"]["Arn"]
    other = svc.create_key()["KeyMetadata"]["Arn"]
    signing = svc.create_key(key_spec="ECC_NIST_P256", key_usage="SIGN_VERIFY")["KeyMetadata"]
    caller = user(svc, "tester")
    attach(
        svc, caller, stmt(),
        stmt("Deny", Condition={"Bool": {"kms:ReEncryptOnSameKey": "true"}}),
    )  # fmt: skip
    test = {"dry_run": True, "dry_run_modifiers": ["IGNORE_CIPHERTEXT"], "principal": caller}
    with pytest.raises(AccessDeniedException):
        svc.re_encrypt(source_key_id=key, destination_key_id=key, **test)
    with pytest.raises(DryRunOperationException):
        svc.re_encrypt(source_key_id=key, destination_key_id=other, **test)
    with pytest.raises(InvalidKeyUsageException):
        svc.decrypt(key_id=signing["Arn"], **test)
    with pytest.raises(InvalidKeyUsageException):
        svc.decrypt(key_id=key, encryption_algorithm="RSAES_OAEP_SHA_256", **test)
    with pytest.raises(DryRunOperationException):
        svc.decrypt(key_id=key, **test)
    assert svc.audit_tail(1)[0]["params"]["DryRunModifiers"] == ["IGNORE_CIPHERTEXT"]
