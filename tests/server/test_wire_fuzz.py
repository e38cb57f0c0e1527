"""Every operation of the model, sent malformed bodies through the application as a client
would (SigV4-signed, in process): each answer is an AWS error with a 4xx status, or a success;
never a 5xx. Bodies are built from the operation's own input shape with members replaced by
values of the wrong type, wrong length, unknown enums, deep nesting and broken JSON; the seed
is fixed, so a failure reproduces."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.session
import pytest

from envelope.server.app import KmsApp
from envelope.server.run import authenticator_for
from envelope.service import KeyService, open_service

from .asgi import answer, signed_request

PER_OPERATION = 25
BROKEN = (
    b"",
    b"[]",
    b"null",
    b"{",
    b'"x"',
    b"[" * 5000 + b"]" * 5000,
    b'{"a":' * 3000 + b"1" + b"}" * 3000,
    b'{"KeyId": "\\ud800"}',
    b"\xff\xfe",
)


class Fuzzer:
    def __init__(self, rng: random.Random, key_arn: str) -> None:
        self.rng = rng
        self.key_arn = key_arn

    def junk(self, depth: int = 0) -> Any:
        r = self.rng
        choices: list[Any] = [
            None,
            True,
            -1,
            2**63,
            3.5,
            "",
            "alias/x",
            self.key_arn,
            "A" * 5000,
            "====",
            "é\x00/:",
        ]
        if depth < 3:
            choices += [[self.junk(depth + 1)], {"k": self.junk(depth + 1)}]
        return r.choice(choices)

    def value(self, shape: Any, depth: int = 0) -> Any:
        r = self.rng
        if r.random() < 0.3 or depth > 4:
            return self.junk(depth)
        kind = shape.type_name
        if kind == "structure":
            return {
                n: self.value(m, depth + 1) for n, m in shape.members.items() if r.random() < 0.7
            }
        if kind == "list":
            return [self.value(shape.member, depth + 1) for _ in range(r.randrange(3))]
        if kind == "map":
            return {str(self.junk()): self.value(shape.value, depth + 1) for _ in range(2)}
        if kind == "string":
            if shape.enum:
                return r.choice([*shape.enum, "BOGUS"])
            return r.choice([self.key_arn, "alias/x", "abc", "", "x" * r.randrange(1, 3000)])
        if kind == "integer":
            return r.choice([0, 1, 30, 1024, -3, 10**12])
        if kind == "boolean":
            return r.choice([True, False, "true"])
        if kind == "blob":
            return r.choice(["dGVzdA==", "", "!!!", "A" * 9000])
        return self.junk(depth)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KeyService, str, Any]]:
    home: Path = tmp_path_factory.mktemp("fuzz") / "home"
    svc = open_service(home)
    access = dict(svc.create_access_key()["AccessKey"])
    arn = str(svc.create_key()["KeyMetadata"]["Arn"])
    yield svc, arn, access
    svc.close()


def _send(app: KmsApp, access: dict[str, Any], op: str, data: bytes) -> tuple[int, dict[str, Any]]:
    return asyncio.run(answer(app, signed_request(access, op, data)))


MODEL = botocore.session.get_session().get_service_model("kms")


@pytest.mark.parametrize("op", MODEL.operation_names)
def test_malformed_requests_get_client_errors(world: tuple[KeyService, str, Any], op: str) -> None:
    svc, arn, access = world
    app = KmsApp(svc, authenticator_for(svc), close_service=False)
    rng = random.Random(f"{op}-1")
    fuzz = Fuzzer(rng, arn)
    shape = MODEL.operation_model(op).input_shape
    for i in range(PER_OPERATION):
        if i < len(BROKEN) and rng.random() < 0.5:
            data = BROKEN[i]
        else:
            body = fuzz.value(shape) if shape is not None else {}
            data = json.dumps(body).encode()
        status, doc = _send(app, access, op, data)
        assert status < 500, (op, data[:200], doc)
        if status >= 400:
            assert isinstance(doc.get("__type"), str) and doc["__type"], (op, doc)
