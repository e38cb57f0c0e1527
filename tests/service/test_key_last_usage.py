"""GetKeyLastUsage, answered from the audit log: the last successful cryptographic use of a
key in its Region, with the audit record that shows it."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from envelope.service import KeyService
from envelope.service.store import Store

from .conftest import FakeClock, new_key
from .test_rotation_import_mrk import code_of


def usage(svc: KeyService, kid: str) -> dict[str, object]:
    return dict(svc.get_key_last_usage(key_id=kid)["KeyLastUsage"])


def test_last_successful_cryptographic_use(svc: KeyService, clock: FakeClock) -> None:
    kid = new_key(svc)
    out = svc.get_key_last_usage(key_id=kid)
    created = svc.describe_key(key_id=kid)["KeyMetadata"]["CreationDate"]
    assert out["KeyId"] == kid and out["KeyLastUsage"] == {}
    assert out["TrackingStartDate"] == out["KeyCreationDate"] == created

    clock.advance(seconds=5)
    blob = svc.encrypt(key_id=kid, plaintext=b"x", encryption_context={"a": "b"})["CiphertextBlob"]
    record = next(r for r in reversed(svc.audit_tail(5)) if r["operation"] == "Encrypt")
    got = usage(svc, kid)
    assert got == {
        "Operation": "Encrypt",
        "Timestamp": record["time"],
        "CloudTrailEventId": str(record["seq"]),
        "KmsRequestId": record["request_id"],
    }
    # what is not a successful cryptographic use leaves it as it is
    clock.advance(seconds=5)
    svc.describe_key(key_id=kid)
    assert code_of(lambda: svc.decrypt(ciphertext_blob=blob)) == "InvalidCiphertextException"
    assert usage(svc, kid) == got
    svc.decrypt(ciphertext_blob=blob, encryption_context={"a": "b"})
    assert usage(svc, kid)["Operation"] == "Decrypt"


def test_re_encrypt_counts_for_both_keys_and_names_its_source(svc: KeyService) -> None:
    src, dst = new_key(svc), new_key(svc)
    blob = svc.encrypt(key_id=src, plaintext=b"x")["CiphertextBlob"]
    svc.generate_data_key(key_id=dst, key_spec="AES_256")
    svc.re_encrypt(ciphertext_blob=blob, destination_key_id=dst)
    assert usage(svc, src)["Operation"] == usage(svc, dst)["Operation"] == "ReEncrypt"
    record = next(r for r in reversed(svc.audit_tail(5)) if r["operation"] == "ReEncrypt")
    assert str(record["key_id"]).endswith(src)
    assert str(record["params"]["DestinationKeyId"]).endswith(dst)  # type: ignore[index]


def test_each_region_of_a_multi_region_key_is_tracked_on_its_own(svc: KeyService) -> None:
    kid = new_key(svc, multi_region=True)
    svc.replicate_key(key_id=kid, replica_region="eu-west-1")
    eu = svc.for_region("eu-west-1")
    blob = svc.encrypt(key_id=kid, plaintext=b"x")["CiphertextBlob"]
    assert usage(svc, kid)["Operation"] == "Encrypt" and usage(eu, kid) == {}
    eu.decrypt(ciphertext_blob=blob)
    assert usage(eu, kid)["Operation"] == "Decrypt"
    assert usage(svc, kid)["Operation"] == "Encrypt"


def test_keys_are_named_by_id_or_arn_only(svc: KeyService) -> None:
    kid = new_key(svc)
    svc.create_alias(alias_name="alias/used", target_key_id=kid)
    arn = svc.describe_key(key_id=kid)["KeyMetadata"]["Arn"]
    assert svc.get_key_last_usage(key_id=arn)["KeyId"] == kid
    assert code_of(lambda: svc.get_key_last_usage(key_id="alias/used")) == "InvalidArnException"
    alias_arn = arn.replace(f"key/{kid}", "alias/used")
    assert code_of(lambda: svc.get_key_last_usage(key_id=alias_arn)) == "InvalidArnException"


@pytest.mark.parametrize("records", [1200])
def test_the_scan_finds_a_use_far_back(svc: KeyService, records: int) -> None:
    """The log is read newest first in batches: a use behind many other records is found."""
    old, busy = new_key(svc), new_key(svc)
    svc.generate_data_key(key_id=old, key_spec="AES_256")
    for _ in range(records):
        svc.generate_data_key(key_id=busy, key_spec="AES_256")
    assert usage(svc, old)["Operation"] == "GenerateDataKey"
    assert usage(svc, new_key(svc)) == {}


def test_the_scan_holds_nothing_other_calls_wait_for(
    svc: KeyService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The log is scanned after the call is recorded, on a read-only connection of its own:
    while it runs, another thread's call (which needs the write lock and this process's
    connection) goes through. A scan inside the call stalled every other call for as long."""
    kid, other = new_key(svc), new_key(svc)
    svc.encrypt(key_id=kid, plaintext=b"x")
    real = Store.side_reader
    done: list[object] = []

    @contextmanager
    def probing(self: Store) -> Iterator[sqlite3.Connection]:
        with real(self) as conn:
            t = threading.Thread(
                target=lambda: done.append(svc.generate_data_key(key_id=other, key_spec="AES_256"))
            )
            t.start()
            t.join(timeout=30)
            assert not t.is_alive(), "a call waited for the scan"
            yield conn

    monkeypatch.setattr(Store, "side_reader", probing)
    assert usage(svc, kid)["Operation"] == "Encrypt"
    assert len(done) == 1
