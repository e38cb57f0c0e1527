"""Clients no one here wrote, against `envelope serve`: the AWS CLI (`aws`, from the awscli
package, run as a subprocess) and the AWS Encryption SDK for Python.

The CLI's credentials come from `envelope iam create-access-key`, run as a person would while
the server is up; its configuration files are empty temporary files, so nothing of the machine's
own AWS setup takes part. Every call is checked in the server's audit log too: a CLI that
reached some other endpoint could not pass.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import botocore.session
import pytest

from .conftest import REGION, REPO, Server, start_server

pytestmark = pytest.mark.slow  # each `aws` run starts a Python interpreter: about 1 s

AWS = str(Path(sys.executable).with_name("aws"))
POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": [
                    "kms:CreateKey",
                    "kms:ListKeys",
                    "kms:DescribeKey",
                    "kms:Encrypt",
                    "kms:Decrypt",
                    "kms:GenerateDataKey",
                ],
                "Resource": "*",
            }
        ],
    }
)


def _clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENVELOPE_", "AWS_"))}
    env["ENVELOPE_HOME"] = str(home)
    env["PYTHONPATH"] = str(REPO)
    return env


def envelope_cli(home: Path, *args: str) -> Any:
    """`envelope ARGS --output json` in a subprocess against the server's store."""
    r = subprocess.run(
        [sys.executable, "-m", "envelope.cli.main", *args, "--output", "json"],
        env=_clean_env(home),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout) if r.stdout.strip() else None


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("clients")
    srv = start_server(base / "home", base / "server.log")
    try:
        yield srv
    finally:
        srv.stop()


@dataclass(frozen=True)
class CliUser:
    arn: str
    env: dict[str, str]


@pytest.fixture(scope="module")
def cli_user(server: Server, tmp_path_factory: pytest.TempPathFactory) -> CliUser:
    """A user made with `envelope iam` while the server runs, and its AWS CLI environment."""
    arn = envelope_cli(server.home, "iam", "create-user", "cli")["User"]["Arn"]
    key = envelope_cli(server.home, "iam", "create-access-key", arn)["AccessKey"]
    assert key["SecretAccessKey"] and key["AccessKeyId"].startswith("AKIA")
    empty = tmp_path_factory.mktemp("awsconfig")
    (empty / "config").write_text("")
    (empty / "credentials").write_text("")
    env = _clean_env(server.home)
    env.update(
        AWS_ACCESS_KEY_ID=key["AccessKeyId"],
        AWS_SECRET_ACCESS_KEY=key["SecretAccessKey"],
        AWS_DEFAULT_REGION=REGION,
        AWS_CONFIG_FILE=str(empty / "config"),
        AWS_SHARED_CREDENTIALS_FILE=str(empty / "credentials"),
        AWS_PAGER="",
        AWS_MAX_ATTEMPTS="1",
    )
    return CliUser(arn, env)


def aws(
    server: Server, user: CliUser, *args: str, endpoint_flag: bool = True
) -> subprocess.CompletedProcess[str]:
    env = dict(user.env)
    cmd = [AWS, *args, "--output", "json"]
    if endpoint_flag:
        cmd[1:1] = ["--endpoint-url", server.endpoint]
    else:
        env["AWS_ENDPOINT_URL_KMS"] = server.endpoint  # the way docs/server.md shows
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)


def _audit(server: Server, n: int = 200) -> list[dict[str, Any]]:
    svc = server.service()
    try:
        return list(svc.audit_tail(n))
    finally:
        svc.close()


def test_aws_cli_refused_then_create_encrypt_decrypt_list(
    server: Server, cli_user: CliUser, tmp_path: Path
) -> None:
    # no identity policy yet: the KMS's AccessDeniedException is the CLI's error (exit 255:
    # a service error, in awscli 1.x)
    r = aws(server, cli_user, "kms", "create-key")
    assert r.returncode == 255, (r.returncode, r.stderr)
    assert "AccessDeniedException" in r.stderr and "CreateKey" in r.stderr
    assert "kms:CreateKey" in r.stderr and cli_user.arn in r.stderr
    denied = [
        a for a in _audit(server) if a["principal"] == cli_user.arn and a["decision"] == "denied"
    ]
    assert [a["operation"] for a in denied] == ["CreateKey"]
    assert "aws-cli/" in str(denied[0]["user_agent"])

    envelope_cli(
        server.home, "iam", "put-policy", cli_user.arn, "cli-kms", "--document", POLICY
    )
    r = aws(server, cli_user, "kms", "create-key", "--description", "from the aws cli")
    assert r.returncode == 0, r.stderr
    meta = json.loads(r.stdout)["KeyMetadata"]
    assert meta["Description"] == "from the aws cli" and meta["KeyState"] == "Enabled"
    assert meta["Arn"] == f"arn:aws:kms:{REGION}:000000000000:key/{meta['KeyId']}"

    secret = tmp_path / "secret.bin"
    payload = os.urandom(3000) + b"\x00\xff\n"  # binary, not text
    secret.write_bytes(payload)
    r = aws(
        server, cli_user, "kms", "encrypt", "--key-id", meta["KeyId"],
        "--plaintext", f"fileb://{secret}",
        "--encryption-context", "purpose=cli-test",
    )
    assert r.returncode == 0, r.stderr
    enc = json.loads(r.stdout)
    assert enc["KeyId"] == meta["Arn"] and enc["EncryptionAlgorithm"] == "SYMMETRIC_DEFAULT"
    blob = tmp_path / "secret.bin.kms"
    blob.write_bytes(base64.b64decode(enc["CiphertextBlob"]))
    assert payload not in blob.read_bytes()

    r = aws(
        server, cli_user, "kms", "decrypt", "--ciphertext-blob", f"fileb://{blob}",
        "--encryption-context", "purpose=cli-test", endpoint_flag=False,
    )
    assert r.returncode == 0, r.stderr
    dec = json.loads(r.stdout)
    assert base64.b64decode(dec["Plaintext"]) == payload
    assert dec["KeyId"] == meta["Arn"]

    r = aws(server, cli_user, "kms", "list-keys")
    assert r.returncode == 0, r.stderr
    listed = {k["KeyId"]: k["KeyArn"] for k in json.loads(r.stdout)["Keys"]}
    assert listed[meta["KeyId"]] == meta["Arn"]

    ops = [
        (a["operation"], a["outcome"], a["key_id"])
        for a in _audit(server)
        if a["principal"] == cli_user.arn and a["decision"] == "allowed"
    ]
    assert ops == [
        ("CreateKey", "ok", meta["Arn"]),
        ("Encrypt", "ok", meta["Arn"]),
        ("Decrypt", "ok", meta["Arn"]),
        ("ListKeys", "ok", None),
    ], ops


def test_aws_cli_with_a_wrong_secret_is_refused(server: Server, cli_user: CliUser) -> None:
    forged = CliUser(cli_user.arn, {**cli_user.env, "AWS_SECRET_ACCESS_KEY": "x" * 40})
    r = aws(server, forged, "kms", "list-keys")
    assert r.returncode == 255 and "InvalidSignatureException" in r.stderr, r.stderr
    assert "x" * 40 not in r.stderr


@pytest.fixture
def esdk_env(monkeypatch: pytest.MonkeyPatch, server: Server, tmp_path: Path) -> None:
    """The endpoint as docs/server.md sets it, and no AWS configuration of the machine's."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    (tmp_path / "empty").write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "empty"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "empty"))
    monkeypatch.setenv("AWS_ENDPOINT_URL_KMS", server.endpoint)


def _botocore_session(server: Server, user: str = "admin") -> botocore.session.Session:
    session = botocore.session.Session()
    key, secret = server.credentials[user]
    session.set_credentials(key, secret)
    return session


@pytest.mark.usefixtures("esdk_env")
def test_aws_encryption_sdk_round_trip(server: Server) -> None:
    import aws_encryption_sdk
    from aws_encryption_sdk import CommitmentPolicy
    from aws_encryption_sdk.exceptions import DecryptKeyError
    from aws_encryption_sdk.key_providers.kms import DiscoveryFilter

    admin = server.client()
    key_arn = admin.create_key(Description="esdk")["KeyMetadata"]["Arn"]
    other_arn = admin.create_key(Description="esdk other")["KeyMetadata"]["Arn"]
    client = aws_encryption_sdk.EncryptionSDKClient(
        commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT
    )
    provider = aws_encryption_sdk.StrictAwsKmsMasterKeyProvider(
        key_ids=[key_arn], botocore_session=_botocore_session(server)
    )
    message = os.urandom(100_000)
    context = {"tenant": "t-1"}
    ciphertext, header = client.encrypt(
        source=message, key_provider=provider, encryption_context=context
    )
    assert message not in ciphertext
    (edk,) = header.encrypted_data_keys
    assert edk.key_provider.key_info.decode() == key_arn

    plaintext, dec_header = client.decrypt(source=ciphertext, key_provider=provider)
    assert plaintext == message
    assert dec_header.encryption_context["tenant"] == "t-1"

    # discovery: the message names its key; the filter admits the server's account
    discovery = aws_encryption_sdk.DiscoveryAwsKmsMasterKeyProvider(
        discovery_filter=DiscoveryFilter(account_ids=["000000000000"], partition="aws"),
        botocore_session=_botocore_session(server),
    )
    assert client.decrypt(source=ciphertext, key_provider=discovery)[0] == message

    # a provider for another key cannot open it (it never asks: the message names its key),
    # and alice, who has no permission, is refused by the server
    wrong = aws_encryption_sdk.StrictAwsKmsMasterKeyProvider(
        key_ids=[other_arn], botocore_session=_botocore_session(server)
    )
    with pytest.raises(DecryptKeyError):
        client.decrypt(source=ciphertext, key_provider=wrong)
    alice = aws_encryption_sdk.StrictAwsKmsMasterKeyProvider(
        key_ids=[key_arn], botocore_session=_botocore_session(server, "alice")
    )
    with pytest.raises(DecryptKeyError):
        client.decrypt(source=ciphertext, key_provider=alice)

    records = [a for a in _audit(server) if "AwsEncryptionSdkPython" in str(a["user_agent"])]
    seen = [(a["operation"], a["decision"], a["principal"]) for a in records]
    admin_arn, alice_arn = server.arns["admin"], server.arns["alice"]
    assert seen == [
        ("GenerateDataKey", "allowed", admin_arn),
        ("Decrypt", "allowed", admin_arn),
        ("Decrypt", "allowed", admin_arn),
        ("Decrypt", "denied", alice_arn),
    ], seen
    assert records[0]["params"]["EncryptionContext"]["tenant"] == "t-1"
