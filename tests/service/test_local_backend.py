"""`envelope.kms.local`: the embedded KMS behind the encryptor's `KmsBackend` Protocol."""

from __future__ import annotations

from pathlib import Path

import pytest

from envelope import api
from envelope.errors import ConfigurationError, KmsKeyError
from envelope.keyring import Keyring
from envelope.kms.base import KmsBackend, WrappedKey
from envelope.kms.local import LocalKms, key_id_from_uri, open_local

pytestmark = pytest.mark.anyio


@pytest.fixture
def kms(home: Path) -> LocalKms:
    backend = open_local(home)
    backend.service.create_alias(
        alias_name="alias/demo",
        target_key_id=backend.service.create_key(description="demo")["KeyMetadata"]["KeyId"],
    )
    return backend


def test_uri_forms() -> None:
    assert key_id_from_uri("local:alias/demo") == "alias/demo"
    assert key_id_from_uri("local://alias/demo") == "alias/demo"
    assert key_id_from_uri("arn:aws:kms:us-east-1:000000000000:key/x").startswith("arn:")
    with pytest.raises(ConfigurationError):
        key_id_from_uri("local:")


async def test_protocol_round_trip(kms: LocalKms) -> None:
    assert isinstance(kms, KmsBackend) and kms.provider_id == "local"
    arn = kms.service.describe_key(key_id="alias/demo")["KeyMetadata"]["Arn"]
    dk = await kms.generate_data_key("local:alias/demo", context={"bucket": "b"})
    assert dk.wrapped.provider_id == "local" and dk.wrapped.key_id == arn
    assert kms.can_unwrap(dk.wrapped)
    assert await kms.decrypt_data_key(dk.wrapped, context={"bucket": "b"}) == dk.plaintext
    with pytest.raises(KmsKeyError, match="InvalidCiphertextException"):
        await kms.decrypt_data_key(dk.wrapped, context={"bucket": "other"})
    rewrapped = await kms.encrypt_data_key("alias/demo", dk.plaintext, context={"x": "y"})
    assert await kms.decrypt_data_key(rewrapped, context={"x": "y"}) == dk.plaintext
    # rotation never breaks what was wrapped before
    kms.service.rotate_key_on_demand(key_id=arn)  # key id or ARN only, as in AWS
    assert await kms.decrypt_data_key(dk.wrapped, context={"bucket": "b"}) == dk.plaintext
    await kms.aclose()


async def test_errors_map_to_envelope_errors(kms: LocalKms) -> None:
    with pytest.raises(KmsKeyError, match="NotFoundException"):
        await kms.generate_data_key("alias/none", context={})
    dk = await kms.generate_data_key("alias/demo", context={})
    kms.service.disable_key(key_id=dk.wrapped.key_id)  # key id or ARN only, as in AWS
    with pytest.raises(KmsKeyError, match="DisabledException"):
        await kms.decrypt_data_key(dk.wrapped, context={})
    kms.service.schedule_key_deletion(key_id=dk.wrapped.key_id)
    with pytest.raises(KmsKeyError, match="KMSInvalidStateException"):
        await kms.decrypt_data_key(dk.wrapped, context={})
    assert not kms.can_unwrap(WrappedKey("memory", "k", b"x"))
    await kms.aclose()


async def test_offload_to_a_thread(home: Path) -> None:
    kms = open_local(home, offload=True)
    kid = kms.service.create_key()["KeyMetadata"]["KeyId"]
    dk = await kms.generate_data_key(kid, context={})
    assert await kms.decrypt_data_key(dk.wrapped, context={}) == dk.plaintext
    await kms.aclose()


async def test_encryptor_round_trip(kms: LocalKms) -> None:
    keyring = Keyring(kms, "local:alias/demo")
    sealed = await api.encrypt_bytes(b"hello embedded kms" * 100, keyring=keyring)
    opened = await api.decrypt_bytes(sealed, keyring=Keyring(decrypt_with=[kms]))
    assert bytes(opened) == b"hello embedded kms" * 100
    await kms.aclose()


def test_wrong_root_key_is_a_configuration_error(home: Path) -> None:
    open_local(home).service.close()
    (home / "root.key").write_bytes(bytes(32))
    with pytest.raises(ConfigurationError, match="root key"):
        open_local(home)


async def test_quota_throttles_are_audited_and_retried(home: Path) -> None:
    """A service with a request-rate quota answers ThrottlingException (audited like any
    refusal); through the retry layer a job still completes with every object correct."""
    from envelope.errors import ThrottlingError
    from envelope.kms.quota import RateQuota
    from envelope.kms.retry import RetryingKms, RetryPolicy
    from envelope.service import audit, open_service
    from envelope.service.errors import ThrottlingException

    clock = [0.0]
    svc = open_service(home, quota=RateQuota({"GenerateDataKey": 2.0}, clock=lambda: clock[0]))
    key_id = svc.create_key()["KeyMetadata"]["KeyId"]
    backend = LocalKms(svc)
    for _ in range(2):
        await backend.generate_data_key(key_id, context={})
    with pytest.raises(ThrottlingError):
        await backend.generate_data_key(key_id, context={})
    with pytest.raises(ThrottlingException) as info:  # in AWS's recorded words
        svc.generate_data_key(key_id=key_id, key_spec="AES_256")
    assert info.value.message == (
        "You have exceeded the rate at which you may call KMS. Reduce the frequency of your calls."
    )
    with svc.store.read() as conn:
        (last,) = list(audit.tail(conn, 1))
    assert last["operation"] == "GenerateDataKey"
    assert last["error_code"] == "ThrottlingException"

    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock[0] += seconds

    retrying = RetryingKms(backend, RetryPolicy.bulk(), sleep=fake_sleep, clock=lambda: clock[0])
    kr = Keyring(retrying, key_id)
    cts = [await api.encrypt_bytes(b"x" * 100, keyring=kr) for _ in range(10)]
    assert sleeps, "throttling should have caused backoff sleeps"
    for ct in cts:
        assert await api.decrypt_bytes(ct, keyring=kr) == b"x" * 100
    await backend.aclose()
