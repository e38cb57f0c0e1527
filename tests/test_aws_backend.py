"""The `aws` backend (`envelope.kms.aws`) against real servers on loopback.

- moto's KMS server (`moto.server.ThreadedMotoServer`, a real HTTP server speaking the AWS KMS
  JSON protocol) for the round trips, the cache's call counts and moto's own refusals.
- A tiny scripted HTTP server (`Scripted`) for what moto cannot produce: throttling, 5xx,
  slow answers, and a disabled key (moto 5 serves GenerateDataKey and Decrypt on a disabled
  key). It answers exactly what AWS KMS answers (status, ``x-amzn-RequestId``, the JSON
  ``__type``/``message`` body), and can forward a request to moto unchanged, so a call that
  is throttled first and then served is one real path through botocore.

KMS calls are counted at the HTTP layer: a botocore ``before-send`` hook on the backend's
client fires once per request actually sent (so botocore retries would show), and the
scripted server counts what reached it.

The big round trip is 64 MiB by default; ``ENVELOPE_AWS_BIG_MIB=1024`` makes it the issue's
1 GiB (about a minute on 2 cores).
"""

from __future__ import annotations

import hashlib
import http.client
import http.server
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3
import pytest

import envelope
from envelope import sync
from envelope.errors import (
    ClosedError,
    ConfigurationError,
    KmsAccessDeniedError,
    KmsKeyError,
    KmsTimeoutError,
    KmsTransientError,
    NoBackendError,
    RetryExhaustedError,
    ThrottlingError,
)
from envelope.keycache import CachePolicy
from envelope.keyring import Keyring
from envelope.kms.aws import (
    AwsKms,
    check_endpoint_url,
    is_aws_key,
    key_arn_region,
    parse_key_ref,
)
from envelope.kms.base import WrappedKey
from envelope.kms.filekey import FileKeyBackend, generate_key_file
from envelope.kms.keyspec import KeySpec
from envelope.kms.retry import RetryingKms, RetryPolicy
from envelope.lake import jobs

REGION = "eu-west-1"
CREDS = {"AWS_ACCESS_KEY_ID": "AKIDTESTTESTTEST", "AWS_SECRET_ACCESS_KEY": "test-secret"}
# One retry profile for the tests: real backoff shape, tiny delays.
FAST = RetryPolicy(max_attempts=4, deadline=20.0, throttle_base=0.01, transient_base=0.01)


# -- servers --------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Test credentials; nothing from the machine's AWS configuration."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_KMS",
                 "AWS_REGION", "AWS_DEFAULT_REGION"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    for name, value in CREDS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("ENVELOPE_HOME", str(tmp_path / "no-envelope-home"))


def admin(url: str, region: str = REGION) -> Any:
    """A plain boto3 client for setting keys up (not the code under test)."""
    return boto3.client(
        "kms", region_name=region, endpoint_url=url,
        aws_access_key_id=CREDS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDS["AWS_SECRET_ACCESS_KEY"],
    )  # fmt: skip


@pytest.fixture
def key(moto_url: str) -> dict[str, str]:
    """A new key and an alias for it: {"arn", "id", "alias"}."""
    kms = admin(moto_url)
    meta = kms.create_key(Description="envelope aws backend test")["KeyMetadata"]
    alias = f"alias/t-{meta['KeyId'][:8]}"
    kms.create_alias(AliasName=alias, TargetKeyId=meta["KeyId"])
    return {"arn": meta["Arn"], "id": meta["KeyId"], "alias": alias}


class Calls:
    """KMS requests sent by one boto3 session, per operation, and the thread each ran on."""

    def __init__(self, events: Any) -> None:
        self.sent: Counter[str] = Counter()
        self.params: list[tuple[str, dict[str, Any]]] = []
        self.threads: set[int] = set()
        events.register("before-send.kms", self._sent)
        events.register("before-parameter-build.kms", self._params)

    def _sent(self, event_name: str, **_: Any) -> None:
        self.sent[event_name.rsplit(".", 1)[-1]] += 1
        self.threads.add(threading.get_ident())

    def _params(self, event_name: str, params: dict[str, Any], **_: Any) -> None:
        self.params.append((event_name.rsplit(".", 1)[-1], dict(params)))


def write_big_file(path: Path, mib: int) -> str:
    """`mib` MiB of distinct (rotated) random blocks at `path`, written in 1 MiB chunks so a
    1 GiB file needs no 1 GiB buffer; returns its SHA-256 (hex)."""
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        block = os.urandom(1 << 20)
        for i in range(mib):
            chunk = block[i % 97 :] + block[: i % 97]
            digest.update(chunk)
            f.write(chunk)
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    """SHA-256 (hex) of the file at `path`, read in 4 MiB chunks."""
    out = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            out.update(chunk)
    return out.hexdigest()


def counted(backend: AwsKms, region: str = REGION) -> Calls:
    """Count the requests of `backend`'s client for `region` (its own event hooks)."""
    return Calls(backend.client(region).meta.events)


_SESSION: list[Any] = []


def new_kms(url: str, **kwargs: Any) -> AwsKms:
    """An `AwsKms` at `url` on one shared boto3 session (a new session costs ~0.4 s)."""
    if not _SESSION:
        _SESSION.append(boto3.session.Session(
            aws_access_key_id=CREDS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDS["AWS_SECRET_ACCESS_KEY"],
        ))  # fmt: skip
    return AwsKms(endpoint_url=url, session=_SESSION[0], **kwargs)


def _send_json(handler: http.server.BaseHTTPRequestHandler, status: int, payload: bytes) -> None:
    """Answer as AWS KMS does: `status`, an awsJson 1.1 body, a request id."""
    handler.send_response(status)
    handler.send_header("Content-Type", "application/x-amz-json-1.1")
    handler.send_header("x-amzn-RequestId", "00000000-0000-4000-8000-000000000000")
    handler.send_header("Content-Length", str(len(payload)))
    handler.end_headers()
    handler.wfile.write(payload)


class Scripted:
    """An HTTP server answering KMS requests from a script, then forwarding to `upstream`.

    Each script entry is (status, __type, delay seconds); None forwards the request as is.
    Entries are used in order; when the script is spent, `then` is used for every request."""

    def __init__(
        self,
        script: list[tuple[int, str, float] | None],
        *,
        then: tuple[int, str, float] | None = None,
        upstream: str | None = None,
    ) -> None:
        self.script = list(script)
        self.then = then
        self.upstream = upstream
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                target = self.headers.get("X-Amz-Target", "")
                outer.requests.append(target.rsplit(".", 1)[-1])
                step = outer.script.pop(0) if outer.script else outer.then
                if step is None:
                    self._forward(body)
                    return
                status, code, delay = step
                time.sleep(delay)
                payload = json.dumps({"__type": code, "message": f"scripted {code}"}).encode()
                _send_json(self, status, payload)

            def _forward(self, body: bytes) -> None:
                assert outer.upstream is not None
                host = outer.upstream.removeprefix("http://")
                conn = http.client.HTTPConnection(host, timeout=10)
                conn.request("POST", self.path, body, dict(self.headers.items()))
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection",
                                         "server", "date"):  # fmt: skip
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

        class Server(http.server.ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that timed out and left: expected here

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False  # botocore keeps its connections open
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> Scripted:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# -- key references ---------------------------------------------------------------------------


def test_key_reference_grammar() -> None:
    arn = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    assert parse_key_ref(arn).key == arn and parse_key_ref(arn).region == "eu-west-1"
    alias_arn = "arn:aws:kms:us-east-2:111122223333:alias/etl/nightly"
    assert parse_key_ref(alias_arn).region == "us-east-2"
    assert parse_key_ref("aws-kms:alias/etl").key == "alias/etl"
    assert parse_key_ref("aws-kms:alias/etl").region is None
    ref = parse_key_ref("aws-kms://ap-southeast-2/1234abcd-12ab-34cd-56ef-1234567890ab")
    assert (ref.key, ref.region) == ("1234abcd-12ab-34cd-56ef-1234567890ab", "ap-southeast-2")
    assert parse_key_ref("aws-kms:" + arn).key == arn
    assert parse_key_ref("aws-kms:").key is None  # a reader's "any AWS key the header names"
    assert parse_key_ref("aws-kms://us-gov-west-1").region == "us-gov-west-1"
    assert parse_key_ref("arn:aws-cn:kms:cn-north-1:111122223333:key/k").region == "cn-north-1"
    # which arguments are AWS keys: a bare KMS ARN is; local:arn:... and other ARNs are not
    assert is_aws_key(arn) and is_aws_key("aws-kms:alias/x")
    assert not is_aws_key("local:" + arn) and not is_aws_key("alias/x")
    assert not is_aws_key("arn:aws:iam::111122223333:role/x")
    # only key ARNs are what headers may record
    assert key_arn_region(arn) == "eu-west-1" and key_arn_region(alias_arn) is None
    for bad in (
        "arn:aws:kms:eu-west-1:1111:key/x",  # account is 12 digits
        "arn:aws:kms:evil.example.com/x:111122223333:key/k",  # a Region is a host label
        "aws-kms://EU_WEST/alias/x",
        "aws-kms://eu-west-1/" + "arn:aws:kms:us-east-1:111122223333:key/k",  # two Regions
        "aws-kms:alias/has space",
    ):
        with pytest.raises(ConfigurationError):
            parse_key_ref(bad)
    assert check_endpoint_url("https://kms.example.internal:8443") == (
        "https://kms.example.internal:8443"
    )
    for bad in ("ftp://x", "http://user:pw@host", "http://host/?q=1", "kms.local", "http://",
                "http://host:99999"):  # fmt: skip
        with pytest.raises(ConfigurationError) as e:
            check_endpoint_url(bad)
        assert "pw" not in str(e.value)


def test_keyspec_endpoint_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = "http://127.0.0.1:9"
    with pytest.raises(ConfigurationError, match="for AWS KMS keys"):
        KeySpec(kms_endpoint=url)  # encrypt: the default key is the embedded KMS's
    with pytest.raises(ConfigurationError, match="for AWS KMS keys"):
        KeySpec(key="local:alias/x", kms_endpoint=url)
    with pytest.raises(ConfigurationError, match="not a KMS key or alias ARN"):
        KeySpec(key="arn:aws:kms:eu-west-1:1:key/x")
    spec = KeySpec(key="aws-kms:alias/x", kms_endpoint=url)
    (backend,), key_id = spec.backends()
    assert isinstance(backend, AwsKms) and backend.endpoint_url == url and key_id == "alias/x"
    # decrypt: the endpoint alone configures AWS KMS beside a key file, never the local KMS
    kf = tmp_path / "k"
    generate_key_file(kf)
    backends, _ = KeySpec(key_files=(str(kf),), kms_endpoint=url, purpose="decrypt").backends()
    assert [type(b) for b in backends] == [FileKeyBackend, AwsKms]
    # pinned: a worker gets this process's endpoint and Region
    monkeypatch.setenv("AWS_ENDPOINT_URL_KMS", url)
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    pinned = KeySpec(key="aws-kms:alias/x").pinned()
    assert (pinned.key, pinned.kms_endpoint) == ("aws-kms://eu-central-1/alias/x", url)
    arn = "arn:aws:kms:eu-west-1:111122223333:key/k"
    assert KeySpec(key=arn).pinned().key == arn  # an ARN carries its own Region
    assert KeySpec(key="alias/x").pinned().kms_endpoint is None  # not an AWS key


def test_local_arn_still_names_the_embedded_kms(tmp_path: Path) -> None:
    """A bare KMS ARN is AWS KMS now; ``local:arn:...`` keeps the embedded KMS reachable."""
    from envelope.kms.local import LocalKms

    home = str(tmp_path / "home")
    arn = "arn:aws:kms:us-east-1:000000000000:alias/aws/envelope"
    (local,), key_id = KeySpec(key="local:" + arn, home=home).backends()
    try:
        assert isinstance(local, LocalKms) and key_id == arn
    finally:
        sync.run(local.aclose)
    (aws,), _ = KeySpec(key=arn, home=home).backends()
    assert isinstance(aws, AwsKms) and aws.region == "us-east-1"  # the ARN's Region


def test_cli_parses_kms_endpoint() -> None:
    from envelope.cli._common import key_spec
    from envelope.cli.main import build_parser

    arn = "arn:aws:kms:eu-west-1:111122223333:key/k"
    args = build_parser(["encrypt", "a", "b"]).parse_args(
        ["encrypt", "a", "b", "--key", arn, "--kms-endpoint", "http://127.0.0.1:4566"]
    )
    assert key_spec(args, "encrypt") == KeySpec(key=arn, kms_endpoint="http://127.0.0.1:4566")


# -- the CLI ----------------------------------------------------------------------------------


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "envelope.cli.main", *args],
        capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=120,
    )  # fmt: skip


def test_cli_file_round_trip_with_an_arn_and_an_endpoint(
    tmp_path: Path, moto_url: str, key: dict[str, str]
) -> None:
    src, enc, back = tmp_path / "in.bin", tmp_path / "in.env", tmp_path / "back.bin"
    src.write_bytes(os.urandom(300_000))
    r = run_cli("encrypt", str(src), str(enc), "--key", key["arn"], "--kms-endpoint", moto_url,
                "--kms-context", "table=orders", "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    (wrapped,) = json.loads(r.stdout)["wrapped_keys"]
    assert wrapped == {"provider_id": "aws-kms", "key_id": key["arn"]}
    assert not (tmp_path / "no-envelope-home").exists()  # the embedded KMS was not touched

    # decrypt: no key argument, only where AWS KMS is; the header names the key
    r = run_cli("decrypt", str(enc), str(back), "--kms-endpoint", moto_url)
    assert r.returncode == 0, r.stderr
    assert back.read_bytes() == src.read_bytes()

    # without any AWS configuration the reader has no backend for it: nothing is written
    back.unlink()
    r = run_cli("decrypt", str(enc), str(back))
    assert r.returncode != 0 and not back.exists()

    # the endpoint from the environment, an alias URI, the Region from the AWS chain
    env = {"AWS_ENDPOINT_URL_KMS": moto_url, "AWS_REGION": REGION}
    enc2 = tmp_path / "in2.env"
    r = run_cli("encrypt", str(src), str(enc2), "--key", f"aws-kms:{key['alias']}", "--json",
                env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["wrapped_keys"][0]["key_id"] == key["arn"]  # the ARN, not alias
    r = run_cli("decrypt", str(enc2), str(back), "--key", "aws-kms:", env=env)
    assert r.returncode == 0, r.stderr
    assert back.read_bytes() == src.read_bytes()


def test_cli_retries_a_throttled_call_of_one_file(
    tmp_path: Path, moto_url: str, key: dict[str, str]
) -> None:
    """One file's default retry profile is `default` (3 attempts, as the AWS SDKs): a single
    ThrottlingException failed `envelope encrypt` after one request (review). `none` still
    turns retries off."""
    src, enc = tmp_path / "in.bin", tmp_path / "in.env"
    src.write_bytes(b"rows")
    throttled = (400, "ThrottlingException", 0)
    with Scripted([throttled], then=None, upstream=moto_url) as srv:
        r = run_cli("encrypt", str(src), str(enc), "--key", key["arn"], "--kms-endpoint", srv.url)
        assert r.returncode == 0, r.stderr
        assert srv.requests == ["GenerateDataKey"] * 2
    enc.unlink()
    with Scripted([throttled], then=None, upstream=moto_url) as srv:
        r = run_cli("encrypt", str(src), str(enc), "--key", key["arn"], "--kms-endpoint", srv.url,
                    env={"ENVELOPE_RETRY": "none"})  # fmt: skip
        assert r.returncode == 3 and "ThrottlingException" in r.stderr, r.stderr
        assert srv.requests == ["GenerateDataKey"] and not enc.exists()


def test_cli_refusals_exit_codes(tmp_path: Path, moto_url: str, key: dict[str, str]) -> None:
    src = tmp_path / "in.bin"
    src.write_bytes(b"x" * 100)
    missing = key["arn"].rsplit("/", 1)[0] + "/00000000-0000-4000-8000-000000000000"
    r = run_cli("encrypt", str(src), str(tmp_path / "o"), "--key", missing,
                "--kms-endpoint", moto_url)  # fmt: skip
    assert r.returncode == 3 and "NotFoundException" in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()
    r = run_cli("encrypt", str(src), str(tmp_path / "o"), "--kms-endpoint", moto_url)
    assert r.returncode == 2 and "AWS KMS keys" in r.stderr, r.stderr
    r = run_cli("encrypt", str(src), str(tmp_path / "o"), "--key", key["arn"],
                "--kms-endpoint", "http://u:secret-pw@127.0.0.1:1")  # fmt: skip
    assert r.returncode == 2 and "secret-pw" not in r.stderr


def test_encrypting_with_a_key_file_does_not_import_boto3(tmp_path: Path) -> None:
    kf, src = tmp_path / "k", tmp_path / "in"
    generate_key_file(kf)
    src.write_bytes(b"hello")
    argv = ["encrypt", str(src), str(tmp_path / "out"), "--key-file", str(kf)]
    code = (
        "import sys\n"
        "from envelope.cli.main import main\n"
        f"rc = main({argv!r})\n"
        "print(rc, ','.join(m for m in ('boto3', 'botocore') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0"], out.stdout + out.stderr


# -- the library: cache, blocking and async faces --------------------------------------------


def test_sync_many_objects_one_generate_data_key(moto_url: str, key: dict[str, str]) -> None:
    writer_kms = new_kms(moto_url)
    calls = counted(writer_kms)
    writer = Keyring(writer_kms, key["arn"], cache=CachePolicy())
    ctx = {"dataset": "sales"}
    blobs = [
        sync.encrypt_bytes(b"row %d" % i, keyring=writer, kms_context=ctx,
                           object_context={"path": f"p/{i}"})
        for i in range(50)
    ]  # fmt: skip
    writer.close()
    assert calls.sent == Counter({"GenerateDataKey": 1})
    (op, params), *_ = calls.params
    assert (op, params["KeyId"], params["EncryptionContext"]) == (
        "GenerateDataKey", key["arn"], ctx)  # fmt: skip

    reader_kms = new_kms(moto_url)
    rcalls = counted(reader_kms)
    reader = Keyring(decrypt_with=[reader_kms], cache=CachePolicy())
    assert [bytes(sync.decrypt_bytes(b, keyring=reader)) for b in blobs] == [
        b"row %d" % i for i in range(50)
    ]
    reader.close()
    assert rcalls.sent == Counter({"Decrypt": 1})
    # Decrypt named the recorded ARN and sent the encryption context
    decrypt_params = [p for op, p in rcalls.params if op == "Decrypt"]
    assert decrypt_params[0]["KeyId"] == key["arn"]
    assert decrypt_params[0]["EncryptionContext"] == ctx

    # without a cache, one call per object (the cache is what saved the other 49)
    nocache_kms = new_kms(moto_url)
    ncalls = counted(nocache_kms)
    nocache = Keyring(nocache_kms, key["arn"])
    for i in range(5):
        sync.encrypt_bytes(b"x", keyring=nocache, kms_context={"i": str(i % 2)})
    nocache.close()
    assert ncalls.sent == Counter({"GenerateDataKey": 5})


@pytest.mark.anyio
async def test_async_face_calls_boto3_off_the_event_loop(
    moto_url: str, key: dict[str, str]
) -> None:
    kms = new_kms(moto_url)
    calls = counted(kms)
    kr = Keyring(kms, f"aws-kms://{REGION}/{key['alias']}", cache=CachePolicy(),
                 retry=RetryPolicy.default())  # fmt: skip
    loop_thread = threading.get_ident()
    async with kr:
        blobs = [
            await envelope.encrypt_bytes(os.urandom(1000), keyring=kr, kms_context={"t": "a"})
            for _ in range(20)
        ]
        reader = Keyring(decrypt_with=[new_kms(moto_url)], cache=CachePolicy())
        async with reader:
            for b in blobs:
                assert len(await envelope.decrypt_bytes(b, keyring=reader)) == 1000
    assert calls.sent == Counter({"GenerateDataKey": 1})
    assert calls.threads and loop_thread not in calls.threads


def test_lake_job_kms_calls_are_what_the_cache_promises(
    tmp_path: Path, moto_url: str, key: dict[str, str]
) -> None:
    src = tmp_path / "src"
    n = 200
    for i in range(n):
        d = src / f"part={i % 7}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"obj-{i:04d}.bin").write_bytes(os.urandom(i * 13 % 2000))
    spec = KeySpec(key=key["arn"], kms_endpoint=moto_url).bulk()
    kr = spec.keyring()
    (backend,) = kr.backends
    assert isinstance(backend, AwsKms)
    calls = counted(backend)
    ctx = {"lake": "orders"}
    report = sync.run(jobs.run_job, "encrypt", str(src), str(tmp_path / "enc"), keyring=kr,
                      kms_context=ctx)  # fmt: skip
    sync.run(kr.aclose)
    assert (report.objects, report.done, report.failed) == (n, n, 0)
    # the cache's promise: one data key per (key, KMS context) for up to max_objects/max_bytes
    # within its TTL; a job of 200 objects makes one GenerateDataKey, retried by nobody
    assert calls.sent == Counter({"GenerateDataKey": 1})

    dspec = KeySpec(key="aws-kms:", kms_endpoint=moto_url, purpose="decrypt").bulk()
    dkr = dspec.keyring()
    dcalls = counted(dkr.backends[0])  # type: ignore[arg-type]
    report = sync.run(jobs.run_job, "decrypt", str(tmp_path / "enc"), str(tmp_path / "dec"),
                      keyring=dkr)  # fmt: skip
    sync.run(dkr.aclose)
    assert (report.done, report.failed) == (n, 0)
    assert dcalls.sent == Counter({"Decrypt": 1})  # one wrapped key, unwrapped once
    for f in src.rglob("*.bin"):
        assert (tmp_path / "dec" / f.relative_to(src)).read_bytes() == f.read_bytes()


def test_cli_lake_job_makes_the_calls_the_cache_promises(
    tmp_path: Path, moto_url: str, key: dict[str, str]
) -> None:
    """`envelope lake` in its own process; every request it sends is counted by a forwarding
    server in front of moto."""
    src = tmp_path / "src"
    n = 200
    for i in range(n):
        (src / f"d{i % 5}").mkdir(parents=True, exist_ok=True)
        (src / f"d{i % 5}" / f"o{i}.csv").write_bytes(b"%d," % i * (i % 50))
    with Scripted([], then=None, upstream=moto_url) as proxy:
        r = run_cli("lake", "encrypt", str(src), str(tmp_path / "enc"), "--key", key["arn"],
                    "--kms-endpoint", proxy.url, "--kms-context", "job=nightly", "--no-progress",
                    "--json")  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["done"] == n
        assert proxy.requests == ["GenerateDataKey"]
        r = run_cli("lake", "decrypt", str(tmp_path / "enc"), str(tmp_path / "dec"),
                    "--kms-endpoint", proxy.url, "--no-progress", "--json")  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert proxy.requests == ["GenerateDataKey", "Decrypt"]
    for f in src.rglob("*.csv"):
        assert (tmp_path / "dec" / f.relative_to(src)).read_bytes() == f.read_bytes()


@pytest.mark.slow
def test_big_file_round_trip(tmp_path: Path, moto_url: str, key: dict[str, str]) -> None:
    """64 MiB by default; ENVELOPE_AWS_BIG_MIB=1024 for the issue's 1 GiB."""
    mib = int(os.environ.get("ENVELOPE_AWS_BIG_MIB", "64"))
    src, enc, back = tmp_path / "big", tmp_path / "big.env", tmp_path / "big.out"
    digest = write_big_file(src, mib)
    kms = new_kms(moto_url)
    calls = counted(kms)
    kr = Keyring(kms, key["arn"])
    try:
        info = sync.encrypt(str(src), str(enc), keyring=kr, kms_context={"f": "big"},
                            durable=False)  # fmt: skip
        assert info.wrapped_keys[0].key_id == key["arn"]
        src.unlink()  # room on small disks
        sync.decrypt(str(enc), str(back), keyring=kr, durable=False)
    finally:
        kr.close()
    assert file_digest(back) == digest and back.stat().st_size == mib << 20
    assert calls.sent == Counter({"GenerateDataKey": 1, "Decrypt": 1})


# -- decrypt picks the backend from the header ---------------------------------------------------


def test_decrypt_picks_the_aws_backend_from_the_header(
    tmp_path: Path, moto_url: str, key: dict[str, str]
) -> None:
    kf = tmp_path / "k"
    generate_key_file(kf)
    file_backend = FileKeyBackend(kf)
    aws = new_kms(moto_url)
    blob = bytes(sync.encrypt_bytes(b"secret rows", keyring=Keyring(aws, key["arn"])))
    reader_aws = new_kms(moto_url)
    calls = counted(reader_aws)
    reader = Keyring(decrypt_with=[file_backend, reader_aws])
    assert bytes(sync.decrypt_bytes(blob, keyring=reader)) == b"secret rows"
    assert calls.sent == Counter({"Decrypt": 1})
    # a reader with no aws backend has none for it, and says which key it would need
    with pytest.raises(NoBackendError, match="aws-kms:" + key["arn"]):
        sync.decrypt_bytes(blob, keyring=Keyring(decrypt_with=[file_backend]))
    # the aws backend claims only well-formed aws-kms key ARNs
    assert not reader_aws.can_unwrap(WrappedKey("aws-kms", "alias/x", b"c"))
    assert not reader_aws.can_unwrap(WrappedKey("local", key["arn"], b"c"))
    assert not reader_aws.can_unwrap(
        WrappedKey("aws-kms", "arn:aws:kms:evil.example:111122223333:key/x", b"c")
    )


def test_a_reader_given_an_aws_key_decrypts_with_that_key_only(
    tmp_path: Path, moto_url: str, key: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decrypt KeySpec naming an AWS key sends it as Decrypt's KeyId, so a data key wrapped
    under another key is refused by KMS (review: the key argument chose only the backend)."""
    from envelope.errors import KmsKeyError
    from envelope.kms.keyspec import KeySpec

    other = admin(moto_url).create_key(Description="another")["KeyMetadata"]["Arn"]
    blob = bytes(sync.encrypt_bytes(b"rows", keyring=Keyring(new_kms(moto_url), key["arn"])))
    spec = KeySpec(purpose="decrypt", kms_endpoint=moto_url)

    def opened(named: str) -> bytes:
        reader = replace(spec, key=named).keyring()
        try:
            return bytes(sync.decrypt_bytes(blob, keyring=reader))
        finally:
            reader.close()

    assert opened(key["arn"]) == b"rows"
    with pytest.raises(ConfigurationError, match="no AWS Region"):  # an alias needs a Region
        opened(f"aws-kms:{key['alias']}")
    assert opened(f"aws-kms:{key['id']}") == b"rows"  # a key id: asked in the header's Region
    monkeypatch.setenv("AWS_REGION", REGION)  # (the reader's, never the header's)
    assert opened(f"aws-kms:{key['alias']}") == b"rows"
    with pytest.raises(KmsKeyError):
        opened(other)
    assert opened("aws-kms:") == b"rows"  # any key the header names


def test_a_reader_s_alias_is_resolved_in_its_own_region_not_the_header_s(
    moto_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Aliases are per Region: a reader pinned to aws-kms:alias/NAME (its Region from the AWS
    chain) resolved the alias in the Region the header names, so an object under the key
    that alias/NAME names in another Region was decrypted (review). It is refused now."""
    from envelope.errors import EnvelopeError
    from envelope.kms.keyspec import KeySpec

    other = "us-west-2"  # (REGION is the reader's own)
    name = f"alias/pin-{os.urandom(4).hex()}"
    for region in (REGION, other):
        kms = admin(moto_url, region)
        kms.create_alias(AliasName=name, TargetKeyId=kms.create_key()["KeyMetadata"]["KeyId"])
    other_arn = admin(moto_url, other).describe_key(KeyId=name)["KeyMetadata"]["Arn"]
    blob = bytes(sync.encrypt_bytes(b"rows", keyring=Keyring(new_kms(moto_url), other_arn)))
    monkeypatch.setenv("AWS_REGION", REGION)
    reader = KeySpec(purpose="decrypt", kms_endpoint=moto_url, key=f"aws-kms:{name}").keyring()
    try:
        with pytest.raises(EnvelopeError):
            sync.decrypt_bytes(blob, keyring=reader)
    finally:
        reader.close()
    there = KeySpec(purpose="decrypt", kms_endpoint=moto_url, key=f"aws-kms://{other}/{name}")
    reader = there.keyring()
    try:
        assert bytes(sync.decrypt_bytes(blob, keyring=reader)) == b"rows"
    finally:
        reader.close()


def test_botocore_debug_logs_carry_no_key_material(
    moto_url: str, key: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """At DEBUG botocore logs request parameters and response bodies: every data key of
    GenerateDataKey and Decrypt, and each one re-wrapped with Encrypt, reached the log
    (review). Those records are withheld; the others stay."""
    import base64

    kms = new_kms(moto_url)
    with caplog.at_level(logging.DEBUG):
        dk = kms.generate_data_key_blocking(key["arn"], context={})
        kms.encrypt_data_key_blocking(key["arn"], dk.plaintext, context={})
        back = kms.decrypt_data_key_blocking(dk.wrapped, context={})
    secret = base64.b64encode(bytes(dk.plaintext)).decode()
    assert back == dk.plaintext
    assert secret not in caplog.text and "Plaintext" not in caplog.text
    assert caplog.text.count("withheld by envelope") >= 3
    assert "botocore.endpoint" in caplog.text  # botocore still logs the rest
    dk.wipe()


def test_botocore_debug_logs_carry_no_session_token(
    moto_url: str, key: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """A role's session token (a bearer credential) reached botocore's debug log in the signed
    request's headers (botocore.endpoint) and its canonical request (botocore.auth) (review);
    so did the lake's S3 client's, which had no filter at all."""
    token = "SESSIONTOKEN" + os.urandom(12).hex()
    session = boto3.session.Session(
        aws_access_key_id=CREDS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDS["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=token,
    )
    kms = AwsKms(endpoint_url=moto_url, session=session)
    try:
        with caplog.at_level(logging.DEBUG):
            dk = kms.generate_data_key_blocking(key["arn"], context={})
    finally:
        kms.close_blocking()
    dk.wipe()
    assert token not in caplog.text
    assert "withheld by envelope" in caplog.text and "botocore.endpoint" in caplog.text


def test_botocore_debug_records_of_other_key_material_are_withheld(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The filter is process-wide, so it also guards an application's own boto3 client: a
    DeriveSharedSecret answer, an XKS store's credential and a CloudHSM password passed it
    (review); a record without a secret still passes whole."""
    from envelope._botocore_logs import guard_botocore_logs

    guard_botocore_logs()
    log = logging.getLogger("botocore.parsers")
    with caplog.at_level(logging.DEBUG, logger="botocore.parsers"):
        for member in ("SharedSecret", "RawSecretAccessKey", "KeyStorePassword"):
            log.debug("Response body: %s", {member: "CANARY-" + member})
        log.debug("Response body: %s", {"KeyId": "kept-as-is"})
    assert "CANARY-" not in caplog.text
    assert caplog.text.count("withheld by envelope") == 3 and "kept-as-is" in caplog.text


# -- error mapping ------------------------------------------------------------------------------


def test_moto_refusals_are_key_errors_never_retried(moto_url: str, key: dict[str, str]) -> None:
    kms = new_kms(moto_url)
    calls = counted(kms)
    retrying = RetryingKms(kms, FAST)
    missing = key["arn"].rsplit("/", 1)[0] + "/00000000-0000-4000-8000-000000000000"
    with pytest.raises(KmsKeyError, match="NotFoundException") as e:
        sync.run(retrying.generate_data_key, missing, context={})
    assert not isinstance(e.value, KmsAccessDeniedError)
    assert f"for key {missing}" in str(e.value)  # (moto, as AWS for some codes, says nothing)
    assert calls.sent == Counter({"GenerateDataKey": 1})  # FATAL: no retry anywhere

    dk = kms.generate_data_key_blocking(key["arn"], context={"a": "1"})
    with pytest.raises(KmsKeyError, match="InvalidCiphertextException"):  # wrong context
        sync.run(retrying.decrypt_data_key, dk.wrapped, context={"a": "2"})
    # moto answers AccessDeniedException when Decrypt's KeyId is not the ciphertext's key
    # (a header whose ARN was swapped for another key's): a real denial, not retried
    other = admin(moto_url).create_key()["KeyMetadata"]["Arn"]
    swapped = WrappedKey("aws-kms", other, dk.wrapped.ciphertext)
    before = calls.sent["Decrypt"]
    with pytest.raises(KmsAccessDeniedError, match="AccessDeniedException"):
        sync.run(retrying.decrypt_data_key, swapped, context={"a": "1"})
    assert calls.sent["Decrypt"] == before + 1
    dk.wipe()


def test_disabled_key_is_a_key_error() -> None:
    """moto 5 still serves GenerateDataKey on a disabled key, so the scripted server answers
    what AWS KMS answers for one: 400 DisabledException."""
    with Scripted([(400, "DisabledException", 0)]) as srv:
        kms = new_kms(srv.url)
        with pytest.raises(KmsKeyError, match="DisabledException"):
            sync.run(
                RetryingKms(kms, FAST).generate_data_key,
                f"arn:aws:kms:{REGION}:111122223333:key/k",
                context={},
            )
        assert srv.requests == ["GenerateDataKey"]


def test_throttling_is_retried_by_the_retry_layer_only(moto_url: str, key: dict[str, str]) -> None:
    throttled = (400, "ThrottlingException", 0)
    # two throttles, then moto serves it: the retry layer's third attempt succeeds
    with Scripted([throttled, throttled], then=None, upstream=moto_url) as srv:
        kms = new_kms(srv.url)
        calls = counted(kms)
        dk = sync.run(RetryingKms(kms, FAST).generate_data_key, key["arn"], context={"t": "1"})
        assert dk.wrapped.key_id == key["arn"]
        assert srv.requests == ["GenerateDataKey"] * 3  # botocore sent each attempt once
        assert calls.sent == Counter({"GenerateDataKey": 3})
        back = new_kms(moto_url).decrypt_data_key_blocking(
            dk.wrapped, context={"t": "1"})  # fmt: skip
        assert back == dk.plaintext
        dk.wipe()
    # always throttled: exactly max_attempts requests, then the retry layer gives up
    with Scripted([], then=throttled) as srv:
        kms = new_kms(srv.url)
        with pytest.raises(RetryExhaustedError) as e:
            sync.run(RetryingKms(kms, FAST).generate_data_key, key["arn"], context={})
        assert isinstance(e.value.__cause__, ThrottlingError)
        assert srv.requests == ["GenerateDataKey"] * FAST.max_attempts
    # no retry layer: one request, ThrottlingError (retryable kind) surfaces as is
    with Scripted([], then=(429, "TooManyRequestsException", 0)) as srv:
        kms = new_kms(srv.url)
        with pytest.raises(ThrottlingError):
            kms.generate_data_key_blocking(key["arn"], context={})
        assert srv.requests == ["GenerateDataKey"]


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (500, "KMSInternalException", KmsTransientError),
        (503, "DependencyTimeoutException", KmsTransientError),
        (500, "KeyUnavailableException", KmsTransientError),
        (502, "BadGateway", KmsTransientError),
        (400, "AccessDeniedException", KmsAccessDeniedError),
        (400, "UnrecognizedClientException", KmsAccessDeniedError),
        (400, "LimitExceededException", ThrottlingError),
        (400, "KMSInvalidStateException", KmsKeyError),
        (400, "IncorrectKeyException", KmsKeyError),
    ],
)
def test_error_codes_map_to_the_engines_classes(
    status: int, code: str, expected: type[Exception]
) -> None:
    arn = f"arn:aws:kms:{REGION}:111122223333:key/k"
    with Scripted([], then=(status, code, 0)) as srv:
        kms = new_kms(srv.url)
        with pytest.raises(expected, match=code) as e:
            kms.decrypt_data_key_blocking(WrappedKey("aws-kms", arn, b"c" * 64), context={})
        assert type(e.value) is expected
        assert srv.requests == ["Decrypt"]  # botocore never retried, whatever the class


def test_transport_failures_are_transient_or_timeouts(key: dict[str, str]) -> None:
    arn = key["arn"]
    # a read that takes longer than the read timeout
    with Scripted([], then=(400, "ThrottlingException", 2.0)) as srv:
        kms = new_kms(srv.url, read_timeout=0.3)
        with pytest.raises(KmsTimeoutError):
            kms.generate_data_key_blocking(arn, context={})
        assert srv.requests == ["GenerateDataKey"]
    # nothing listening
    with Scripted([]) as srv:
        url = srv.url
    with pytest.raises(KmsTransientError):
        new_kms(url, connect_timeout=1).generate_data_key_blocking(arn, context={})


def test_missing_credentials_and_region_are_configuration_errors(
    monkeypatch: pytest.MonkeyPatch, key: dict[str, str]
) -> None:
    with pytest.raises(ConfigurationError, match="Region"):
        AwsKms(endpoint_url="http://127.0.0.1:9").generate_data_key_blocking(
            "aws-kms:alias/x", context={})  # fmt: skip
    for name in CREDS:
        monkeypatch.delenv(name)
    with pytest.raises(ConfigurationError, match="credentials"):
        AwsKms(endpoint_url="http://127.0.0.1:9").generate_data_key_blocking(
            key["arn"], context={})  # fmt: skip


def test_botocore_retries_are_off_and_reprs_carry_no_secrets(moto_url: str) -> None:
    kms = new_kms(moto_url)
    config = kms.client(REGION).meta.config
    assert config.retries["total_max_attempts"] == 1
    dk = kms.generate_data_key_blocking(
        admin(moto_url).create_key()["KeyMetadata"]["Arn"], context={})  # fmt: skip
    secret = bytes(dk.plaintext)
    for text in (repr(kms), repr(dk), repr(dk.wrapped)):
        assert secret.hex() not in text and "test-secret" not in text
    dk.wipe()
    assert dk.plaintext == bytearray(32)
    kms.close_blocking()
    # ClosedError, as the embedded KMS says it (keyrings sharing a backend close it together)
    with pytest.raises(ClosedError, match="closed"):
        kms.client("us-east-1")


class Answering:
    """An HTTP server answering every KMS request with one JSON body (status 200)."""

    def __init__(self, body: dict[str, Any]) -> None:
        payload = json.dumps(body).encode()
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                outer.requests.append(self.headers.get("X-Amz-Target", "").rsplit(".", 1)[-1])
                _send_json(self, 200, payload)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Answering:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


_B64_KEY = "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE="  # 32 bytes of "A"
_MRK = "mrk-1234abcd12ab34cd56ef1234567890ab"


def test_a_replica_of_a_multi_region_key_decrypts_what_its_primary_sealed() -> None:
    """A replica's Decrypt answer names the replica: a reader in another Region was refused
    every object AWS KMS had decrypted for it (review). Another key's answer is still
    refused, in any Region, and so is another account's replica."""
    primary = f"arn:aws:kms:us-east-1:111122223333:key/{_MRK}"
    wrapped = WrappedKey("aws-kms", primary, b"\x01" * 64)
    cases = {
        f"arn:aws:kms:{REGION}:111122223333:key/{_MRK}": True,
        primary: True,
        f"arn:aws:kms:{REGION}:999922223333:key/{_MRK}": False,
        f"arn:aws:kms:{REGION}:111122223333:key/mrk-ffff": False,
    }
    for answered, accepted in cases.items():
        with Answering({"KeyId": answered, "Plaintext": _B64_KEY}) as srv:
            kms = new_kms(srv.url)
            if accepted:
                assert kms.decrypt_data_key_blocking(wrapped, context={}) == b"A" * 32
            else:
                with pytest.raises(KmsKeyError, match="not with a data key"):
                    kms.decrypt_data_key_blocking(wrapped, context={})
    plain = f"arn:aws:kms:us-east-1:111122223333:key/{'1' * 8}-1111-1111-1111-{'1' * 12}"
    with Answering({"KeyId": plain.replace("us-east-1", REGION), "Plaintext": _B64_KEY}) as srv:
        with pytest.raises(KmsKeyError):  # a single-Region key's namesake elsewhere is not it
            new_kms(srv.url).decrypt_data_key_blocking(
                WrappedKey("aws-kms", plain, b"\x01" * 64), context={}
            )


def test_malformed_answers_are_transient_and_another_keys_answer_is_refused() -> None:
    """A 200 answer without its members (a truncated body parses as one) raised a bare
    KeyError, a blob that is not base64 a binascii.Error: tracebacks, exit 1, no retry. They
    are KmsTransientError now (retried). A GenerateDataKey answered for another key than the
    ARN asked for went into the header: refused."""
    asked = f"arn:aws:kms:{REGION}:111122223333:key/{_MRK}"
    with Answering({"KeyId": asked}) as srv:
        with pytest.raises(KmsTransientError, match="without Plaintext"):
            new_kms(srv.url).generate_data_key_blocking(asked, context={})
        wrapped = WrappedKey("aws-kms", asked, b"\x01" * 64)
        with pytest.raises(KmsTransientError, match="without Plaintext"):
            new_kms(srv.url).decrypt_data_key_blocking(wrapped, context={})
    with Answering({"KeyId": asked, "Plaintext": "!!not base64!!"}) as srv:
        with pytest.raises(KmsTransientError):
            new_kms(srv.url).decrypt_data_key_blocking(wrapped, context={})
    other = f"arn:aws:kms:us-east-1:111122223333:key/{_MRK}"
    body = {"KeyId": other, "Plaintext": _B64_KEY, "CiphertextBlob": _B64_KEY}
    with Answering(body) as srv:
        with pytest.raises(KmsKeyError, match="not for the key asked"):
            new_kms(srv.url).generate_data_key_blocking(asked, context={})
        with pytest.raises(KmsKeyError, match="not for the key asked"):
            new_kms(srv.url).encrypt_data_key_blocking(asked, b"A" * 32, context={})
        # an alias is resolved by KMS: any key ARN it answers for
        dk = new_kms(srv.url, region=REGION).generate_data_key_blocking("alias/etl", context={})
        assert dk.wrapped.key_id == other


def test_botocore_debug_logs_carry_no_request_signature(
    moto_url: str, key: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """The signed request's Authorization header and botocore.auth's `Signature:` line
    reached the debug log: a request replayed from them within the clock-skew window gave a
    Decrypt's data key to anyone who could read the log (review). Withheld; the rest stays."""
    import re

    kms = new_kms(moto_url)
    with caplog.at_level(logging.DEBUG):
        dk = kms.generate_data_key_blocking(key["arn"], context={})
    dk.wipe()
    assert "botocore.endpoint" in caplog.text  # botocore still logs the rest
    assert "AWS4-HMAC-SHA256 Credential" not in caplog.text
    assert not re.search(r"Signature[=:]\s*[0-9a-f]{64}", caplog.text)


def test_a_malformed_endpoint_url_is_not_echoed_with_its_password() -> None:
    """A KMS endpoint URL with credentials is refused; a malformed one was quoted whole in
    the error, its password included (review)."""
    from envelope.errors import ConfigurationError
    from envelope.kms.aws import check_endpoint_url

    for url in ("http://AKIAX:EPSECRET2@kms.example.com:99999", "ftp://AKIAX:EPSECRET1@kms.x"):
        with pytest.raises(ConfigurationError) as e:
            check_endpoint_url(url)
        assert "EPSECRET" not in str(e.value), e.value


def test_the_configured_region_is_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A backend without `region=` read $AWS_REGION at every call: after it changed, a bare
    `alias/lake` went to another Region's key of that name, while the data-key cache (bound to
    the backend and the key id) went on handing out the first Region's data keys, so an object
    meant for eu-west-1 was sealed under a us-east-1 key (review). The Region is now the one
    found at the first call, for the backend's life."""
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    kms = AwsKms(endpoint_url="http://127.0.0.1:9")
    assert kms.client().meta.region_name == "us-east-1"
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    assert kms.client().meta.region_name == "us-east-1"
    assert AwsKms(endpoint_url="http://127.0.0.1:9").client().meta.region_name == "eu-west-1"
