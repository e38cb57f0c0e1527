"""Reused decisions (`AccessCache.decided`) never outlive what they were made from.

A decision that policies allowed is reused for the same caller, key and action while the
identity, the key policy and every condition value the evaluation read are unchanged. Each test
first gets a call allowed (so a decision is remembered), then changes one of those things and
shows that the next call is decided afresh: AWS evaluates every request on its own.
"""

from __future__ import annotations

import pytest

from envelope.service import KeyService
from envelope.service.errors import AccessDeniedException

from .access_helpers import A, attach, aws, doc, role, root_stmt, session, stmt
from .conftest import FakeClock, new_key


@pytest.fixture
def setup(svc: KeyService) -> tuple[str, str, str]:
    kid = new_key(svc)
    r = role(svc, "Job")
    attach(
        svc,
        r,
        stmt(
            Action="kms:GenerateDataKey",
            Resource="*",
            Condition={"StringEquals": {"kms:EncryptionContext:team": "blue"}},
        ),
    )
    return kid, r, session(r)


def gdk(svc: KeyService, kid: str, who: str, team: str) -> None:
    svc.generate_data_key(
        key_id=kid, key_spec="AES_256", encryption_context={"team": team}, principal=who
    )


def test_another_condition_value_is_decided_again(
    svc: KeyService, setup: tuple[str, str, str]
) -> None:
    kid, _, who = setup
    for _ in range(3):
        gdk(svc, kid, who, "blue")
    with pytest.raises(AccessDeniedException):
        gdk(svc, kid, who, "red")
    gdk(svc, kid, who, "blue")
    assert svc._access._decisions  # the allowed decision was remembered


def test_a_changed_identity_policy_is_decided_again(
    svc: KeyService, setup: tuple[str, str, str]
) -> None:
    kid, r, who = setup
    gdk(svc, kid, who, "blue")
    attach(svc, r, stmt(Action="kms:Encrypt", Resource="*"))  # replaces policy "p"
    with pytest.raises(AccessDeniedException):
        gdk(svc, kid, who, "blue")


def test_a_changed_key_policy_is_decided_again(
    svc: KeyService, setup: tuple[str, str, str]
) -> None:
    kid, _, who = setup
    gdk(svc, kid, who, "blue")
    deny = stmt("Deny", Principal=aws(f"arn:aws:iam::{A}:role/Job"), Action="kms:*")
    svc.put_key_policy(key_id=kid, policy_name="default", policy=doc(root_stmt(), deny))
    with pytest.raises(AccessDeniedException):
        gdk(svc, kid, who, "blue")


def test_a_time_condition_is_decided_again(svc: KeyService, clock: FakeClock) -> None:
    kid = new_key(svc)
    r = role(svc, "Night")
    until = "2027-01-15T12:00:00Z"  # after the fake clock's start (2027-01-15T08:00:00Z)
    attach(
        svc,
        r,
        stmt(
            Action="kms:GenerateDataKey",
            Resource="*",
            Condition={"DateLessThan": {"aws:CurrentTime": until}},
        ),
    )
    who = session(r)
    svc.generate_data_key(key_id=kid, key_spec="AES_256", principal=who)
    clock.advance(days=1)
    with pytest.raises(AccessDeniedException):
        svc.generate_data_key(key_id=kid, key_spec="AES_256", principal=who)
