"""The small per-object records (`Layout`, `Plan`, `PreparedObject`) as plain slotted classes.

They were frozen dataclasses; defining those cost about 2 ms each of the command line's
start-up, and constructing one per object twice a plain class's time. What callers relied on
is kept: value equality and hashing of the arithmetic records, and reprs that say what they
hold without any key material.
"""

from __future__ import annotations

import pytest

from envelope import objects
from envelope._plan import Plan, plan_pipeline
from envelope.hazmat.segments import Layout
from envelope.keycache import CachePolicy
from envelope.keyring import Keyring
from envelope.kms.memory import MemoryKms


def test_layout_is_a_value() -> None:
    a, b, c = Layout(100, 20), Layout(100, 20), Layout(100, 12)
    assert a == b and hash(a) == hash(b) and a != c
    assert {a, b, c} == {a, c}
    assert repr(a) == "Layout(header_len=100, seg_log2=20)"
    assert a.ciphertext_length(5) == 100 + 5 + 16 and a.plaintext_length(121) == 5
    with pytest.raises(AttributeError):
        a.other = 1  # type: ignore[attr-defined]  # (slots: no stray attributes)


def test_plan_is_a_value() -> None:
    kw = {"budget": 64 << 20, "segment_in": 1 << 20, "segment_out": (1 << 20) + 16,
          "max_segments_per_batch": 2, "workers": 2, "depth": 3}
    p, q = plan_pipeline(**kw), plan_pipeline(**kw)
    assert p is not None and p == q and hash(p) == hash(q)
    assert p != plan_pipeline(**{**kw, "workers": 1})
    assert repr(p).startswith("Plan(segments_per_batch=2, ")
    assert eval(repr(p), {"Plan": Plan}) == p  # the repr spells the whole value


def test_a_prepared_objects_repr_holds_no_key() -> None:
    kms = MemoryKms()
    kr = Keyring(kms, kms.create_key("r"), cache=CachePolicy())
    prepared = objects.new_object(kr, object_context={"k": "v"})
    text = repr(prepared)
    assert prepared.message_id.hex() in text and "<secret>" in text
    assert prepared.header.hex() not in text and prepared.bound_digest.hex() not in text
    assert prepared.keys.header_key.hex() not in text
