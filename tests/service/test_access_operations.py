"""Every KMS and IAM operation of `KeyService` refuses an unauthorized caller (issue 10).

AWS rule: every KMS request is authorized before it does anything; a refused request raises
AccessDeniedException, changes nothing, and is logged (CloudTrail) as a denial. The operation
list is derived from `KeyService` itself, so an operation added later without a case here fails
`test_every_operation_has_a_case`.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any

import pytest

from envelope.pkcs11 import TokenConfig
from envelope.service import KeyService
from envelope.service.errors import AccessDeniedException

from ..softhsm import make_token
from .access_helpers import (
    ROOT_A,
    ROOT_B,
    A,
    B,
    assert_denied,
    attach,
    aws,
    doc,
    root_stmt,
    stmt,
    user,
)
from .conftest import new_key
from .test_rotation_import_mrk import wrap

#: The number of operations today; the walk must never find fewer.
MIN_OPERATIONS = 59


def _calls_run(fn: Any, seen: set[str]) -> bool:
    """Does `fn` (or a private helper it calls on self) run a call through `self._run`?"""
    src = inspect.getsource(fn)
    if "self._run(" in src:
        return True
    for helper in re.findall(r"self\.(_\w+)\(", src):
        if helper in seen:
            continue
        seen.add(helper)
        h = getattr(KeyService, helper, None)
        if inspect.isfunction(h) and _calls_run(h, seen):
            return True
    return False


def operations() -> list[str]:
    """Public KeyService methods that are AWS KMS or IAM operations (they go through `_run`)."""
    return sorted(
        name
        for name, fn in inspect.getmembers(KeyService, inspect.isfunction)
        if not name.startswith("_") and _calls_run(fn, set())
    )


class World:
    """The resources the operations act on, all in account A, made by A's root on demand."""

    def __init__(self, svc: KeyService, tmp: Path) -> None:
        self.svc = svc
        self.tmp = tmp  # the test's own folder (a SoftHSM2 token goes there), removed by pytest

    def arn(self, kid: str) -> str:
        return self.svc.arn(kid)

    @cached_property
    def sym(self) -> str:
        kid = new_key(self.svc)
        self.svc.create_alias(alias_name="alias/k", target_key_id=kid)
        self.svc.tag_resource(key_id=kid, tags=[{"TagKey": "t", "TagValue": "v"}])
        return self.arn(kid)

    @cached_property
    def sym2(self) -> str:
        return self.arn(new_key(self.svc))

    @cached_property
    def disabled(self) -> str:
        kid = new_key(self.svc)
        self.svc.disable_key(key_id=kid)
        return self.arn(kid)

    @cached_property
    def pending(self) -> str:
        kid = new_key(self.svc)
        self.svc.schedule_key_deletion(key_id=kid, pending_window_in_days=7)
        return self.arn(kid)

    @cached_property
    def blob(self) -> bytes:
        return bytes(self.svc.encrypt(key_id=self.sym, plaintext=b"secret")["CiphertextBlob"])

    @cached_property
    def sign(self) -> str:
        return self.arn(new_key(self.svc, key_spec="ECC_NIST_P256", key_usage="SIGN_VERIFY"))

    @cached_property
    def signature(self) -> bytes:
        out = self.svc.sign(key_id=self.sign, message=b"m", signing_algorithm="ECDSA_SHA_256")
        return bytes(out["Signature"])

    @cached_property
    def agree(self) -> str:
        return self.arn(new_key(self.svc, key_spec="ECC_NIST_P256", key_usage="KEY_AGREEMENT"))

    @cached_property
    def kem(self) -> str:
        return self.arn(
            new_key(self.svc, key_spec="ML_KEM_768", key_usage="ENCAPSULATE_DECAPSULATE")
        )

    @cached_property
    def kem_ciphertext(self) -> bytes:
        out = self.svc.encapsulate(key_id=self.kem, encapsulation_algorithm="ML_KEM")
        return bytes(out["SharedSecretCiphertextBlob"])

    @cached_property
    def hmac(self) -> str:
        return self.arn(new_key(self.svc, key_spec="HMAC_256", key_usage="GENERATE_VERIFY_MAC"))

    @cached_property
    def mac(self) -> bytes:
        out = self.svc.generate_mac(key_id=self.hmac, message=b"m", mac_algorithm="HMAC_SHA_256")
        return bytes(out["Mac"])

    @cached_property
    def external(self) -> str:
        return self.arn(new_key(self.svc, origin="EXTERNAL"))

    @cached_property
    def import_args(self) -> dict[str, Any]:
        params = self.svc.get_parameters_for_import(
            key_id=self.external,
            wrapping_algorithm="RSAES_OAEP_SHA_256",
            wrapping_key_spec="RSA_2048",
        )
        return {
            "key_id": self.external,
            "import_token": params["ImportToken"],
            "encrypted_key_material": wrap(params, bytes(range(32)), "RSAES_OAEP_SHA_256"),
            "expiration_model": "KEY_MATERIAL_DOES_NOT_EXPIRE",
        }

    @cached_property
    def imported(self) -> str:
        kid = self.arn(new_key(self.svc, origin="EXTERNAL"))
        params = self.svc.get_parameters_for_import(
            key_id=kid, wrapping_algorithm="RSAES_OAEP_SHA_256", wrapping_key_spec="RSA_2048"
        )
        self.svc.import_key_material(
            key_id=kid,
            import_token=params["ImportToken"],
            encrypted_key_material=wrap(params, bytes(32), "RSAES_OAEP_SHA_256"),
            expiration_model="KEY_MATERIAL_DOES_NOT_EXPIRE",
        )
        return kid

    @cached_property
    def mrk(self) -> str:
        return self.arn(new_key(self.svc, multi_region=True))

    @cached_property
    def mrk_replicated(self) -> str:
        kid = self.arn(new_key(self.svc, multi_region=True))
        self.svc.replicate_key(key_id=kid, replica_region="eu-west-1")
        return kid

    @cached_property
    def grantee(self) -> str:
        return user(self.svc, "grantee")

    @cached_property
    def grant_id(self) -> str:
        out = self.svc.create_grant(
            key_id=self.sym,
            grantee_principal=self.grantee,
            retiring_principal=self.grantee,
            operations=["Decrypt"],
        )
        return str(out["GrantId"])

    @cached_property
    def target(self) -> str:
        """A user that the IAM operations act on, with one identity policy named p."""
        arn = user(self.svc, "target")
        attach(self.svc, arn, stmt(Action="kms:DescribeKey"))
        return arn

    @cached_property
    def access_key(self) -> str:
        """An access key of `target` (IAM's access-key operations act on it)."""
        out = self.svc.create_access_key(user_arn=self.target)
        return str(out["AccessKey"]["AccessKeyId"])

    @cached_property
    def role(self) -> str:
        return str(self.svc.create_role(role_name="assumable")["Role"]["Arn"])

    # custom key stores (issue 13): a real SoftHSM2 token, registered as an HSM cluster

    @cached_property
    def token(self) -> TokenConfig:
        return make_token(self.tmp, label="access-walk", pin="12345678")

    @cached_property
    def cluster(self) -> str:
        out = self.svc.register_hsm_cluster(
            module=self.token.module, token_label=self.token.token_label
        )
        return str(out["CloudHsmClusterId"])

    @cached_property
    def store_args(self) -> dict[str, Any]:
        return {
            "custom_key_store_name": f"walk-{len(self.svc.describe_hsm_clusters()['Clusters'])}",
            "cloud_hsm_cluster_id": self.cluster,
            "key_store_password": self.token.pin,
            "trust_anchor_certificate": "anchor",
        }

    @cached_property
    def store(self) -> str:
        return str(self.svc.create_custom_key_store(**self.store_args)["CustomKeyStoreId"])

    @cached_property
    def connected_store(self) -> str:
        self.svc.connect_custom_key_store(custom_key_store_id=self.store)
        return self.store


Case = Callable[[World], dict[str, Any]]

#: For each operation: its valid arguments (building what they name in the world first).
CASES: dict[str, Case] = {
    "register_hsm_cluster": lambda w: {
        "module": w.token.module,
        "token_label": w.token.token_label,
    },
    "describe_hsm_clusters": lambda w: {},
    "deregister_hsm_cluster": lambda w: {"cloud_hsm_cluster_id": w.cluster},
    "create_custom_key_store": lambda w: w.store_args,
    "describe_custom_key_stores": lambda w: {"custom_key_store_id": w.store},
    "update_custom_key_store": lambda w: {
        "custom_key_store_id": w.store,
        "new_custom_key_store_name": "renamed",
    },
    "connect_custom_key_store": lambda w: {"custom_key_store_id": w.store},
    "disconnect_custom_key_store": lambda w: {"custom_key_store_id": w.connected_store},
    "delete_custom_key_store": lambda w: {"custom_key_store_id": w.store},
    "cancel_key_deletion": lambda w: {"key_id": w.pending},
    "assume_role": lambda w: {"role_arn": w.role, "role_session_name": "s1"},
    "create_access_key": lambda w: {"user_arn": w.target},
    "create_alias": lambda w: {"alias_name": "alias/new", "target_key_id": w.sym},
    "create_grant": lambda w: {
        "key_id": w.sym,
        "grantee_principal": w.grantee,
        "operations": ["Decrypt"],
    },
    "create_key": lambda w: {"description": "new"},
    "create_role": lambda w: {"role_name": "newrole"},
    "create_user": lambda w: {"user_name": "newuser"},
    "decrypt": lambda w: {"ciphertext_blob": w.blob},
    "delete_access_key": lambda w: {"access_key_id": w.access_key, "user_arn": w.target},
    "delete_alias": lambda w: {"alias_name": "alias/k", "_": w.sym},
    "delete_imported_key_material": lambda w: {"key_id": w.imported},
    "delete_principal": lambda w: {"arn": w.target},
    "delete_principal_policy": lambda w: {"arn": w.target, "policy_name": "p"},
    "derive_shared_secret": lambda w: {
        "key_id": w.agree,
        "key_agreement_algorithm": "ECDH",
        "public_key": w.svc.get_public_key(key_id=w.sign)["PublicKey"],
    },
    "decapsulate": lambda w: {
        "key_id": w.kem,
        "shared_secret_ciphertext_blob": w.kem_ciphertext,
        "encapsulation_algorithm": "ML_KEM",
    },
    "describe_key": lambda w: {"key_id": w.sym},
    "disable_key": lambda w: {"key_id": w.sym},
    "disable_key_rotation": lambda w: {"key_id": w.sym},
    "enable_key": lambda w: {"key_id": w.disabled},
    "enable_key_rotation": lambda w: {"key_id": w.sym},
    "encapsulate": lambda w: {"key_id": w.kem, "encapsulation_algorithm": "ML_KEM"},
    "encrypt": lambda w: {"key_id": w.sym, "plaintext": b"x"},
    "generate_data_key": lambda w: {"key_id": w.sym, "key_spec": "AES_256"},
    "generate_data_key_without_plaintext": lambda w: {"key_id": w.sym, "key_spec": "AES_256"},
    "generate_data_key_pair": lambda w: {"key_id": w.sym, "key_pair_spec": "ECC_NIST_P256"},
    "generate_data_key_pair_without_plaintext": lambda w: {
        "key_id": w.sym,
        "key_pair_spec": "ECC_NIST_P256",
    },
    "generate_mac": lambda w: {"key_id": w.hmac, "message": b"m", "mac_algorithm": "HMAC_SHA_256"},
    "generate_random": lambda w: {"number_of_bytes": 16},
    "get_key_policy": lambda w: {"key_id": w.sym},
    "get_key_last_usage": lambda w: {"key_id": w.sym},
    "get_key_rotation_status": lambda w: {"key_id": w.sym},
    "get_parameters_for_import": lambda w: {
        "key_id": w.external,
        "wrapping_algorithm": "RSAES_OAEP_SHA_256",
        "wrapping_key_spec": "RSA_2048",
    },
    "get_principal": lambda w: {"arn": w.target},
    "get_principal_policy": lambda w: {"arn": w.target, "policy_name": "p"},
    "get_public_key": lambda w: {"key_id": w.sign},
    "import_key_material": lambda w: dict(w.import_args),
    "list_accounts": lambda w: {},
    "list_aliases": lambda w: {"_": w.sym},
    "list_grants": lambda w: {"key_id": w.sym, "_": w.grant_id},
    "list_key_policies": lambda w: {"key_id": w.sym},
    "list_key_rotations": lambda w: {"key_id": w.sym},
    "list_keys": lambda w: {"_": w.sym},
    "list_principal_policies": lambda w: {"arn": w.target},
    "list_principals": lambda w: {"_": w.target},
    "list_resource_tags": lambda w: {"key_id": w.sym},
    "list_retirable_grants": lambda w: {"retiring_principal": w.grantee, "_": w.grant_id},
    "put_key_policy": lambda w: {
        "key_id": w.sym,
        "policy": doc(root_stmt(), stmt(Sid="x", Principal="*", Action="kms:Encrypt")),
    },
    "put_principal_policy": lambda w: {
        "arn": w.target,
        "policy_name": "q",
        "policy_document": doc(stmt()),
    },
    "re_encrypt": lambda w: {"ciphertext_blob": w.blob, "destination_key_id": w.sym2},
    "replicate_key": lambda w: {"key_id": w.mrk, "replica_region": "eu-west-1"},
    "revoke_grant": lambda w: {"key_id": w.sym, "grant_id": w.grant_id},
    "rotate_key_on_demand": lambda w: {"key_id": w.sym},
    "run_due_tasks": lambda w: {},
    "schedule_key_deletion": lambda w: {"key_id": w.sym, "pending_window_in_days": 7},
    "sign": lambda w: {"key_id": w.sign, "message": b"m", "signing_algorithm": "ECDSA_SHA_256"},
    "tag_principal": lambda w: {"arn": w.target, "tags": {"k": "v"}},
    "tag_resource": lambda w: {"key_id": w.sym, "tags": [{"TagKey": "u", "TagValue": "w"}]},
    "untag_resource": lambda w: {"key_id": w.sym, "tag_keys": ["t"]},
    "list_access_keys": lambda w: {"user_arn": w.target},
    "update_access_key": lambda w: {
        "access_key_id": w.access_key,
        "user_arn": w.target,
        "status": "Inactive",
    },
    "update_assume_role_policy": lambda w: {
        "role_arn": w.role,
        "policy_document": doc(
            {"Effect": "Allow", "Principal": aws(ROOT_A), "Action": "sts:AssumeRole"}
        ),
    },
    "update_alias": lambda w: {"alias_name": "alias/k", "target_key_id": w.sym2, "_": w.sym},
    "update_key_description": lambda w: {"key_id": w.sym, "description": "d"},
    "update_primary_region": lambda w: {
        "key_id": w.mrk_replicated,
        "primary_region": "eu-west-1",
    },
    "verify": lambda w: {
        "key_id": w.sign,
        "message": b"m",
        "signature": w.signature,
        "signing_algorithm": "ECDSA_SHA_256",
    },
    "verify_mac": lambda w: {
        "key_id": w.hmac,
        "message": b"m",
        "mac_algorithm": "HMAC_SHA_256",
        "mac": w.mac,
    },
}


def caller_of(w: World, op: str) -> Callable[[str], Any]:
    """Build what `op` needs (before anything is measured), then a function calling it as a
    given principal. A ``_`` member only forces a resource to exist; it is not an argument."""
    kwargs = CASES[op](w)
    kwargs.pop("_", None)
    method = getattr(w.svc, op)
    return lambda p: method(**kwargs, principal=p)


#: Authorized by the grant's own rules, not by policies (tested in test_access_grants.py).
BY_GRANT_RULES = frozenset({"retire_grant"})

#: Account-level operations: another account's root is allowed them in ITS OWN account, so it is
#: not an unauthorized caller for them (a user of that account with no policy still is).
ACCOUNT_LEVEL = frozenset(
    {
        "create_key",
        "create_user",
        "create_role",
        "create_alias",
        "delete_alias",
        "update_alias",
        "generate_random",
        "list_keys",
        "list_aliases",
        "list_accounts",
        "list_principals",
        "list_retirable_grants",
        "run_due_tasks",
        # custom key stores: governed by IAM policies in the caller's own account (AWS), and
        # the HSM cluster registry by the store's administrator
        "register_hsm_cluster",
        "describe_hsm_clusters",
        "deregister_hsm_cluster",
        "create_custom_key_store",
        "describe_custom_key_stores",
        "update_custom_key_store",
        "connect_custom_key_store",
        "disconnect_custom_key_store",
        "delete_custom_key_store",
    }
)


#: IAM operations on a named user or role of account A.
IAM_ON_PRINCIPAL = frozenset(
    {
        "delete_principal",
        "delete_principal_policy",
        "get_principal",
        "get_principal_policy",
        "list_principal_policies",
        "put_principal_policy",
        "tag_principal",
        "create_access_key",
        "list_access_keys",
        "update_access_key",
        "delete_access_key",
        "update_assume_role_policy",
    }
)


def test_every_operation_has_a_case() -> None:
    """AWS rule: every operation is authorized; none may escape this walk."""
    ops = operations()
    assert len(ops) >= MIN_OPERATIONS, ops
    assert set(ops) == set(CASES) | BY_GRANT_RULES


@pytest.mark.parametrize("op", sorted(CASES))
def test_operation_refuses_unauthorized_callers(
    svc: KeyService, op: str, tmp_path: Path
) -> None:
    """AWS rule: a caller the key policy and IAM policies do not allow gets AccessDenied, the
    request changes nothing and is logged as a denial: a same-account IAM user with no identity
    policy (the default key policy delegates to IAM, which says nothing), a user of another
    account with no policy, and another account's root (not named by the key policy)."""
    w = World(svc, tmp_path)
    call = caller_of(w, op)
    nobody = user(svc, "nobody")
    stranger = user(svc, "stranger", account=B)
    assert_denied(svc, lambda: call(nobody), nobody, A)
    assert_denied(svc, lambda: call(stranger), stranger, B)
    if op not in ACCOUNT_LEVEL:
        assert_denied(svc, lambda: call(ROOT_B), ROOT_B, B)
    # the arguments are valid: the owning account's root is allowed the very same call
    call(ROOT_A)


@pytest.mark.parametrize("op", sorted(IAM_ON_PRINCIPAL))
def test_another_accounts_root_cannot_manage_principals(
    svc: KeyService, op: str, tmp_path: Path
) -> None:
    """AWS rule: IAM is per account; the root of one account has no power over another
    account's users and roles (their policies, tags or existence)."""
    call = caller_of(World(svc, tmp_path), op)
    assert_denied(svc, lambda: call(ROOT_B), ROOT_B, B)


def test_iam_allow_star_does_not_reach_another_accounts_principals(
    svc: KeyService, tmp_path: Path
) -> None:
    """AWS rule: an identity policy allowing iam:* on * covers the caller's own account only;
    it cannot attach a policy to another account's user (privilege escalation)."""
    w = World(svc, tmp_path)
    admin_b = user(svc, "admin", account=B)
    attach(svc, admin_b, stmt(Action="iam:*"))
    call = caller_of(w, "put_principal_policy")
    assert_denied(svc, lambda: call(admin_b), admin_b, B)


def test_denied_call_message_names_action_and_resource(svc: KeyService) -> None:
    """AWS rule: the AccessDenied message says who, which kms: action, on which resource."""
    kid = svc.arn(new_key(svc))
    nobody = user(svc, "nobody")
    blob = svc.encrypt(key_id=kid, plaintext=b"x")["CiphertextBlob"]
    err = assert_denied(svc, lambda: svc.decrypt(ciphertext_blob=blob, principal=nobody), nobody, A)
    assert isinstance(err, AccessDeniedException)
    assert f"kms:Decrypt on resource: {kid}" in str(err)
