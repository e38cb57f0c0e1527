"""Random lifecycle sequences against a small, independent model of the AWS key-state rules.

The model knows, for each key, its state, its deletion date and the ciphertexts made under it;
it predicts which exception (if any) every call must raise. After each step every key the model
knows is described and compared, and at the end the audit chain must verify with exactly one
record per call.

Calls go at random through two services, each over its own connection to the same file (as two
processes would), so a stale cache in one of them would show up as a disagreement.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
)

from envelope.service import KeyService, KmsServiceError

from .conftest import DAY, FakeClock, open_store

ENABLED, DISABLED, PENDING = "Enabled", "Disabled", "PendingDeletion"
IMPORT = "PendingImport"  # an EXTERNAL key whose material was never imported

# the model: which exception each group of operations raises in each state (None: allowed)
RULES: dict[str, dict[str, str | None]] = {
    "crypto": {
        ENABLED: None,
        DISABLED: "DisabledException",
        PENDING: "KMSInvalidStateException",
        IMPORT: "KMSInvalidStateException",
    },
    "enable": {
        ENABLED: None,
        DISABLED: None,
        PENDING: "KMSInvalidStateException",
        IMPORT: "KMSInvalidStateException",
    },
    "rotation": {
        ENABLED: None,
        DISABLED: "DisabledException",
        PENDING: "KMSInvalidStateException",
        IMPORT: "KMSInvalidStateException",
    },
    "manage": {ENABLED: None, DISABLED: None, PENDING: "KMSInvalidStateException", IMPORT: None},
    # the key-state table's CreateGrant row: refused on a Disabled key and one pending import
    "grant": {
        ENABLED: None,
        DISABLED: "DisabledException",
        PENDING: "KMSInvalidStateException",
        IMPORT: "KMSInvalidStateException",
    },
    "schedule": {ENABLED: None, DISABLED: None, PENDING: "KMSInvalidStateException", IMPORT: None},
    "cancel": {
        ENABLED: "KMSInvalidStateException",
        DISABLED: "KMSInvalidStateException",
        PENDING: None,
        IMPORT: "KMSInvalidStateException",
    },
}


@dataclass
class ModelKey:
    state: str = ENABLED
    deletion_date: float | None = None
    ciphertexts: list[tuple[bytes, dict[str, str], bytes]] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    external: bool = False


class Lifecycle(RuleBasedStateMachine):
    keys = Bundle("keys")

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="kms-sm-"))
        self.clock = FakeClock()
        home = self.dir / "home"  # inside: the audit digests go beside the home, not beside dir
        self.services = [
            KeyService(open_store(home), clock=self.clock, owns_store=True) for _ in range(2)
        ]
        self.svc = self.services[0]
        self.model: dict[str, ModelKey] = {}
        self.deleted: set[str] = set()
        self.calls = 0

    def teardown(self) -> None:
        try:
            report = self.svc.verify_audit_log()
            assert report.ok, report.problem
            assert report.records == self.calls
        finally:
            for svc in self.services:
                svc.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- helpers -------------------------------------------------------------------------

    def _expire(self) -> None:
        for kid, k in list(self.model.items()):
            if k.state == PENDING and k.deletion_date is not None:
                if k.deletion_date <= self.clock.now:
                    del self.model[kid]
                    self.deleted.add(kid)

    def expect(self, kid: str, group: str) -> str | None:
        self._expire()
        if kid not in self.model:
            return "NotFoundException"
        if group == "automatic rotation" and self.model[kid].external:
            # what the key is before its state (AWS's key-state table: "origin is EXTERNAL"
            # for a key pending import too): an imported key has no automatic rotation
            return "UnsupportedOperationException"
        return RULES["rotation" if group == "automatic rotation" else group][
            self.model[kid].state
        ]

    def call(self, expected: str | None, fn, **kwargs):  # type: ignore[no-untyped-def]
        self.calls += 1
        try:
            out = fn(**kwargs)
        except KmsServiceError as e:
            assert e.code == expected, f"{fn.__name__}: got {e.code}, model says {expected}"
            return None
        assert expected is None, f"{fn.__name__} succeeded, model says {expected}"
        return out

    # -- rules ---------------------------------------------------------------------------

    @rule(target=keys)
    def create(self) -> str:
        out = self.call(None, self.svc.create_key, description="sm")
        kid = str(out["KeyMetadata"]["KeyId"])
        self.model[kid] = ModelKey()
        return kid

    @rule(target=keys)
    def create_external(self) -> str:
        out = self.call(None, self.svc.create_key, origin="EXTERNAL")
        kid = str(out["KeyMetadata"]["KeyId"])
        self.model[kid] = ModelKey(state=IMPORT, external=True)
        return kid

    @rule(kid=keys)
    def enable(self, kid: str) -> None:
        exp = self.expect(kid, "enable")
        if self.call(exp, self.svc.enable_key, key_id=kid) is not None:
            self.model[kid].state = ENABLED

    @rule(kid=keys)
    def disable(self, kid: str) -> None:
        exp = self.expect(kid, "enable")
        if self.call(exp, self.svc.disable_key, key_id=kid) is not None:
            self.model[kid].state = DISABLED

    @rule(kid=keys, days=st.integers(5, 32))
    def schedule(self, kid: str, days: int) -> None:
        exp = "ValidationException" if not 7 <= days <= 30 else self.expect(kid, "schedule")
        out = self.call(
            exp, self.svc.schedule_key_deletion, key_id=kid, pending_window_in_days=days
        )
        if out is not None:
            self.model[kid].state = PENDING
            self.model[kid].deletion_date = self.clock.now + days * DAY
            assert out["DeletionDate"] == self.model[kid].deletion_date

    @rule(kid=keys)
    def cancel(self, kid: str) -> None:
        exp = self.expect(kid, "cancel")
        if self.call(exp, self.svc.cancel_key_deletion, key_id=kid) is not None:
            # a key with no material goes back to PendingImport, any other to Disabled
            self.model[kid].state = IMPORT if self.model[kid].external else DISABLED
            self.model[kid].deletion_date = None

    @rule(kid=keys, period=st.sampled_from([None, 89, 90, 365, 2560, 2561]))
    def enable_rotation(self, kid: str, period: int | None) -> None:
        bad = period is not None and not 90 <= period <= 2560
        exp = "ValidationException" if bad else self.expect(kid, "automatic rotation")
        self.call(exp, self.svc.enable_key_rotation, key_id=kid, rotation_period_in_days=period)

    @rule(kid=keys)
    def grant(self, kid: str) -> None:
        self.call(
            self.expect(kid, "grant"),
            self.svc.create_grant,
            key_id=kid,
            grantee_principal="arn:aws:iam::000000000000:role/Reader",
            operations=["Decrypt"],
        )

    @rule(kid=keys)
    def disable_rotation(self, kid: str) -> None:
        self.call(
            self.expect(kid, "automatic rotation"), self.svc.disable_key_rotation, key_id=kid
        )

    @rule(kid=keys)
    def rotate_now(self, kid: str) -> None:
        self.call(self.expect(kid, "rotation"), self.svc.rotate_key_on_demand, key_id=kid)

    @rule(kid=keys, data=st.binary(min_size=1, max_size=64), tag=st.sampled_from(["a", "b"]))
    def encrypt(self, kid: str, data: bytes, tag: str) -> None:
        ctx = {"purpose": tag}
        out = self.call(
            self.expect(kid, "crypto"),
            self.svc.encrypt,
            key_id=kid,
            plaintext=data,
            encryption_context=ctx,
        )
        if out is not None:
            self.model[kid].ciphertexts.append((out["CiphertextBlob"], ctx, data))

    @rule(kid=keys)
    def decrypt_all(self, kid: str) -> None:
        exp = self.expect(kid, "crypto")
        for blob, ctx, data in self.model[kid].ciphertexts if kid in self.model else []:
            out = self.call(exp, self.svc.decrypt, ciphertext_blob=blob, encryption_context=ctx)
            if out is not None:
                assert out["Plaintext"] == data
            wrong = {"purpose": "other"}
            self.call(
                exp or "InvalidCiphertextException",
                self.svc.decrypt,
                ciphertext_blob=blob,
                encryption_context=wrong,
            )

    @rule(kid=keys)
    def data_key(self, kid: str) -> None:
        out = self.call(
            self.expect(kid, "crypto"), self.svc.generate_data_key, key_id=kid, key_spec="AES_256"
        )
        if out is not None:
            assert len(out["Plaintext"]) == 32

    @rule(kid=keys, text=st.text(max_size=20))
    def describe_update(self, kid: str, text: str) -> None:
        self.call(
            self.expect(kid, "manage"),
            self.svc.update_key_description,
            key_id=kid,
            description=text,
        )

    @rule(kid=keys, k=st.sampled_from(["team", "env", "aws:no"]), v=st.sampled_from(["x", "y"]))
    def tag(self, kid: str, k: str, v: str) -> None:
        # the key's state is checked before the tag itself
        exp = self.expect(kid, "manage") or ("TagException" if k.startswith("aws:") else None)
        out = self.call(exp, self.svc.tag_resource, key_id=kid, tags=[{"TagKey": k, "TagValue": v}])
        if out is not None:
            self.model[kid].tags[k] = v

    @rule(kid=keys, k=st.sampled_from(["team", "env"]), bad=st.booleans())
    def untag(self, kid: str, k: str, bad: bool) -> None:
        # a refused untag (one bad key in the list) must leave every tag in place
        keys = [k, ""] if bad else [k]
        exp = self.expect(kid, "manage") or ("TagException" if bad else None)
        if self.call(exp, self.svc.untag_resource, key_id=kid, tag_keys=keys) is not None:
            self.model[kid].tags.pop(k, None)

    @rule(which=st.integers(0, 1))
    def switch(self, which: int) -> None:
        """Send the next calls through the other service (another connection and cache)."""
        self.svc = self.services[which]

    @rule(days=st.sampled_from([0.5, 3, 7, 10, 31, 100, 400]))
    def advance(self, days: float) -> None:
        self.clock.advance(days=days)

    @rule(kid=consumes(keys))
    def forget(self, kid: str) -> None:
        """Drop a key from the bundle (keeps the draw biased toward recent keys)."""

    @invariant()
    def service_agrees(self) -> None:
        self._expire()
        for kid, k in self.model.items():
            out = self.call(None, self.svc.describe_key, key_id=kid)
            meta = out["KeyMetadata"]
            assert meta["KeyState"] == k.state, (kid, meta["KeyState"], k.state)
            assert meta["Enabled"] == (k.state == ENABLED)
            if k.state == PENDING:
                assert meta["DeletionDate"] == k.deletion_date
            tags = self.call(None, self.svc.list_resource_tags, key_id=kid)["Tags"]
            assert {t["TagKey"]: t["TagValue"] for t in tags} == k.tags
        for kid in self.deleted:
            self.call("NotFoundException", self.svc.describe_key, key_id=kid)
        listed = self.call(None, self.svc.list_keys, limit=1000)
        assert {k["KeyId"] for k in listed["Keys"]} == set(self.model)


Lifecycle.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestLifecycle = Lifecycle.TestCase
