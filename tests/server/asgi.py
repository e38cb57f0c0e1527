"""A KMS request as boto3 sends it, handed to the ASGI application in this process: for tests
that need the application's own behaviour (what runs where, what every input gets) without a
server process."""

from __future__ import annotations

import json
from typing import Any

import botocore.auth
import botocore.awsrequest
import botocore.credentials


def signed_request(
    access: dict[str, Any], operation: str, body: dict[str, Any] | bytes
) -> tuple[dict[str, Any], bytes]:
    """An ASGI scope and body for `operation`, SigV4-signed with `access` (an AccessKey of
    CreateAccessKey: AccessKeyId, SecretAccessKey); `body` is JSON-encoded unless bytes."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = botocore.awsrequest.AWSRequest(
        method="POST",
        url="http://127.0.0.1:8080/",
        data=data,
        headers={
            "X-Amz-Target": f"TrentService.{operation}",
            "Content-Type": "application/x-amz-json-1.1",
        },
    )
    credentials = botocore.credentials.Credentials(access["AccessKeyId"], access["SecretAccessKey"])
    botocore.auth.SigV4Auth(credentials, "kms", "us-east-1").add_auth(request)
    headers = [(k.lower().encode(), str(v).encode()) for k, v in request.headers.items()]
    headers += [(b"host", b"127.0.0.1:8080"), (b"content-length", str(len(data)).encode())]
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 1),
    }
    return scope, data


async def answer(app: Any, request: tuple[dict[str, Any], bytes]) -> tuple[int, dict[str, Any]]:
    """The application's status and JSON answer to `request` (`signed_request`'s)."""
    scope, data = request
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": data, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(dict(message))

    await app(scope, receive, send)
    return int(sent[0]["status"]), json.loads(sent[1]["body"] or b"{}")
