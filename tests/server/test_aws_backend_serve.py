"""The encryptor's `aws` backend against `envelope serve` (and, for the same job, moto's server):
a lake job of 2,000 objects whose KMS calls are exactly what the data-key cache promises, and a
big file round trip. The backend signs with real access keys of the server's store; every
request it sends is counted at botocore's ``before-send`` hook, and the server's own audit log
must show the same calls, made by the same user."""

from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

import boto3
import pytest

from envelope import sync
from envelope.keycache import CachePolicy
from envelope.kms.aws import AwsKms
from envelope.kms.keyspec import KeySpec
from envelope.lake import jobs

from ..test_aws_backend import counted, file_digest, write_big_file
from .conftest import REGION, Server

OBJECTS = 2000
PER_KEY = 500  # objects one data key may encrypt: the promise is ceil(2000 / 500) = 4 keys


class Target:
    def __init__(self, name: str, endpoint: str, key_arn: str, creds: tuple[str, str]) -> None:
        self.name, self.endpoint, self.key_arn, self.creds = name, endpoint, key_arn, creds


@pytest.fixture(params=["envelope-serve", "moto"])
def target(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Target:
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_KMS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    if request.param == "envelope-serve":
        srv: Server = request.getfixturevalue("server")
        creds = srv.credentials["admin"]
        arn = srv.client("admin").create_key(Description="aws backend")["KeyMetadata"]["Arn"]
        endpoint = srv.endpoint
    else:
        endpoint = request.getfixturevalue("moto_url")
        creds = ("AKIDTESTTESTTEST", "test-secret")
        client: Any = boto3.client(
            "kms", region_name=REGION, endpoint_url=endpoint,
            aws_access_key_id=creds[0], aws_secret_access_key=creds[1],
        )  # fmt: skip
        arn = client.create_key(Description="aws backend")["KeyMetadata"]["Arn"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", creds[0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", creds[1])
    return Target(request.param, endpoint, arn, creds)


def test_a_lake_job_of_2000_objects_makes_the_calls_the_cache_promises(
    target: Target, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    src = tmp_path / "src"
    for i in range(OBJECTS):
        d = src / f"day={i % 9}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"part-{i:05d}.csv").write_bytes(b"%d,row\n" % i * (i % 37))
    policy = CachePolicy(max_objects=PER_KEY)
    spec = KeySpec(key=target.key_arn, kms_endpoint=target.endpoint, cache=policy).bulk()
    kr = spec.keyring()
    (backend,) = kr.backends
    assert isinstance(backend, AwsKms)
    calls = counted(backend, REGION)
    report = sync.run(jobs.run_job, "encrypt", str(src), str(tmp_path / "enc"), keyring=kr,
                      kms_context={"lake": "orders"})  # fmt: skip
    sync.run(kr.aclose)
    promised = math.ceil(OBJECTS / PER_KEY)
    assert (report.objects, report.done, report.failed) == (OBJECTS, OBJECTS, 0)
    assert calls.sent == Counter({"GenerateDataKey": promised})

    dspec = KeySpec(key="aws-kms:", kms_endpoint=target.endpoint, purpose="decrypt").bulk()
    dkr = dspec.keyring()
    dcalls = counted(dkr.backends[0], REGION)  # type: ignore[arg-type]
    report = sync.run(jobs.run_job, "decrypt", str(tmp_path / "enc"), str(tmp_path / "dec"),
                      keyring=dkr)  # fmt: skip
    sync.run(dkr.aclose)
    assert (report.done, report.failed) == (OBJECTS, 0)
    assert dcalls.sent == Counter({"Decrypt": promised})  # each data key unwrapped once
    for f in src.rglob("*.csv"):
        assert (tmp_path / "dec" / f.relative_to(src)).read_bytes() == f.read_bytes()

    if target.name == "envelope-serve":
        # the server saw exactly those calls, by the user whose access key signed them
        srv: Server = request.getfixturevalue("server")
        local = srv.service()
        try:
            records = local.audit_tail(50)
        finally:
            local.close()
        ops = Counter(
            r["operation"]
            for r in records
            if r["key_id"] == target.key_arn and r["operation"] in ("GenerateDataKey", "Decrypt")
        )
        assert ops == Counter({"GenerateDataKey": promised, "Decrypt": promised})
        assert {r["principal"] for r in records if r["key_id"] == target.key_arn} >= {
            srv.arns["admin"]
        }


@pytest.mark.slow
def test_a_big_file_round_trip_through_envelope_serve(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """64 MiB by default; ENVELOPE_AWS_BIG_MIB=1024 for the issue's 1 GiB."""
    key_id, secret = server.credentials["admin"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    arn = server.client("admin").create_key()["KeyMetadata"]["Arn"]
    mib = int(os.environ.get("ENVELOPE_AWS_BIG_MIB", "64"))
    src, enc, back = tmp_path / "big", tmp_path / "big.env", tmp_path / "big.out"
    digest = write_big_file(src, mib)
    kr = KeySpec(key=arn, kms_endpoint=server.endpoint).keyring()
    (backend,) = kr.backends
    calls = counted(backend, REGION)  # type: ignore[arg-type]
    try:
        sync.encrypt(str(src), str(enc), keyring=kr, kms_context={"f": "big"}, durable=False)
        src.unlink()
        sync.decrypt(str(enc), str(back), keyring=kr, durable=False)
    finally:
        kr.close()
    assert file_digest(back) == digest and back.stat().st_size == mib << 20
    assert calls.sent == Counter({"GenerateDataKey": 1, "Decrypt": 1})
