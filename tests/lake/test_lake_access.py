"""End to end (issue 10's floor): a lake job run as a role that may only encrypt, with one
encryption context, encrypts; decrypting as that role is refused with exit code 3 and a message
naming kms:Decrypt; a reader role decrypts. A real store, real roles and policies, the real
command line (in process for the setup, in a process of its own where the exit code is the
claim)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from envelope.cli.main import main

from .conftest import make_tree, read_tree

ACCOUNT = "000000000000"
WRITER = f"arn:aws:sts::{ACCOUNT}:assumed-role/Writer/job"
READER = f"arn:aws:sts::{ACCOUNT}:assumed-role/Reader/job"


def _policy(action: str, condition: dict[str, object] | None = None) -> str:
    statement: dict[str, object] = {"Effect": "Allow", "Action": action, "Resource": "*"}
    if condition:
        statement["Condition"] = condition
    return json.dumps({"Version": "2012-10-17", "Statement": [statement]})


class Lake:
    """A home with a customer managed key, a Writer and a Reader role."""

    def __init__(self, root: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.root, self.home, self.capsys = root, root / "home", capsys
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("ENVELOPE_")},
            "ENVELOPE_HOME": str(self.home),
            "ENVELOPE_CONFIG": "",
            "ENVELOPE_REGION": "us-east-1",
        }

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        """In process, with the environment reset (`--as` exports ENVELOPE_PRINCIPAL)."""
        for k in [k for k in os.environ if k.startswith("ENVELOPE_")]:
            del os.environ[k]
        os.environ.update({k: v for k, v in self.env.items() if k.startswith("ENVELOPE_")})
        code = main(list(argv))
        out, err = self.capsys.readouterr()
        return code, out, err

    def process(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "envelope.cli.main", *argv],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )


@pytest.fixture
def lake(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Lake:
    for k in [k for k in os.environ if k.startswith("ENVELOPE_")]:
        monkeypatch.delenv(k)  # restored after the test, whatever the commands exported
    for k in ("ENVELOPE_HOME", "ENVELOPE_CONFIG", "ENVELOPE_REGION", "ENVELOPE_PRINCIPAL"):
        monkeypatch.setenv(k, "")
    return Lake(tmp_path, capsys)


def test_a_lake_job_as_an_encrypt_only_role(lake: Lake) -> None:
    code, out, err = lake("keys", "create", "--description", "lake", "--json")
    assert code == 0, err
    key = json.loads(out)["KeyMetadata"]["KeyId"]
    writer_policy = _policy(
        "kms:GenerateDataKey", {"StringEquals": {"kms:EncryptionContext:job": "nightly"}}
    )
    for name, document in (("Writer", writer_policy), ("Reader", _policy("kms:Decrypt"))):
        code, out, err = lake("iam", "create-role", name, "--json")
        assert code == 0, err
        arn = json.loads(out)["Role"]["Arn"]
        code, _, err = lake("iam", "put-policy", arn, "only", "--document", document)
        assert code == 0, err

    src = lake.root / "src"
    tree = make_tree(src, [0, 1, 300, 70_000, 5])
    enc, dec = lake.root / "enc", lake.root / "dec"
    job = ("--key", key, "--kms-context", "job=nightly", "--no-progress")

    # the Writer encrypts with its context ...
    code, out, err = lake("lake", "encrypt", str(src), str(enc), *job, "--as", WRITER, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert (report["objects"], report["done"], report["failed"]) == (len(tree), len(tree), 0)
    encrypted = read_tree(enc)
    assert set(encrypted) == set(tree)
    assert all(encrypted[p] != data for p, data in tree.items())

    # ... but not with another one: its policy's condition is enforced
    other = lake.root / "other"
    code, out, err = lake(
        "lake", "encrypt", str(src), str(other), "--key", key, "--kms-context", "job=adhoc",
        "--no-progress", "--as", WRITER, "--json",
    )  # fmt: skip
    assert code == 3
    failures = json.loads(out)["failures"]
    assert len(failures) == len(tree)
    assert all("kms:GenerateDataKey" in f["error"] for f in failures)
    assert not other.exists() or read_tree(other) == {}  # nothing written

    # the Writer cannot decrypt: exit 3, the AWS message naming the missing permission
    one = sorted(tree)[-1]
    out_file = lake.root / "one.out"
    r = lake.process("decrypt", str(enc / one), str(out_file), "--as", WRITER)
    assert r.returncode == 3, r.stderr
    assert "AccessDenied" in r.stderr
    assert f"User: {WRITER} is not authorized to perform: kms:Decrypt" in r.stderr
    assert not out_file.exists()
    # a whole lake decrypt as the Writer fails every object, each naming kms:Decrypt
    code, out, err = lake("lake", "decrypt", str(enc), str(dec), "--no-progress", "--as", WRITER,
                          "--json")  # fmt: skip
    assert code == 3  # nothing done, every failure the KMS's refusal
    failures = json.loads(out)["failures"]
    assert len(failures) == len(tree)
    assert all("is not authorized to perform: kms:Decrypt" in f["error"] for f in failures)

    # the Reader decrypts, in a process of its own and as a lake job
    r = lake.process("decrypt", str(enc / one), str(out_file), "--as", READER)
    assert r.returncode == 0, r.stderr
    assert out_file.read_bytes() == tree[one]
    code, out, err = lake("lake", "decrypt", str(enc), str(dec), "--no-progress", "--as", READER,
                          "--json")  # fmt: skip
    assert code == 0, err
    assert read_tree(dec) == tree

    # and the audit log says who was refused what, from which account, and why
    code, out, err = lake("audit", "tail", "--denied", "-n", "1000", "--json")
    assert code == 0, err
    denied = json.loads(out)["Records"]
    ops = {(d["principal"], d["operation"]) for d in denied}
    assert ops == {(WRITER, "GenerateDataKey"), (WRITER, "Decrypt")}
    assert all(d["account"] == ACCOUNT and d["reason"] for d in denied)
