"""Where AWS takes an alias in place of a key, and where it refuses one.

The API reference says which: the cryptographic operations, DescribeKey and GetPublicKey take
"key ID, key ARN, alias name, or alias ARN"; the management operations want "the key ID or key
ARN" (RetireGrant "the key ARN"). There an alias is not looked up but refused as AWS refuses
it: InvalidArnException "Key Aliases are not supported for this operation." (the body AWS
answers, as clients have recorded it for CreateGrant and GetKeyPolicy), and nothing changes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

import botocore.session
import pytest

from envelope.service import KeyService
from envelope.service import errors as E
from envelope.service._core import KEY_ID_ONLY

from .conftest import new_key
from .test_rotation_import_mrk import import_material

GRANTEE = "arn:aws:iam::000000000000:role/Reader"


def _key_member_docs() -> dict[str, str]:
    model = botocore.session.get_session().get_service_model("kms")
    docs = {}
    for op in model.operation_names:
        shape = model.operation_model(op).input_shape
        if shape is not None and "KeyId" in shape.members:
            text = re.sub("<[^>]+>", " ", shape.members["KeyId"].documentation)
            docs[op] = re.sub(r"\s+", " ", text)
    return docs


def test_the_operations_that_refuse_an_alias_are_those_of_the_api_reference() -> None:
    docs = _key_member_docs()
    key_only = {
        op
        for op, text in docs.items()
        if ("key ID or key ARN" in text or text.strip().startswith("The key ARN"))
        and "alias name" not in text
    }
    key_only.discard("GetKeyLastUsage")  # refuses aliases in its own words (test_key_last_usage)
    assert key_only == KEY_ID_ONLY
    # and the control: the cryptographic operations name aliases as accepted
    for op in ("Encrypt", "GenerateDataKey", "Sign", "DescribeKey", "GetPublicKey"):
        assert "alias name" in docs[op] and op not in KEY_ID_ONLY


class World:
    """One key of each kind the operations need, made on demand."""

    def __init__(self, svc: KeyService) -> None:
        self.svc = svc

    def aliased(self, kid: str) -> tuple[str, str, str]:
        """(key ARN, alias name, alias ARN) of `kid`, given an alias unless it has one."""
        arn = self.svc.arn(kid)
        held = self.svc.list_aliases(key_id=arn)["Aliases"]
        if held:
            name = str(held[0]["AliasName"])
        else:
            name = f"alias/a{len(self.svc.list_aliases()['Aliases'])}"
            self.svc.create_alias(alias_name=name, target_key_id=kid)
        return arn, name, arn.split(":key/")[0] + ":" + name


def _external(svc: KeyService, imported: bool) -> str:
    kid = new_key(svc, origin="EXTERNAL")
    if imported:
        import_material(svc, kid, os.urandom(32))
    return kid


def _grant(svc: KeyService, kid: str) -> str:
    return str(
        svc.create_grant(key_id=kid, grantee_principal=GRANTEE, operations=["Decrypt"])["GrantId"]
    )


#: operation -> (make the key, call it with a key reference `ref`)
Setup = Callable[[KeyService], tuple[str, Callable[[str], Any]]]


def _cases() -> dict[str, Setup]:
    def plain(call: Callable[[KeyService, str], Any], **create: Any) -> Setup:
        def setup(svc: KeyService) -> tuple[str, Callable[[str], Any]]:
            return new_key(svc, **create), lambda ref: call(svc, ref)

        return setup

    def pending(svc: KeyService) -> tuple[str, Callable[[str], Any]]:
        kid = new_key(svc)
        svc.create_alias(alias_name="alias/going", target_key_id=kid)  # (none after scheduling)
        svc.schedule_key_deletion(key_id=kid, pending_window_in_days=7)
        return kid, lambda ref: svc.cancel_key_deletion(key_id=ref)

    def external(call: Callable[[KeyService, str], Any], imported: bool) -> Setup:
        def setup(svc: KeyService) -> tuple[str, Callable[[str], Any]]:
            return _external(svc, imported), lambda ref: call(svc, ref)

        return setup

    def granted(call: Callable[[KeyService, str, str], Any]) -> Setup:
        def setup(svc: KeyService) -> tuple[str, Callable[[str], Any]]:
            kid = new_key(svc)
            grant = _grant(svc, kid)
            return kid, lambda ref: call(svc, ref, grant)

        return setup

    def import_into(svc: KeyService) -> tuple[str, Callable[[str], Any]]:
        kid = _external(svc, imported=False)

        def call(ref: str) -> Any:
            return import_material(svc, kid, os.urandom(32), key_ref=ref)

        return kid, call

    def put_policy(svc: KeyService) -> tuple[str, Callable[[str], Any]]:
        kid = new_key(svc)
        policy = svc.get_key_policy(key_id=kid)["Policy"]
        return kid, lambda ref: svc.put_key_policy(key_id=ref, policy=policy)

    return {
        "CancelKeyDeletion": pending,
        "CreateGrant": plain(
            lambda s, r: s.create_grant(key_id=r, grantee_principal=GRANTEE, operations=["Encrypt"])
        ),
        "DeleteImportedKeyMaterial": external(
            lambda s, r: s.delete_imported_key_material(key_id=r), imported=True
        ),
        "DisableKey": plain(lambda s, r: s.disable_key(key_id=r)),
        "DisableKeyRotation": plain(lambda s, r: s.disable_key_rotation(key_id=r)),
        "EnableKey": plain(lambda s, r: s.enable_key(key_id=r)),
        "EnableKeyRotation": plain(lambda s, r: s.enable_key_rotation(key_id=r)),
        "GetKeyPolicy": plain(lambda s, r: s.get_key_policy(key_id=r)),
        "GetKeyRotationStatus": plain(lambda s, r: s.get_key_rotation_status(key_id=r)),
        "GetParametersForImport": external(
            lambda s, r: s.get_parameters_for_import(
                key_id=r, wrapping_algorithm="RSAES_OAEP_SHA_256", wrapping_key_spec="RSA_2048"
            ),
            imported=False,
        ),
        "ImportKeyMaterial": import_into,
        "ListAliases": plain(lambda s, r: s.list_aliases(key_id=r)),
        "ListGrants": plain(lambda s, r: s.list_grants(key_id=r)),
        "ListKeyPolicies": plain(lambda s, r: s.list_key_policies(key_id=r)),
        "ListKeyRotations": plain(lambda s, r: s.list_key_rotations(key_id=r)),
        "ListResourceTags": plain(lambda s, r: s.list_resource_tags(key_id=r)),
        "PutKeyPolicy": put_policy,
        "ReplicateKey": plain(
            lambda s, r: s.replicate_key(key_id=r, replica_region="us-west-2"), multi_region=True
        ),
        "RetireGrant": granted(lambda s, r, g: s.retire_grant(key_id=r, grant_id=g)),
        "RevokeGrant": granted(lambda s, r, g: s.revoke_grant(key_id=r, grant_id=g)),
        "RotateKeyOnDemand": plain(lambda s, r: s.rotate_key_on_demand(key_id=r)),
        "ScheduleKeyDeletion": plain(lambda s, r: s.schedule_key_deletion(key_id=r)),
        "TagResource": plain(
            lambda s, r: s.tag_resource(key_id=r, tags=[{"TagKey": "t", "TagValue": "v"}])
        ),
        "UntagResource": plain(lambda s, r: s.untag_resource(key_id=r, tag_keys=["t"])),
        "UpdateKeyDescription": plain(
            lambda s, r: s.update_key_description(key_id=r, description="d")
        ),
        "UpdatePrimaryRegion": plain(
            lambda s, r: s.update_primary_region(key_id=r, primary_region="us-west-2"),
            multi_region=True,
        ),
    }


CASES = _cases()


def test_every_operation_that_refuses_an_alias_is_exercised() -> None:
    assert set(CASES) == KEY_ID_ONLY


@pytest.mark.parametrize("op", sorted(CASES))
def test_an_alias_is_refused_where_the_reference_wants_a_key(svc: KeyService, op: str) -> None:
    kid, call = CASES[op](svc)
    if op == "UpdatePrimaryRegion":
        svc.replicate_key(key_id=kid, replica_region="us-west-2")
    arn, name, alias_arn = World(svc).aliased(kid)
    before = svc.describe_key(key_id=arn)["KeyMetadata"]
    for ref in (name, alias_arn):
        with pytest.raises(E.InvalidArnException) as e:
            call(ref)
        assert str(e.value) == "Key Aliases are not supported for this operation."
    after = svc.describe_key(key_id=arn)["KeyMetadata"]
    assert after == before  # nothing changed
    assert svc.get_key_rotation_status(key_id=arn)["KeyRotationEnabled"] is False
    call(arn)  # the control: the same call with the key ARN is served


def test_the_cryptographic_operations_still_take_aliases(svc: KeyService) -> None:
    kid = new_key(svc)
    _, name, alias_arn = World(svc).aliased(kid)
    for ref in (name, alias_arn):
        blob = svc.encrypt(key_id=ref, plaintext=b"p")["CiphertextBlob"]
        assert svc.decrypt(ciphertext_blob=blob, key_id=ref)["Plaintext"] == b"p"
        assert svc.describe_key(key_id=ref)["KeyMetadata"]["KeyId"] == kid
    mac = new_key(svc, key_spec="HMAC_256", key_usage="GENERATE_VERIFY_MAC")
    _, mac_name, _ = World(svc).aliased(mac)
    tag = svc.generate_mac(key_id=mac_name, message=b"m", mac_algorithm="HMAC_SHA_256")["Mac"]
    assert svc.verify_mac(key_id=mac_name, message=b"m", mac=tag, mac_algorithm="HMAC_SHA_256")[
        "MacValid"
    ]
