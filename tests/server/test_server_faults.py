"""Faults and hostile requests against `envelope serve`.

The server killed with SIGKILL in the middle of a storm of writes, then restarted on the same
store: every call the server acknowledged is still there and works, and the audit log verifies.

The server runs in its own process group (``start_new_session``), so the kill takes the
supervisor and both worker processes at once, as a power cut or the OOM killer of a container
would; no process of the old server is left to finish anything.
"""

from __future__ import annotations

import datetime
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import boto3
import botocore.auth
import botocore.awsrequest
import botocore.config
import botocore.credentials
import botocore.exceptions
import pytest

from envelope.service import open_service

from .conftest import REGION, REPO, Server, _prepare, free_port

CLIENTS = 8
_SESSION = boto3.session.Session()


def launch(home: Path, log: Path, creds: Server | None = None, *extra: str) -> Server:
    """`envelope serve --workers 2` in a new session (its own process group) on a free port."""
    if creds is None:
        credentials, arns = _prepare(home)
    else:
        credentials, arns = creds.credentials, creds.arns
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENVELOPE_", "AWS_"))}
    env["PYTHONPATH"] = str(REPO)
    # the workers' metrics files: under the test's directory, so a killed server leaves no
    # directory of its own behind in /tmp
    metrics = log.with_suffix(".metrics")
    metrics.mkdir()
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics)
    cmd = [sys.executable, "-m", "envelope.cli.main", "serve", "--home", str(home)]
    cmd += ["--port", str(port), "--workers", "2", *extra]
    with log.open("wb") as f:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Server(home, port, proc, log, credentials, arns)
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if server.http("GET", "/healthz")[0] == 200:
                return server
        except OSError:
            pass
        if time.monotonic() > deadline:
            kill_group(server)
            raise RuntimeError(f"server did not start:\n{log.read_text()}")
        time.sleep(0.05)


def kill_group(server: Server) -> None:
    """SIGKILL to the server's whole process group; wait until none of it is left."""
    pgid = server.proc.pid
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    server.proc.wait(30)
    deadline = time.monotonic() + 30
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"processes of group {pgid} outlived SIGKILL")
        time.sleep(0.02)


def client(server: Server) -> Any:
    """An admin client without retries. Made in the main thread (a boto3 session is not
    thread-safe) from one session, whose loaded service model the clients share."""
    key, secret = server.credentials["admin"]
    return _SESSION.client(
        "kms",
        endpoint_url=server.endpoint,
        region_name=REGION,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=botocore.config.Config(
            retries={"total_max_attempts": 1},
            connect_timeout=5,
            read_timeout=30,
            max_pool_connections=2,
        ),
    )


@dataclass
class Storm:
    """What the server acknowledged (a complete 200 answer), shared by the client threads."""

    keys: list[str] = field(default_factory=list)
    data_keys: list[tuple[str, bytes, bytes]] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)
    errors_before_kill: list[str] = field(default_factory=list)
    interrupted: list[str] = field(default_factory=list)  # how each client's last call ended
    lock: threading.Lock = field(default_factory=threading.Lock)
    killed_at: float | None = None

    def acknowledged(self) -> int:
        with self.lock:
            return len(self.request_ids)


def storm_client(kms: Any, storm: Storm, seed: int, stop: threading.Event) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        try:
            with storm.lock:
                targets = list(storm.keys)
            if rng.random() < 0.25:
                resp = kms.create_key(Description=f"storm {seed}")
                with storm.lock:
                    storm.keys.append(resp["KeyMetadata"]["Arn"])
                    storm.request_ids.append(resp["ResponseMetadata"]["RequestId"])
            else:
                key = rng.choice(targets)
                resp = kms.generate_data_key(KeyId=key, KeySpec="AES_256")
                assert resp["KeyId"] == key
                with storm.lock:
                    storm.data_keys.append((key, resp["Plaintext"], resp["CiphertextBlob"]))
                    storm.request_ids.append(resp["ResponseMetadata"]["RequestId"])
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            if storm.killed_at is not None:
                # the server is gone: what was not acknowledged does not count
                with storm.lock:
                    storm.interrupted.append(type(exc).__name__)
                return
            # set before the kill: an error while it is unset happened with the server up
            with storm.lock:
                storm.errors_before_kill.append(repr(exc))
            time.sleep(0.01)


def envelope_audit_verify(home: Path) -> dict[str, Any]:
    """`envelope audit verify --home HOME`: exit 0 and its report says ok."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENVELOPE_", "AWS_"))}
    env["PYTHONPATH"] = str(REPO)
    cmd = [sys.executable, "-m", "envelope.cli.main", "audit", "verify", "--home", str(home)]
    r = subprocess.run(
        [*cmd, "--output", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    report: dict[str, Any] = json.loads(r.stdout)
    assert report["ok"] is True and report["store_problems"] == [], report
    return report


@pytest.mark.slow
def test_sigkill_during_a_storm_loses_nothing_acknowledged(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = launch(home, tmp_path / "first.log")
    storm = Storm()
    try:
        admin = client(first)
        for _ in range(4):
            resp = admin.create_key(Description="before the storm")
            storm.keys.append(resp["KeyMetadata"]["Arn"])
            storm.request_ids.append(resp["ResponseMetadata"]["RequestId"])
        clients = [client(first) for _ in range(CLIENTS)]
        stop = threading.Event()
        threads = [
            threading.Thread(target=storm_client, args=(kms, storm, i, stop), daemon=True)
            for i, kms in enumerate(clients)
        ]
        for t in threads:
            t.start()
        # kill in full flight: after enough acknowledged calls that all 8 are busy
        deadline = time.monotonic() + 30
        while storm.acknowledged() < 200 and time.monotonic() < deadline:
            time.sleep(0.01)
        in_flight_before = storm.acknowledged()
        storm.killed_at = time.monotonic()
        kill_group(first)
        stop.set()
        for t in threads:
            t.join(60)
            assert not t.is_alive()
    finally:
        if first.proc.poll() is None:
            kill_group(first)
    assert storm.errors_before_kill == []
    # every client's last call failed with the kill; some were on the wire when it came
    assert len(storm.interrupted) == CLIENTS, storm.interrupted
    assert "ConnectionClosedError" in storm.interrupted, storm.interrupted
    assert in_flight_before >= 200, "the storm never got going"
    created = len(storm.keys) - 4
    assert created > 0 and len(storm.data_keys) > 0, (created, len(storm.data_keys))

    # the store as the kill left it: the audit chain, seals and key rows check
    report = envelope_audit_verify(home)
    assert report["records"] >= len(storm.request_ids)

    second = launch(home, tmp_path / "second.log", first)
    try:
        checkers = [client(second) for _ in range(CLIENTS)]

        def describe(i: int) -> None:
            for arn in storm.keys[i::CLIENTS]:
                meta = checkers[i].describe_key(KeyId=arn)["KeyMetadata"]
                assert (meta["Arn"], meta["KeyState"]) == (arn, "Enabled")

        def decrypt(i: int) -> None:
            for arn, plain, blob in storm.data_keys[i::CLIENTS]:
                resp = checkers[i].decrypt(CiphertextBlob=blob)
                assert (resp["KeyId"], resp["Plaintext"]) == (arn, plain)

        with ThreadPoolExecutor(CLIENTS) as pool:
            list(pool.map(describe, range(CLIENTS)))
            list(pool.map(decrypt, range(CLIENTS)))

        # every acknowledged call has its audit record (committed before the answer)
        svc = second.service()
        try:
            audited = {rec.get("request_id") for rec in svc.audit_tail(1_000_000)}
        finally:
            svc.close()
        missing = [rid for rid in storm.request_ids if rid not in audited]
        assert missing == [], f"{len(missing)} acknowledged calls have no audit record"
        assert second.stop() == 0
    finally:
        if second.proc.poll() is None:
            kill_group(second)
    assert envelope_audit_verify(home)["records"] > report["records"]


# -- hostile requests over the wire -----------------------------------------------------------
#
# tests/server/test_auth.py refuses each attack of issue 11 at the authenticator, with a clock it
# controls; tests/server/test_wire_api.py sends an unsigned and a wrongly signed request. Here the
# rest go over the socket to the real server, each with a request that would change something
# if it got through: the answer is AWS's error, nothing changed, and the refusal is audited with
# the request id the server answered with.

ROLE_POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*"}],
    }
)


def sign(
    server: Server,
    creds: botocore.credentials.Credentials,
    target: str,
    body: bytes,
    *,
    at: float | None = None,
) -> dict[str, str]:
    """Headers of a POST / to `server` signed by botocore's SigV4 signer (at time `at`)."""
    req = botocore.awsrequest.AWSRequest(
        "POST",
        server.endpoint + "/",
        data=body,
        headers={"X-Amz-Target": target, "Content-Type": "application/x-amz-json-1.1"},
    )
    signer = botocore.auth.SigV4Auth(creds, "kms", REGION)
    if at is None:
        signer.add_auth(req)
    else:
        fixed = datetime.datetime(*time.gmtime(at)[:6])
        with mock.patch("botocore.auth.get_current_datetime", return_value=fixed):
            signer.add_auth(req)
    return dict(req.headers.items())


@pytest.fixture(scope="module")
def victim(server: Server) -> dict[str, str]:
    """A key and its description, which the attacks try to change."""
    meta = server.client().create_key(Description="original")["KeyMetadata"]
    return {"KeyId": meta["KeyId"], "Arn": meta["Arn"]}


@pytest.fixture(scope="module")
def role(server: Server) -> str:
    svc = server.service()
    try:
        arn: str = svc.create_role(role_name="operator")["Role"]["Arn"]
        svc.put_principal_policy(arn=arn, policy_name="kms", policy_document=ROLE_POLICY)
    finally:
        svc.close()
    return arn


def _admin_creds(server: Server) -> botocore.credentials.Credentials:
    return botocore.credentials.Credentials(*server.credentials["admin"])


def _expired_session(server: Server, role: str) -> botocore.credentials.Credentials:
    """Role credentials that expired an hour ago: issued by the store's own AssumeRole with the
    service's clock two hours back (the server's clock cannot be moved), 900 s long."""
    past = time.time() - 7200
    svc = open_service(server.home, clock=lambda: past)
    try:
        c = svc.assume_role(role_arn=role, role_session_name="stale", duration_seconds=900)
    finally:
        svc.close()
    cr = c["Credentials"]
    assert cr["Expiration"] < time.time() - 3000
    return botocore.credentials.Credentials(
        cr["AccessKeyId"], cr["SecretAccessKey"], cr["SessionToken"]
    )


def attack(server: Server, name: str, victim: dict[str, str], role: str) -> dict[str, Any]:
    """The request of attack `name` as (headers, body): each one would change the victim key."""
    admin = _admin_creds(server)
    update = "TrentService.UpdateKeyDescription"
    body = json.dumps({"KeyId": victim["KeyId"], "Description": "pwned"}).encode()
    if name == "tampered body":
        benign = json.dumps({"KeyId": victim["KeyId"], "Description": "origina1"}).encode()
        return {"headers": sign(server, admin, update, benign), "body": body}
    if name == "tampered header":
        headers = sign(server, admin, update, body)
        stamp = datetime.datetime.strptime(headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ")
        later = stamp + datetime.timedelta(seconds=1)
        return {"headers": {**headers, "X-Amz-Date": later.strftime("%Y%m%dT%H%M%SZ")},
                "body": body}
    if name == "signed 20 minutes ago":
        return {"headers": sign(server, admin, update, body, at=time.time() - 1200), "body": body}
    if name == "unknown access key":
        stranger = botocore.credentials.Credentials("AKIAZZZZZZZZZZZZZZZZ", "s" * 40)
        return {"headers": sign(server, stranger, update, body), "body": body}
    if name == "expired session token":
        return {"headers": sign(server, _expired_session(server, role), update, body),
                "body": body}
    if name == "replayed with another target":
        # DescribeKey's body is a valid ScheduleKeyDeletion body too
        plain = json.dumps({"KeyId": victim["KeyId"]}).encode()
        headers = sign(server, admin, "TrentService.DescribeKey", plain)
        return {"headers": {**headers, "X-Amz-Target": "TrentService.ScheduleKeyDeletion"},
                "body": plain}
    raise AssertionError(name)


ATTACKS = {
    # name: (__type, HTTP status, words of the message)
    "tampered body": ("InvalidSignatureException", 400, "signature we calculated does not match"),
    "tampered header": ("InvalidSignatureException", 400, "signature we calculated does not match"),
    "signed 20 minutes ago": ("InvalidSignatureException", 400, "Signature expired"),
    # 400 as AWS's JSON-protocol services answer it (DynamoDB, Cognito: "400 Bad Request"),
    # not the 403 of the query and REST services
    "unknown access key": ("UnrecognizedClientException", 400, "security token"),
    "expired session token": ("ExpiredTokenException", 400, "expired"),
    "replayed with another target": (
        "InvalidSignatureException", 400, "signature we calculated does not match"
    ),
}


def test_the_same_requests_untouched_are_accepted(server: Server, victim: dict[str, str]) -> None:
    """The control: `sign` makes requests the server takes, so each refusal above is the
    attack's doing."""
    admin = _admin_creds(server)
    body = json.dumps({"KeyId": victim["KeyId"]}).encode()
    status, _, answer = server.http(
        "POST", "/", body, sign(server, admin, "TrentService.DescribeKey", body)
    )
    assert status == 200 and json.loads(answer)["KeyMetadata"]["Arn"] == victim["Arn"]
    body = json.dumps({"KeyId": victim["KeyId"], "Description": "original"}).encode()
    status, _, answer = server.http(
        "POST", "/", body, sign(server, admin, "TrentService.UpdateKeyDescription", body,
                                at=time.time() - 240)  # within the 5 minutes
    )
    assert status == 200, answer


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_over_the_wire_is_refused_changes_nothing_and_is_audited(
    server: Server, victim: dict[str, str], role: str, name: str
) -> None:
    code, status, words = ATTACKS[name]
    req = attack(server, name, victim, role)
    got_status, headers, body = server.http("POST", "/", req["body"], req["headers"])
    answer = json.loads(body)
    assert (answer["__type"], got_status) == (code, status), answer
    assert words.lower() in answer["message"].lower(), answer["message"]
    for secret in (server.credentials["admin"][1], "s" * 40):
        assert secret not in body.decode()

    # nothing changed
    meta = server.client().describe_key(KeyId=victim["KeyId"])["KeyMetadata"]
    assert (meta["Description"], meta["KeyState"]) == ("original", "Enabled")

    # audited: one denial under the answer's request id, with the source address
    rid = headers["x-amzn-requestid"]
    svc = server.service()
    try:
        records = [r for r in svc.audit_tail(500) if r.get("request_id") == rid]
        assert svc.verify_audit_log().ok
    finally:
        svc.close()
    assert len(records) == 1, records
    rec = records[0]
    assert (rec["decision"], rec["error_code"], rec["source_ip"]) == ("denied", code, "127.0.0.1")
    assert rec["principal"] == "anonymous"
    assert rec["operation"] in ("UpdateKeyDescription", "ScheduleKeyDeletion")
    text = json.dumps(rec)
    assert server.credentials["admin"][1] not in text and "Signature=" not in text


def test_role_session_from_envelope_iam_assume_role_works_over_the_wire(
    server: Server, victim: dict[str, str], role: str
) -> None:
    """The control for the expired token: a live session, issued by the CLI as a person would
    issue it (shell exports), is accepted and acts as the role's session."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENVELOPE_", "AWS_"))}
    env["PYTHONPATH"] = str(REPO)
    r = subprocess.run(
        [sys.executable, "-m", "envelope.cli.main", "iam", "assume-role", role,
         "--session", "live", "--duration", "900", "--home", str(server.home),
         "--output", "text"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 0, r.stderr
    exports = dict(
        line.removeprefix("export ").split("=", 1)
        for line in r.stdout.splitlines()
        if line.startswith("export ")
    )
    kms = _SESSION.client(
        "kms",
        endpoint_url=server.endpoint,
        region_name=REGION,
        aws_access_key_id=exports["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=exports["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=exports["AWS_SESSION_TOKEN"],
        config=botocore.config.Config(retries={"total_max_attempts": 1}),
    )
    resp = kms.describe_key(KeyId=victim["KeyId"])
    assert resp["KeyMetadata"]["Arn"] == victim["Arn"]
    svc = server.service()
    try:
        (rec,) = [
            a for a in svc.audit_tail(200)
            if a.get("request_id") == resp["ResponseMetadata"]["RequestId"]
        ]
    finally:
        svc.close()
    assert rec["principal"] == role.replace(":iam::", ":sts::").replace(
        ":role/", ":assumed-role/"
    ) + "/live"
    # the same session's token, cut short, is not a token of the store
    forged = botocore.credentials.Credentials(
        exports["AWS_ACCESS_KEY_ID"], exports["AWS_SECRET_ACCESS_KEY"],
        exports["AWS_SESSION_TOKEN"][:-4] + "AAAA",
    )
    body = json.dumps({"KeyId": victim["KeyId"]}).encode()
    status, _, answer = server.http(
        "POST", "/", body, sign(server, forged, "TrentService.DescribeKey", body)
    )
    assert json.loads(answer)["__type"] == "UnrecognizedClientException" and status == 400
