"""`envelope serve` settings: the example file loads; bad files are refused precisely."""

from __future__ import annotations

from pathlib import Path

import pytest

from envelope.errors import ConfigurationError
from envelope.server.config import ServerSettings, load_settings

REPO = Path(__file__).resolve().parents[2]


def test_example_config_loads() -> None:
    s = load_settings(REPO / "configs" / "kms-server.toml")
    assert (s.host, s.port, s.workers) == ("127.0.0.1", 8080, 2)
    assert s.quotas["cryptographic"] == 5500
    assert ServerSettings.from_env(s.to_env()) == s


def test_defaults_bind_loopback() -> None:
    assert load_settings(None).host == "127.0.0.1"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[server]\nprot = 1\n", "unknown key 'prot'"),
        ('[store]\nhome = "a\\u0000b"\n', "home holds a NUL character"),
        ('[tls]\ncert = "c\\u0000"\nkey = "k"\n', "cert holds a NUL character"),
        ("[srv]\n", "unknown table [srv]"),
        ('[server]\nport = "80"\n', "wrong type"),
        ("[server]\nworkers = 0\n", "workers must be at least 1"),
        ('[tls]\ncert = "a.pem"\n', "both a certificate and a key"),
        ("[quotas]\ncryptographic = 0\n", "must be a number > 0"),
        ('[store]\nroot_key = "hsm"\n', "root_key must be"),
        ("[server\n", "not valid TOML"),
        ("[quotas]\ncryptograhpic = 5\n", "neither 'cryptographic' nor a KMS operation"),
        ("[quotas]\ncryptographic = 5500\nDecrypt = 1\n", "shares the 'cryptographic' quota"),
        ("[server]\nheader_timeout_seconds = 0\n", "header_timeout_seconds must be"),
        ("[server]\nbody_timeout_seconds = -1\n", "body_timeout_seconds must be"),
        ("[server]\ngraceful_shutdown_seconds = nan\n", "graceful_shutdown_seconds must be"),
        ("[server]\ngraceful_shutdown_seconds = inf\n", "graceful_shutdown_seconds must be"),
        ("[server]\nheader_timeout_seconds = inf\n", "header_timeout_seconds must be"),
        ("[server]\nbody_timeout_seconds = nan\n", "body_timeout_seconds must be"),
    ],
)
def test_bad_configs_are_refused(tmp_path: Path, text: str, needle: str) -> None:
    p = tmp_path / "kms.toml"
    p.write_text(text)
    with pytest.raises(ConfigurationError, match=None) as e:
        load_settings(p)
    assert needle in str(e.value)


def test_a_passphrase_pasted_as_the_root_key_provider_is_not_echoed(tmp_path: Path) -> None:
    p = tmp_path / "kms.toml"
    p.write_text('[store]\nroot_key = "correct horse battery staple"\n')
    with pytest.raises(ConfigurationError) as e:
        load_settings(p)
    assert "root_key must be" in str(e.value) and "horse" not in str(e.value)


def test_relative_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    p = tmp_path / "etc" / "kms.toml"
    p.parent.mkdir()
    p.write_text('[store]\nhome = "../kms"\n[tls]\ncert = "c.pem"\nkey = "k.pem"\n')
    s = load_settings(p)
    assert s.home == str(tmp_path / "kms")
    assert s.tls_cert == str(tmp_path / "etc" / "c.pem")


def test_flags_override_the_file() -> None:
    s = ServerSettings(port=9000).with_overrides(port=None, host="0.0.0.0")
    assert (s.host, s.port) == ("0.0.0.0", 9000)


def test_the_root_key_may_be_in_an_hsm(tmp_path: Path) -> None:
    """`root_key = "pkcs11:..."`: the server's store is opened with its root key in a token."""
    from envelope.server.run import _root
    from envelope.service.rootkey import Pkcs11RootKey

    uri = "pkcs11:token=kms;object=kms-root?module-path=/usr/lib/softhsm/libsofthsm2.so"
    p = tmp_path / "kms.toml"
    p.write_text(f'[store]\nroot_key = "{uri}"\n')
    s = load_settings(p)
    assert s.root_key == uri and ServerSettings.from_env(s.to_env()) == s
    provider = _root(s)
    assert isinstance(provider, Pkcs11RootKey) and provider.label == "kms-root"


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_port_in_use_is_a_usage_error_naming_the_address(tmp_path: Path, workers: str) -> None:
    """uvicorn ends the process with its own status 3 (which reads as a KMS error here) when
    it cannot bind; `envelope serve` says which address and exits 2."""
    import os
    import socket
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENVELOPE_", "AWS_"))}
    from envelope.service import open_service

    open_service(tmp_path / "h").close()  # (serve needs a store)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "envelope.cli.main",
                "serve",
                "--home",
                str(tmp_path / "h"),
                "--port",
                str(port),
                "--workers",
                workers,
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
    assert r.returncode == 2, r.stderr
    assert f"could not start on 127.0.0.1:{port}" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_serve_on_a_home_without_a_store_is_a_usage_error(tmp_path: Path) -> None:
    """A mistyped --home served a new, empty KMS (no access key could sign a request) and
    left a store behind (review)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENVELOPE_", "AWS_"))}
    home = tmp_path / "typo"
    r = subprocess.run(
        [sys.executable, "-m", "envelope.cli.main", "serve", "--home", str(home), "--port", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode == 2 and "no embedded KMS store" in r.stderr, r.stderr
    assert not home.exists()


def test_a_store_serve_cannot_open_is_a_usage_error(tmp_path: Path) -> None:
    """A wrong root key, or a home that is a file, was a traceback from `envelope serve`."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENVELOPE_", "AWS_"))}

    def serve(home: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "envelope.cli.main",
                "serve",
                "--home",
                str(home),
                "--port",
                "1",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )

    home = tmp_path / "home"
    made = subprocess.run(
        [sys.executable, "-m", "envelope.cli.main", "keys", "create", "--home", str(home)],
        capture_output=True,
        env=env,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    (home / "root.key").write_bytes(bytes(32))
    (tmp_path / "file").write_bytes(b"")
    for where, said in (
        (home, "root key does not open this store"),
        (tmp_path / "file", "is not a folder"),
    ):
        r = serve(where)
        assert r.returncode == 2 and said in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_a_quota_below_one_request_per_worker_still_admits_requests() -> None:
    """CreateKey = 5 over 8 workers is 0.625/s each: the bucket could not be made (capacity
    below one) and every CreateKey answered KMSInternalException (500)."""
    from envelope._ratelimit import RateQuota
    from envelope.errors import ThrottlingError

    now = [0.0]
    quota = RateQuota({"CreateKey": 5 / 8}, clock=lambda: now[0])
    quota.check("CreateKey")
    with pytest.raises(ThrottlingError):
        quota.check("CreateKey")
    now[0] += 1.7
    quota.check("CreateKey")


def test_quotas_over_one_shared_folder_enforce_one_rate(tmp_path: Path) -> None:
    """Two quotas over one folder (two workers' processes, or here two file descriptions,
    which `flock` excludes alike) share their buckets: 10 admitted between them, not 10
    each, then both throttle, and the refill is shared too."""
    from envelope._ratelimit import RateQuota
    from envelope.errors import ThrottlingError

    now = [0.0]
    a, b = (RateQuota({"cryptographic": 10}, clock=lambda: now[0], shared_dir=str(tmp_path))
            for _ in "ab")  # fmt: skip
    admitted = 0
    for i in range(30):
        try:
            (a if i % 2 else b).check("Encrypt")
            admitted += 1
        except ThrottlingError as e:
            assert "(10/s)" in str(e)  # the configured rate, not a worker's share
    assert admitted == 10
    now[0] += 0.5
    admitted = 0
    for quota in (a, b, a, b, a, b, a, b):
        try:
            quota.check("GenerateDataKey")
            admitted += 1
        except ThrottlingError:
            pass
    assert admitted == 5


def test_a_shared_quota_bucket_holds_between_threads_too(tmp_path: Path) -> None:
    """`flock` excludes other open files, not other threads over the same one: threads of one
    worker (calls run on worker threads) lost updates, and 160,000 takes of a bucket with no
    refill removed 89,759 tokens (review). With no refill, exactly the capacity is admitted."""
    import threading

    from envelope._ratelimit import SharedTokenBucket

    bucket = SharedTokenBucket(str(tmp_path / "b"), 1.0, 20_000, clock=lambda: 0.0)
    admitted = [0] * 8

    def take(i: int) -> None:
        for _ in range(4_000):
            if bucket.take() == 0.0:
                admitted[i] += 1

    import sys

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch inside take(), as they may in a busy worker
    try:
        threads = [threading.Thread(target=take, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert sum(admitted) == 20_000


def test_one_client_under_the_quota_is_not_throttled_by_one_worker_s_share(
    tmp_path: Path,
) -> None:
    """A boto3 client's keep-alive connection stays on one worker, which enforced only its
    share of the quota (rate / workers): a client paced at 70% of the configured rate was
    throttled (review). The workers share one bucket now."""
    import time

    from .conftest import start_server

    config = tmp_path / "server.toml"
    config.write_text("[quotas]\ncryptographic = 20\n")
    server = start_server(
        tmp_path / "home", tmp_path / "server.log", "--workers", "2", "--config", str(config)
    )
    try:
        kms = server.client()
        key = kms.create_key()["KeyMetadata"]["KeyId"]
        throttled = 0
        for _ in range(40):  # 14 a second for about 3 s, on one connection
            started = time.monotonic()
            try:
                kms.encrypt(KeyId=key, Plaintext=b"p")
            except Exception as e:
                assert "ThrottlingException" in str(e), e
                throttled += 1
            time.sleep(max(0.0, 1 / 14 - (time.monotonic() - started)))
        assert throttled == 0
    finally:
        server.stop()


def test_graceful_shutdown_zero_is_one_second_not_for_ever() -> None:
    """uvicorn reads a timeout of 0 (or None) as "wait for ever": a client holding a
    connection then held up every shutdown."""
    from envelope._serving import base_options

    for given, sent in ((0, 1), (0.4, 1), (2.5, 3), (30, 30)):
        assert (
            base_options(ServerSettings(graceful_shutdown_seconds=given))[
                "timeout_graceful_shutdown"
            ]
            == sent
        )


@pytest.mark.parametrize(
    ("host", "warned"),
    [("127.0.0.1", False), ("::1", False), ("localhost", False), ("0.0.0.0", True),
     ("192.0.2.7", True), ("kms.example", True)],
)  # fmt: skip
def test_plain_http_beyond_loopback_is_warned_about(
    monkeypatch: pytest.MonkeyPatch, host: str, warned: bool
) -> None:
    """docs/server.md: "Serve anything beyond loopback only with TLS" (responses carry data
    keys; signed requests can be replayed), yet `--host 0.0.0.0` without TLS started without
    a word (review)."""
    import logging

    from envelope.server import run

    class Closed:
        def close(self) -> None:
            pass

    monkeypatch.setattr(run, "open_store", lambda settings: Closed())
    monkeypatch.setattr(run, "authenticator_for", lambda service: None)
    monkeypatch.setattr(run, "serve_with", lambda *args: None)
    seen: list[str] = []

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = Seen(logging.WARNING)
    logging.getLogger("envelope.server").addHandler(handler)
    try:
        run.serve(ServerSettings(host=host))
    finally:
        logging.getLogger("envelope.server").removeHandler(handler)
    assert any("plain HTTP" in m and host in m for m in seen) == warned, seen
