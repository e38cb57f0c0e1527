"""The translation layer walked over botocore's whole KMS model (in process, no server)."""

from __future__ import annotations

import json
from pathlib import Path

import botocore
import pytest

from envelope.server.errors import WireError, status_for
from envelope.server.wire import UNSERVED_MEMBERS, WireModel
from envelope.service import KeyService

DOCS = Path(__file__).resolve().parents[2] / "docs" / "server.md"


@pytest.fixture(scope="module")
def wire() -> WireModel:
    return WireModel(KeyService)


def _refusal(wire: WireModel, op: str, body: dict[str, object]) -> WireError:
    with pytest.raises(WireError) as e:
        wire.parse(wire.operation(f"TrentService.{op}"), json.dumps(body).encode())
    return e.value


def test_every_operation_is_served_or_refused_as_documented(wire: WireModel) -> None:
    model_ops = set(wire.model.operation_names)
    assert set(wire.operations) == model_ops
    docs = DOCS.read_text()
    for name, op in wire.operations.items():
        if hasattr(KeyService, botocore.xform_name(name)):
            assert op.method == botocore.xform_name(name)
            continue
        assert op.method is None
        assert f"`{name}`" in docs, f"{name} is not served and docs/server.md does not say so"
        assert _refusal(wire, name, {}).code == "UnsupportedOperationException", name


def test_every_input_member_is_taken_or_has_a_documented_answer(wire: WireModel) -> None:
    docs = DOCS.read_text()
    for name, op in wire.operations.items():
        if op.method is None or op.input is None:
            continue
        for member in op.input.members:
            if member in op.keywords:
                continue
            assert member in UNSERVED_MEMBERS, f"{name}.{member} has no answer"
            assert f"`{member}`" in docs, f"{name}.{member} is not in docs/server.md"


def test_missing_required_members_are_named_in_aws_words(wire: WireModel) -> None:
    checked = 0
    for name, op in wire.operations.items():
        if op.method is None or op.input is None or not op.input.required:
            continue
        err = _refusal(wire, name, {})
        assert err.code == "ValidationException" and err.status == 400
        n = len(op.input.required)
        assert err.message.startswith(f"{n} validation error{'s' if n > 1 else ''} detected: "), (
            name
        )
        for member in op.input.required:
            camel = member[0].lower() + member[1:]
            assert (
                f"Value null at '{camel}' failed to satisfy constraint: Member must not be null"
            ) in err.message
        checked += 1
    assert checked > 35


def test_every_length_bound_of_a_top_level_string_is_enforced(wire: WireModel) -> None:
    checked = 0
    for name, op in wire.operations.items():
        if op.method is None or op.input is None:
            continue
        for member, node in op.input.members.items():
            if node.kind != "string" or node.max is None or node.enum:
                continue
            err = _refusal(wire, name, {member: "a" * (node.max + 1)})
            camel = member[0].lower() + member[1:]
            assert err.code == "ValidationException"
            assert (
                f"at '{camel}' failed to satisfy constraint: Member must have length less than "
                f"or equal to {node.max}"
            ) in err.message, (name, member)
            checked += 1
    assert checked > 50


def test_enums_and_integer_ranges(wire: WireModel) -> None:
    err = _refusal(wire, "CreateKey", {"KeyUsage": "DANCE", "KeySpec": "RSA_1"})
    assert "Value 'DANCE' at 'keyUsage' failed to satisfy constraint: Member must satisfy enum" in (
        err.message
    )
    assert err.message.startswith("2 validation errors detected: ")
    err = _refusal(wire, "ScheduleKeyDeletion", {"KeyId": "k", "PendingWindowInDays": 0})
    assert err.message == (
        "1 validation error detected: Value '0' at 'pendingWindowInDays' failed to satisfy "
        "constraint: Member must have value greater than or equal to 1"
    )
    err = _refusal(wire, "Encrypt", {"KeyId": "k", "Plaintext": "aGk=", "GrantTokens": [""] * 11})
    assert (
        "at 'grantTokens' failed to satisfy constraint: Member must have length less than or "
        "equal to 10"
    ) in err.message
    assert (
        "Member must satisfy constraint: [Member must have length greater than or equal to 1]"
        in (err.message)
    )


def test_nested_members_are_validated_with_their_paths(wire: WireModel) -> None:
    err = _refusal(wire, "TagResource", {"KeyId": "k", "Tags": [{"TagKey": "", "TagValue": "v"}]})
    assert err.message == (
        "1 validation error detected: Value '' at 'tags.1.member.tagKey' failed to satisfy "
        "constraint: Member must have length greater than or equal to 1"
    )


def test_unserved_members_with_neutral_values_are_accepted(wire: WireModel) -> None:
    op = wire.operation("TrentService.Encrypt")
    kwargs = wire.parse(op, b'{"KeyId": "k", "Plaintext": "aGk=", "DryRun": false}')
    assert kwargs == {"key_id": "k", "plaintext": b"hi"} or "dry_run" in kwargs
    op = wire.operation("TrentService.DescribeKey")
    assert wire.parse(op, b'{"KeyId": "k", "GrantTokens": ["t"]}')["key_id"] == "k"


def test_output_keeps_only_the_output_shape(wire: WireModel) -> None:
    op = wire.operation("TrentService.GenerateDataKey")
    body = json.loads(
        wire.render(
            op,
            {
                "KeyId": "k",
                "Plaintext": b"\x00\x01",
                "CiphertextBlob": b"\xff",
                "x_internal": "secret",
                "KeyMaterialId": None,
            },
        )
    )
    assert body == {"KeyId": "k", "Plaintext": "AAE=", "CiphertextBlob": "/w=="}


def test_json_nested_past_the_parsers_stack_is_a_serialization_error(wire: WireModel) -> None:
    """(It was a RecursionError, answered as an internal error with status 500.)"""
    op = wire.operation("TrentService.Encrypt")
    for body in (b"[" * 5000 + b"]" * 5000, b'{"a":' * 5000 + b"1" + b"}" * 5000):
        with pytest.raises(WireError) as info:
            wire.parse(op, body)
        assert info.value.code == "SerializationException"


def test_an_unpaired_surrogate_is_a_serialization_error(wire: WireModel) -> None:
    """``\\ud800`` alone decodes to a string no UTF-8 can hold (it was a 500 deep inside the
    call); a surrogate pair is an ordinary character."""
    op = wire.operation("TrentService.CreateKey")
    for body in (
        b'{"Description": "\\ud800"}',
        b'{"Tags": [{"TagKey": "\\udfff", "TagValue": ""}]}',
    ):
        with pytest.raises(WireError) as info:
            wire.parse(op, body)
        assert info.value.code == "SerializationException"
    parsed = wire.parse(op, b'{"Description": "\\ud83d\\ude00"}')
    assert parsed["description"] == "\U0001f600"


def test_status_codes() -> None:
    assert status_for("KMSInternalException") == 500
    assert status_for("KeyUnavailableException") == 500
    assert status_for("DependencyTimeoutException") == 503
    assert status_for("AccessDeniedException") == 400
    assert status_for("ThrottlingException") == 400
    assert status_for("NotFoundException") == 400


def test_an_operation_without_a_method_is_unsupported() -> None:
    """Every operation of today's model is served; one a later model adds before the KMS has a
    method for it is refused, before its body is read (a service class with no methods)."""
    bare = WireModel(type("Bare", (), {}))
    op = bare.operation("TrentService.GetKeyLastUsage")
    with pytest.raises(WireError) as info:
        bare.parse(op, b'{"KeyId": "k"}')
    assert info.value.code == "UnsupportedOperationException"
