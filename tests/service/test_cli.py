"""`envelope keys ...` and `envelope audit ...` against a real store under $ENVELOPE_HOME."""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
from pathlib import Path

import pytest

from envelope.cli import audit as audit_cli
from envelope.cli import keys as keys_cli
from envelope.cli._common import envelope_warnings


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="envelope")
    sub = parser.add_subparsers(dest="command", required=True)
    keys_cli.register(sub)
    audit_cli.register(sub)
    args = parser.parse_args(argv)
    with envelope_warnings():  # as `envelope.cli.main` runs every command
        return int(args.handler(args))


@pytest.fixture(autouse=True)
def env_home(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ENVELOPE_HOME", str(home))
    monkeypatch.delenv("ENVELOPE_KMS_PASSPHRASE", raising=False)
    monkeypatch.delenv("ENVELOPE_REGION", raising=False)
    return home


def jrun(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict:  # type: ignore[type-arg]
    capsys.readouterr()
    assert run([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def test_create_alias_verify_flow(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    meta = jrun(["keys", "create", "--description", "demo"], capsys)["KeyMetadata"]
    assert meta["KeyId"] and meta["Arn"].endswith(meta["KeyId"]) and meta["Description"] == "demo"
    assert run(["keys", "alias", "create", "alias/demo", meta["KeyId"]]) == 0
    assert jrun(["keys", "describe", "alias/demo"], capsys)["KeyMetadata"]["KeyId"] == meta["KeyId"]
    keys = jrun(["keys", "list"], capsys)["Keys"]
    assert [k["KeyId"] for k in keys] == [meta["KeyId"]]
    capsys.readouterr()
    assert run(["audit", "verify"]) == 0
    # edit one record: verify fails and names it
    conn = sqlite3.connect(home / "kms.sqlite3")
    conn.execute("UPDATE audit SET body = replace(body, 'CreateAlias', 'DeleteAlias') WHERE seq=2")
    conn.commit()
    conn.close()
    capsys.readouterr()
    assert run(["audit", "verify"]) == 1
    err = capsys.readouterr().err
    assert "record 2" in err


def test_every_lifecycle_command(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kid = jrun(["keys", "create", "--tag", "team=a"], capsys)["KeyMetadata"]["KeyId"]
    assert run(["keys", "disable", kid]) == 0
    assert jrun(["keys", "describe", kid], capsys)["KeyMetadata"]["KeyState"] == "Disabled"
    assert run(["keys", "enable", kid]) == 0
    assert run(["keys", "update-description", kid, "renamed"]) == 0
    st = jrun(["keys", "rotation", "on", kid, "--period", "90"], capsys)
    assert st["KeyRotationEnabled"] is True and st["RotationPeriodInDays"] == 90
    assert jrun(["keys", "rotate", kid], capsys)["KeyId"].endswith(kid)
    assert len(jrun(["keys", "rotation", "list", kid], capsys)["Rotations"]) == 1
    assert run(["keys", "rotation", "off", kid]) == 0
    assert jrun(["keys", "rotation", "status", kid], capsys)["KeyRotationEnabled"] is False
    tags = jrun(["keys", "tag", kid, "env=prod"], capsys)["Tags"]
    assert {t["TagKey"] for t in tags} == {"env", "team"}
    assert jrun(["keys", "untag", kid, "env"], capsys)["Tags"] == [
        {"TagKey": "team", "TagValue": "a"}
    ]
    assert run(["keys", "alias", "create", "alias/a", kid]) == 0
    other = jrun(["keys", "create"], capsys)["KeyMetadata"]["KeyId"]
    assert run(["keys", "alias", "update", "alias/a", other]) == 0
    aliases = jrun(["keys", "alias", "list"], capsys)["Aliases"]
    assert [(a["AliasName"], a["TargetKeyId"]) for a in aliases] == [("alias/a", other)]
    assert run(["keys", "alias", "delete", "alias/a"]) == 0
    out = jrun(["keys", "schedule-deletion", kid, "--days", "7"], capsys)
    assert out["KeyState"] == "PendingDeletion" and out["PendingWindowInDays"] == 7
    assert run(["keys", "cancel-deletion", kid]) == 0
    # human-readable output works too
    capsys.readouterr()
    assert run(["keys", "list"]) == 0 and kid[:8] in capsys.readouterr().out
    assert run(["audit", "tail", "-n", "3"]) == 0
    tail = jrun(["audit", "tail", "-n", "2"], capsys)["Records"]
    assert len(tail) == 2 and tail[-1]["operation"] == "DescribeKey"  # `keys list` describes
    assert jrun(["audit", "seal"], capsys)["SealedThrough"] > 0


def test_an_alias_names_the_key_of_a_management_command(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """AWS's management operations refuse an alias ("key ID or key ARN"); the command line
    takes the alias people know and looks it up with DescribeKey first, as the caller."""
    kid = jrun(["keys", "create"], capsys)["KeyMetadata"]["KeyId"]
    assert run(["keys", "alias", "create", "alias/etl", kid]) == 0
    st = jrun(["keys", "rotation", "on", "alias/etl"], capsys)
    assert st["KeyRotationEnabled"] is True and st["KeyId"].endswith(kid)
    tail = jrun(["audit", "tail", "-n", "3"], capsys)["Records"]
    assert [r["operation"] for r in tail] == [
        "DescribeKey",
        "EnableKeyRotation",
        "GetKeyRotationStatus",
    ]
    assert all(r["key_id"].endswith(kid) for r in tail)
    capsys.readouterr()
    assert run(["keys", "disable", "alias/none"]) == 3  # an unknown alias: the lookup's answer
    assert "NotFoundException" in capsys.readouterr().err


def test_import_and_replicate_commands(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kid = jrun(["keys", "create", "--origin", "EXTERNAL"], capsys)["KeyMetadata"]["KeyId"]
    material = tmp_path / "material.bin"
    material.write_bytes(bytes(range(32)))
    first = jrun(["keys", "import", "local", kid, str(material)], capsys)["KeyMaterialId"]
    assert jrun(["keys", "describe", kid], capsys)["KeyMetadata"]["KeyState"] == "Enabled"
    # new material to rotate to, the rotation, and the list of materials
    material.write_bytes(bytes(range(1, 33)))
    args = ["--new", "--material-description", "second"]
    second = jrun(["keys", "import", "local", kid, str(material), *args], capsys)
    assert run(["keys", "rotate", kid]) == 0
    rotations = jrun(["keys", "rotation", "list", kid, "--all-material"], capsys)["Rotations"]
    assert [(r["KeyMaterialId"], r["KeyMaterialState"]) for r in rotations] == [
        (first, "NON_CURRENT"),
        (second["KeyMaterialId"], "CURRENT"),
    ]
    assert rotations[1]["KeyMaterialDescription"] == "second"
    gone = jrun(["keys", "import", "delete", kid, "--material-id", first], capsys)
    assert gone["KeyMaterialId"] == first
    material.write_bytes(bytes(range(32)))
    again = ["keys", "import", "local", kid, str(material), "--material-id", first]
    assert jrun(again, capsys)["KeyMaterialId"] == first
    assert run(["keys", "import", "delete", kid]) == 0
    out = jrun(["keys", "import", "params", kid, "--out-dir", str(tmp_path)], capsys)
    assert Path(out["PublicKeyFile"]).exists() and Path(out["ImportTokenFile"]).exists()
    mrk = jrun(["keys", "create", "--multi-region"], capsys)["KeyMetadata"]["KeyId"]
    rep = jrun(["keys", "replicate", mrk, "eu-west-1"], capsys)["ReplicaKeyMetadata"]
    assert rep["Arn"].startswith("arn:aws:kms:eu-west-1:")
    listed = jrun(["keys", "list", "--region", "eu-west-1"], capsys)["Keys"]
    assert [k["KeyId"] for k in listed] == [mrk]
    assert run(["keys", "update-primary", mrk, "eu-west-1"]) == 0


@pytest.mark.parametrize(
    ("spec", "make", "pem"),
    [
        ("RSA_2048", "rsa", False),
        ("RSA_3072", "rsa", True),
        ("ECC_NIST_P256", "p256", True),
        ("ECC_NIST_P521", "p521", False),
    ],
)
def test_import_local_takes_private_keys_in_der_or_pem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], spec: str, make: str, pem: bool
) -> None:
    """A private key is too long for one RSAES_OAEP block: `import local` wraps it with
    RSA_AES_KEY_WRAP_SHA_256 (it said only "Encryption failed" before), and a PEM file is
    turned into the PKCS#8 DER AWS asks for. The imported key then signs, and the signature
    verifies under the local key."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

    if make == "rsa":
        private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = rsa.generate_private_key(
            65537, int(spec.split("_")[1])
        )
    else:
        private = ec.generate_private_key(ec.SECP256R1() if make == "p256" else ec.SECP521R1())
    encoding = serialization.Encoding.PEM if pem else serialization.Encoding.DER
    material = tmp_path / "key.material"
    material.write_bytes(
        private.private_bytes(
            encoding, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    kid = jrun(
        [
            "keys",
            "create",
            "--origin",
            "EXTERNAL",
            "--key-spec",
            spec,
            "--key-usage",
            "SIGN_VERIFY",
        ],
        capsys,
    )["KeyMetadata"]["KeyId"]
    jrun(["keys", "import", "local", kid, str(material)], capsys)
    from envelope.service import open_service

    with open_service() as svc:
        algorithm = "RSASSA_PSS_SHA_256" if make == "rsa" else "ECDSA_SHA_256"
        if make == "p521":
            algorithm = "ECDSA_SHA_512"
        sig = svc.sign(key_id=kid, message=b"m", signing_algorithm=algorithm)["Signature"]
    public = private.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        public.verify(sig, b"m", pss, hashes.SHA256())
    else:
        digest = hashes.SHA256() if make == "p256" else hashes.SHA512()
        public.verify(sig, b"m", ec.ECDSA(digest))


def test_import_local_refuses_unusable_material(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kid = jrun(["keys", "create", "--origin", "EXTERNAL"], capsys)["KeyMetadata"]["KeyId"]
    bad_pem = tmp_path / "bad.pem"
    bad_pem.write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    huge = tmp_path / "huge.bin"
    huge.write_bytes(b"x" * 400)
    for path, words in ((bad_pem, "unencrypted private key"), (huge, "neither key material")):
        capsys.readouterr()
        assert run(["keys", "import", "local", kid, str(path)]) == 2
        assert words in capsys.readouterr().err


@pytest.mark.parametrize(
    ("spec", "usage"),
    [
        ("ECC_NIST_EDWARDS25519", "SIGN_VERIFY"),
        ("ML_DSA_44", "SIGN_VERIFY"),
        ("ML_KEM_768", "ENCAPSULATE_DECAPSULATE"),
        ("HMAC_256", "GENERATE_VERIFY_MAC"),
    ],
)
def test_create_takes_the_key_usage_of_the_spec(
    home: Path, capsys: pytest.CaptureFixture[str], spec: str, usage: str
) -> None:
    meta = jrun(["keys", "create", "--key-spec", spec], capsys)["KeyMetadata"]
    assert (meta["KeySpec"], meta["KeyUsage"]) == (spec, usage)


def test_refusals_exit_3_and_name_the_code(capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert run(["keys", "create", "--key-spec", "AES_256"]) == 3
    assert "ValidationException" in capsys.readouterr().err
    assert run(["keys", "create"]) == 0
    capsys.readouterr()
    assert run(["keys", "describe", "alias/nope"]) == 3
    assert "NotFoundException" in capsys.readouterr().err


def test_a_missing_store_is_created_only_by_a_command_that_makes_something(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`keys list --home typo` answered "no keys" and left a new store at `typo`; a command
    that only reads or changes what exists now says there is no store (exit 2), and only
    CreateKey, a user or role, an access key or an HSM cluster starts one."""
    from envelope.cli.main import main

    typo = tmp_path / "typo"
    for argv in (
        ["keys", "list"],
        ["keys", "describe", "alias/x"],
        ["audit", "tail"],
        ["iam", "list"],
        ["grants", "retirable", "arn:aws:iam::000000000000:root"],
        ["keystores", "describe"],
        ["keys", "enable", "1234abcd-12ab-34cd-56ef-1234567890ab"],
    ):
        capsys.readouterr()
        assert main([*argv, "--home", str(typo)]) == 2, argv
        assert "no embedded KMS store at" in capsys.readouterr().err
        assert not typo.exists(), argv
    assert main(["iam", "create-user", "app", "--home", str(typo)]) == 0
    assert (typo / "kms.sqlite3").exists()
    assert main(["iam", "list", "--home", str(typo), "--json"]) == 0


def test_wrong_root_key_exits_2(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["keys", "create", "--json"]) == 0
    (home / "root.key").write_bytes(bytes(32))
    capsys.readouterr()
    assert run(["keys", "list"]) == 2
    assert "root key" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "what"),
    [("audit_sk", "audit signing key"), ("key_row_mac_key", "key-row MAC key")],
)
def test_a_replaced_sealed_row_is_tampering_not_a_wrong_root_key(
    home: Path, capsys: pytest.CaptureFixture[str], name: str, what: str
) -> None:
    """The root key opens the store's verifier, so a sealed meta row that no longer opens
    under it was replaced: `audit verify` reports a failed verification (exit 1, an ALARM),
    and every other command refuses the store as tampered (exit 3), never "wrong root key"."""
    assert run(["keys", "create", "--json"]) == 0
    conn = sqlite3.connect(home / "kms.sqlite3")
    (sealed,) = conn.execute("SELECT value FROM meta WHERE name=?", (name,)).fetchone()
    conn.execute(  # one byte of the seal flipped: the root key no longer opens this row
        "UPDATE meta SET value=? WHERE name=?",
        (bytes(sealed[:-1]) + bytes([sealed[-1] ^ 1]), name),
    )
    conn.commit()
    conn.close()
    capsys.readouterr()
    assert run(["audit", "verify"]) == 1
    err = capsys.readouterr().err
    assert "ALARM" in err and what in err and "wrong root key" not in err
    assert run(["keys", "list"]) == 3
    err = capsys.readouterr().err
    assert "ALARM" in err and what in err


def test_audit_commands_refuse_an_explicit_as(home: Path) -> None:
    """The audit commands read the log with the store's root key: an explicit --as would be
    ignored, so it is refused (exit 2); $ENVELOPE_PRINCIPAL, a shell-wide default, is not."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "ENVELOPE_HOME": str(home)}

    def envelope(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "envelope.cli.main", *args],
            capture_output=True,
            text=True,
            env={**env, **extra},
            timeout=120,
        )

    assert envelope("keys", "create", "--json").returncode == 0
    who = "arn:aws:iam::000000000000:user/auditor"
    for command in (["tail", "-n", "1"], ["seal"], ["verify"]):
        r = envelope("audit", *command, "--as", who)
        assert r.returncode == 2 and "--as does not apply" in r.stderr, (command, r.stderr)
        r = envelope("audit", *command, ENVELOPE_PRINCIPAL=who)
        assert r.returncode == 0, (command, r.stderr)


def test_audit_verify_fingerprint(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A malformed --fingerprint is a usage error (it was taken as a key every digest fails);
    a well-formed wrong one fails the chain without claiming that digests were deleted."""
    jrun(["keys", "create"], capsys)
    assert run(["audit", "seal"]) == 0
    report = jrun(["audit", "verify"], capsys)
    text = json.dumps(report)
    real = re.search(r"sha256:[0-9a-f]{64}", text)
    assert real is not None, report
    with pytest.raises(SystemExit) as info:
        run(["audit", "verify", "--fingerprint", "sha256:00"])
    assert info.value.code == 2
    assert "is not a key fingerprint" in capsys.readouterr().err
    capsys.readouterr()
    assert run(["audit", "verify", "--fingerprint", "sha256:" + "0" * 64]) == 1
    err = capsys.readouterr().err
    assert "not the expected" in err and "were deleted" not in err
    assert (
        run(["audit", "verify", "--fingerprint", real.group(0).upper().replace("SHA256", "sha256")])
        == 0
    )


def test_a_bad_valid_to_names_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--valid-to tomorrow` said only "Invalid isoformat string: 'tomorrow'" (review)."""
    import os

    from envelope.cli.main import main

    kid = jrun(["keys", "create", "--origin", "EXTERNAL"], capsys)["KeyMetadata"]["KeyId"]
    material = tmp_path / "m.bin"
    material.write_bytes(os.urandom(32))
    capsys.readouterr()
    assert main(["keys", "import", "local", kid, str(material), "--valid-to", "tomorrow"]) == 2
    assert "--valid-to 'tomorrow' is not an ISO 8601" in capsys.readouterr().err


def test_keys_list_names_a_tampered_key_and_lists_the_rest(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One edited key row made `keys list` print only the alarm and list nothing (review):
    the others are listed, that key is named, and the command still exits 3. --brief makes
    no DescribeKey call (one audit record per key otherwise)."""
    from .test_key_rows import edit_meta

    ids = [jrun(["keys", "create"], capsys)["KeyMetadata"]["KeyId"] for _ in range(3)]
    edit_meta(home, ids[1], Description="edited outside the KMS")
    capsys.readouterr()
    assert run(["keys", "list", "--json"]) == 3
    out, err = capsys.readouterr()
    assert out, err
    listed = json.loads(out)["Keys"]
    assert sorted(k["KeyId"] for k in listed) == sorted(ids)
    assert [k["KeyState"] for k in listed if k["KeyId"] != ids[1]] == ["Enabled", "Enabled"]
    assert "ALARM" in err and ids[1] in err
    from envelope.service import open_service

    assert run(["keys", "list", "--brief", "--json"]) == 0
    assert [k["KeyId"] for k in json.loads(capsys.readouterr().out)["Keys"]] == [
        k["KeyId"] for k in listed
    ]
    with open_service(home) as svc:
        ops = [r["operation"] for r in svc.audit_tail(2)]  # the --brief listing's
    assert sorted(ops) == ["ListAliases", "ListKeys"], ops


def test_errors_escape_what_the_caller_typed(capsys: pytest.CaptureFixture[str]) -> None:
    """A key id with a newline and a terminal escape split the error line and recoloured the
    terminal (review): one line, escaped."""
    jrun(["keys", "create"], capsys)  # (a store to look in)
    assert run(["keys", "describe", "a\nb\x1b[31m"]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err and "\\x1b" in err
