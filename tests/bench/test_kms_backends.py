"""`envelope bench kms` against the KMSs a team would measure: the embedded KMS (``local:``) and
`envelope serve` through the `aws` backend (``--kms-endpoint``, real access keys), each giving
latency rows without errors and a cached job whose calls are what the cache promises; the
server's audit log holds the calls the bench says it made."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from envelope.service import open_service

from ..server.conftest import Server

SMALL = ("--seconds", "0.3", "--concurrency", "1,2", "--objects", "60", "--cache-max-objects", "20")


def check(data: dict[str, Any], objects: int, per_key: int) -> None:
    for row in data["latency"]:
        assert row["errors"] == 0 and row["calls"] > 0 and row["p50_ms"] > 0
    _, cached = data["jobs"]
    assert cached["generate_data_key_calls"] == math.ceil(objects / per_key)
    assert cached["kms_calls"] == cached["promised_kms_calls"]


def test_bench_kms_against_the_embedded_kms(
    bench: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("ENVELOPE_HOME", str(home))
    svc = open_service(home)
    try:
        kid = svc.create_key()["KeyMetadata"]["KeyId"]
    finally:
        svc.close()
    data = bench("kms", "--key", f"local:{kid}", "--home", str(home), *SMALL)
    check(data, 60, 20)


def test_bench_kms_against_envelope_serve(
    bench: Any, server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_id, secret = server.credentials["admin"]
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_KMS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    arn = server.client("admin").create_key()["KeyMetadata"]["Arn"]
    data = bench("kms", "--key", arn, "--kms-endpoint", server.endpoint, *SMALL)
    check(data, 60, 20)
    sent = sum(row["calls"] for row in data["latency"]) + sum(j["kms_calls"] for j in data["jobs"])
    local = server.service()
    try:
        # the whole log, filtered to this test's key: the bench's untimed calls (warm-ups, the
        # ciphertexts its Decrypt rounds open) come after counted ones, and a window of the
        # last `sent + 50` records dropped counted calls when there were more than 50 of them
        records = local.audit_tail(1_000_000)
        ops = Counter(r["operation"] for r in records if r["key_id"] == arn)
    finally:
        local.close()
    # every call the bench counts reached the server (the bench also makes a few untimed
    # calls of its own, such as the ciphertexts its Decrypt rounds open)
    gdk = sum(r["calls"] for r in data["latency"] if r["operation"] == "generate_data_key")
    gdk += sum(j["generate_data_key_calls"] for j in data["jobs"])
    assert ops["GenerateDataKey"] >= gdk and ops["GenerateDataKey"] + ops["Decrypt"] >= sent
