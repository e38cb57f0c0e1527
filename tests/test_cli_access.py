"""`envelope iam|grants|policy`, `keys policy` and `audit tail --denied`, run as a user runs them:
a real KMS store in a temporary home, the command line parsed and run in process (one
subprocess checks the real exit code), and every effect checked by asking the KMS back."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from envelope.cli.main import main

ACCOUNT = "000000000000"
OTHER = "111122223333"
ROOT = f"arn:aws:iam::{ACCOUNT}:root"


class Result:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def json(self) -> Any:
        return json.loads(self.out)


Cli = Callable[..., Result]


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Cli:
    """`envelope ARGS...` in process against a fresh home; each call starts from the same
    environment (`--as` exports ENVELOPE_PRINCIPAL for the command's own workers, which must
    not leak into the next command)."""
    monkeypatch.setenv("ENVELOPE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ENVELOPE_CONFIG", "")
    monkeypatch.setenv("ENVELOPE_REGION", "us-east-1")
    for name in ("ENVELOPE_PRINCIPAL", "ENVELOPE_OUTPUT", "ENVELOPE_PROFILE"):
        monkeypatch.delenv(name, raising=False)

    def run(*argv: str) -> Result:
        os.environ.pop("ENVELOPE_PRINCIPAL", None)
        os.environ["ENVELOPE_REGION"] = "us-east-1"
        code = main(list(argv))
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


def ok(r: Result) -> Result:
    assert r.code == 0, r.err
    return r


def policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def allow(action: str | list[str], **extra: Any) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": action, "Resource": "*", **extra}


def new_key(cli: Cli) -> str:
    return str(ok(cli("keys", "create", "--json")).json()["KeyMetadata"]["KeyId"])


def role(cli: Cli, name: str, *statements: dict[str, Any]) -> str:
    arn = ok(cli("iam", "create-role", name, "--json")).json()["Role"]["Arn"]
    if statements:
        ok(cli("iam", "put-policy", arn, "p", "--document", policy(*statements)))
    return str(arn)


def session(name: str, account: str = ACCOUNT) -> str:
    return f"arn:aws:sts::{account}:assumed-role/{name}/s1"


# -- iam ----------------------------------------------------------------------------------------


def test_iam_users_roles_tags_and_listing(cli: Cli) -> None:
    user = ok(cli("iam", "create-user", "alice", "--path", "/eng/", "--tag", "team=data", "--json"))
    u = user.json()["User"]
    assert u["Arn"] == f"arn:aws:iam::{ACCOUNT}:user/eng/alice"
    r = ok(cli("iam", "create-role", "etl", "--description", "nightly jobs", "--json")).json()
    assert r["Role"]["Arn"] == f"arn:aws:iam::{ACCOUNT}:role/etl"

    everyone = ok(cli("iam", "list", "--json")).json()["Principals"]
    assert sorted(p["Arn"] for p in everyone) == sorted([u["Arn"], r["Role"]["Arn"]])
    users = ok(cli("iam", "list", "--users", "--query", "Principals[].Arn", "--json")).json()
    roles = ok(cli("iam", "list", "--roles", "--query", "Principals[].Arn", "--json")).json()
    assert (users, roles) == ([u["Arn"]], [r["Role"]["Arn"]])

    tagged = ok(cli("iam", "tag", u["Arn"], "level=3", "team=ml", "--json")).json()
    got = ok(cli("iam", "get", u["Arn"], "--json")).json()
    assert tagged == got
    tags = {t["Key"]: t["Value"] for t in got["User"]["Tags"]}
    assert tags == {"team": "ml", "level": "3"}  # team=ml replaced team=data

    ok(cli("iam", "delete", u["Arn"]))
    assert cli("iam", "get", u["Arn"]).code == 3
    left = ok(cli("iam", "list", "--query", "Principals[].Arn", "--json")).json()
    assert left == [r["Role"]["Arn"]]


def test_iam_identity_policies_round_trip_from_document_and_file(cli: Cli, tmp_path: Path) -> None:
    arn = role(cli, "reader")
    inline = policy(allow("kms:Decrypt"))
    ok(cli("iam", "put-policy", arn, "decrypt", "--document", inline))
    # a file's text is stored as written (indentation and all), not re-serialized
    written = (
        '{\n  "Version": "2012-10-17",\n  "Statement": {"Effect": "Allow", '
        '"Action": "kms:DescribeKey", "Resource": "*"}\n}\n'
    )
    (tmp_path / "p.json").write_text(written)
    ok(cli("iam", "put-policy", arn, "describe", "--file", str(tmp_path / "p.json")))

    names = ok(cli("iam", "list-policies", arn, "--json")).json()["PolicyNames"]
    assert names == ["decrypt", "describe"]
    # no pagination flag (the AWS CLI drops it; it printed a bare "False" line; review)
    listed = ok(cli("iam", "list-policies", arn, "--output", "text")).out
    assert listed == "POLICYNAMES\tdecrypt\nPOLICYNAMES\tdescribe\n"  # as awscli's text.py
    got = ok(cli("iam", "get-policy", arn, "describe", "--json")).json()
    assert got["PolicyDocument"] == written and got["PolicyName"] == "describe"
    assert ok(cli("iam", "get-policy", arn, "decrypt", "--json")).json()["PolicyDocument"] == inline

    ok(cli("iam", "delete-policy", arn, "decrypt"))
    assert ok(cli("iam", "list-policies", arn, "--json")).json()["PolicyNames"] == ["describe"]
    r = cli("iam", "get-policy", arn, "decrypt")
    assert r.code == 3 and "NotFoundException" in r.err


def test_iam_refuses_bad_documents_and_bad_files(cli: Cli, tmp_path: Path) -> None:
    arn = role(cli, "r")
    r = cli("iam", "put-policy", arn, "p", "--document", '{"Version": "2012-10-17", "Statement": [')
    assert r.code == 3 and "MalformedPolicyDocumentException" in r.err
    bad_op = policy(allow("kms:Decrypt", Condition={"StringEqualz": {"kms:CallerAccount": "1"}}))
    r = cli("iam", "put-policy", arn, "p", "--document", bad_op)
    assert r.code == 3 and "MalformedPolicyDocumentException" in r.err and "StringEqualz" in r.err
    (tmp_path / "latin1.json").write_bytes(b'{"Sid": "caf\xe9"}')
    r = cli("iam", "put-policy", arn, "p", "--file", str(tmp_path / "latin1.json"))
    assert r.code == 2 and "not UTF-8" in r.err
    r = cli("iam", "put-policy", arn, "p", "--file", str(tmp_path / "missing.json"))
    assert r.code == 2 and "missing.json" in r.err
    with pytest.raises(SystemExit) as e:  # exactly one of --document / --file
        cli("iam", "put-policy", arn, "p", "--document", "{}", "--file", "x")
    assert e.value.code == 2
    assert ok(cli("iam", "list-policies", arn, "--json")).json()["PolicyNames"] == []


def test_iam_needs_iam_permission_and_accounts_lists_every_account(cli: Cli) -> None:
    plain = role(cli, "plain")
    admin = role(cli, "admin", allow("iam:CreateUser"))
    r = cli("iam", "create-user", "bob", "--as", session("plain"))
    assert r.code == 3
    assert (
        f"AccessDeniedException: User: {session('plain')} is not authorized to perform: "
        "iam:CreateUser" in r.err
    )
    ok(cli("iam", "create-user", "bob", "--as", session("admin")))
    assert plain != admin
    # another account's root creates in its own account
    other = ok(cli("iam", "create-role", "x", "--as", f"arn:aws:iam::{OTHER}:root", "--json"))
    assert other.json()["Role"]["Arn"] == f"arn:aws:iam::{OTHER}:role/x"
    accounts = ok(cli("iam", "accounts", "--json")).json()["Accounts"]
    assert accounts == sorted([ACCOUNT, OTHER])
    mine = ok(cli("iam", "list", "--query", "Principals[].Arn", "--json")).json()
    assert f"arn:aws:iam::{OTHER}:role/x" not in mine


# -- keys policy ----------------------------------------------------------------------------


def test_key_policy_get_put_list_round_trip(cli: Cli, tmp_path: Path) -> None:
    key = new_key(cli)
    default = json.loads(ok(cli("keys", "policy", "get", key, "--json")).json()["Policy"])
    assert default["Statement"][0]["Principal"] == {"AWS": ROOT}
    assert ok(cli("keys", "policy", "list", key, "--json")).json() == {"PolicyNames": ["default"]}
    text = ok(cli("keys", "policy", "list", key, "--output", "text")).out
    assert text == "POLICYNAMES\tdefault\n"

    reader = role(cli, "reader")
    text = policy(
        {
            "Sid": "Root",
            "Effect": "Allow",
            "Principal": {"AWS": ROOT},
            "Action": "kms:*",
            "Resource": "*",
        },
        {
            "Sid": "Reader",
            "Effect": "Allow",
            "Principal": {"AWS": reader},
            "Action": "kms:Decrypt",
            "Resource": "*",
        },
    )
    (tmp_path / "kp.json").write_text(text)
    ok(cli("keys", "policy", "put", key, "--file", str(tmp_path / "kp.json")))
    got = ok(cli("keys", "policy", "get", key, "--json")).json()
    assert got == {"Policy": text, "PolicyName": "default"}
    # the stored policy now decides: the reader role decrypts without any IAM policy
    r = ok(
        cli(
            "policy", "explain", "--as", session("reader"), "--action", "kms:Decrypt", key, "--json"
        )
    )
    assert r.json()["Matched"] == "key-policy:Reader"


def test_keys_create_with_a_policy_and_the_lockout_check(cli: Cli, tmp_path: Path) -> None:
    """CreateKey takes Policy and BypassPolicyLockoutSafetyCheck: a policy that would lock the
    caller out is refused (nothing created) unless the bypass flag is given."""
    encrypt_only = policy(
        {"Effect": "Allow", "Principal": {"AWS": ROOT}, "Action": "kms:Encrypt", "Resource": "*"}
    )
    ok(cli("keys", "create"))  # the store exists, with one key
    before = ok(cli("keys", "list", "--json")).json()
    r = cli("keys", "create", "--policy", encrypt_only)
    assert r.code == 3 and "will not allow you to update the key policy" in r.err
    assert ok(cli("keys", "list", "--json")).json() == before
    (tmp_path / "p.json").write_text(encrypt_only)
    made = ok(
        cli("keys", "create", "--policy-file", str(tmp_path / "p.json"),
            "--bypass-policy-lockout-safety-check", "--json")
    ).json()["KeyMetadata"]["KeyId"]  # fmt: skip
    # the key's policy is exactly the one given, and it rules: not even the root may read it
    r = cli("keys", "policy", "get", made)
    assert r.code == 3 and "kms:GetKeyPolicy" in r.err


def test_key_policy_put_from_stdin(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    key = new_key(cli)
    text = policy(
        {"Sid": "Only", "Effect": "Allow", "Principal": {"AWS": ROOT}, "Action": "kms:*",
         "Resource": "*"}
    )  # fmt: skip
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode())))
    ok(cli("keys", "policy", "put", key, "--file", "-"))
    assert ok(cli("keys", "policy", "get", key, "--json")).json()["Policy"] == text


def test_lockout_check_refuses_without_bypass_and_then_the_policy_rules(cli: Cli) -> None:
    key = new_key(cli)
    admin = role(cli, "admin")
    locked = policy(
        {"Effect": "Allow", "Principal": {"AWS": admin}, "Action": "kms:*", "Resource": "*"}
    )
    r = cli("keys", "policy", "put", key, "--document", locked)
    assert r.code == 3 and "MalformedPolicyDocumentException" in r.err
    # refused: the root still reads the old policy
    assert ROOT in ok(cli("keys", "policy", "get", key, "--json")).json()["Policy"]

    ok(
        cli(
            "keys",
            "policy",
            "put",
            key,
            "--document",
            locked,
            "--bypass-policy-lockout-safety-check",
        )
    )
    r = cli("keys", "policy", "get", key)
    assert r.code == 3 and "AccessDeniedException" in r.err and "kms:GetKeyPolicy" in r.err
    got = ok(cli("keys", "policy", "get", key, "--as", session("admin"), "--json"))
    assert got.json()["Policy"] == locked


def test_access_denied_on_a_keys_command_exits_3_with_the_aws_message(cli: Cli) -> None:
    key = new_key(cli)
    role(cli, "nobody")
    r = cli("keys", "describe", key, "--as", session("nobody"))
    assert r.code == 3 and r.out == ""
    arn = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/{key}"
    assert (
        f"AccessDeniedException: User: {session('nobody')} is not authorized to perform: "
        f"kms:DescribeKey on resource: {arn} because" in r.err
    )


# -- grants ---------------------------------------------------------------------------------


def test_grants_create_list_use_retire_revoke(cli: Cli) -> None:
    key = new_key(cli)
    job = session("job")
    role(cli, "job")
    ops = ("policy", "explain", "--as", job, "--action", "kms:Decrypt", key, "--json")
    assert cli(*ops, "--context", "run=7").code == 3  # nothing allows it yet

    g = ok(
        cli(
            "grants",
            "create",
            key,
            "--grantee",
            job,
            "--operations",
            "Decrypt,Encrypt",
            "--retiring",
            job,
            "--context-equals",
            "run=7",
            "--name",
            "nightly",
            "--json",
        )
    )
    grant = g.json()
    assert set(grant) == {"GrantId", "GrantToken"}
    again = ok(
        cli(
            "grants",
            "create",
            key,
            "--grantee",
            job,
            "--operations",
            "Decrypt,Encrypt",
            "--retiring",
            job,
            "--context-equals",
            "run=7",
            "--name",
            "nightly",
            "--json",
        )
    )
    assert again.json()["GrantId"] == grant["GrantId"]  # idempotent by Name

    allowed = ok(cli(*ops, "--context", "run=7")).json()
    assert allowed["Allowed"] is True and allowed["Matched"] == f"grant:{grant['GrantId']}"
    assert cli(*ops, "--context", "run=8").code == 3  # the constraint holds
    assert cli(*ops).code == 3

    listed = ok(cli("grants", "list", key, "--json")).json()["Grants"]
    assert [x["GrantId"] for x in listed] == [grant["GrantId"]]
    entry = listed[0]
    assert entry["GranteePrincipal"] == job and sorted(entry["Operations"]) == [
        "Decrypt",
        "Encrypt",
    ]
    assert entry["Constraints"] == {"EncryptionContextEquals": {"run": "7"}}
    by_grantee = ok(cli("grants", "list", key, "--grantee", job, "--json")).json()["Grants"]
    by_other = ok(cli("grants", "list", key, "--grantee", ROOT, "--json")).json()["Grants"]
    assert (len(by_grantee), by_other) == (1, [])
    by_id = ok(cli("grants", "list", key, "--grant-id", grant["GrantId"], "--json"))
    assert by_id.json()["Grants"] == listed
    retirable = ok(cli("grants", "retirable", job, "--json")).json()["Grants"]
    assert [x["GrantId"] for x in retirable] == [grant["GrantId"]]

    ok(cli("grants", "retire", "--token", again.json()["GrantToken"], "--as", job))
    assert cli(*ops, "--context", "run=7").code == 3  # retired at once
    assert ok(cli("grants", "list", key, "--json")).json()["Grants"] == []

    g2 = ok(
        cli(
            "grants",
            "create",
            key,
            "--grantee",
            job,
            "--operations",
            "Decrypt",
            "--context-subset",
            "run=7",
            "--json",
        )
    ).json()
    assert ok(cli(*ops, "--context", "run=7", "--context", "extra=1")).json()["Allowed"]
    ok(cli("grants", "revoke", key, g2["GrantId"]))
    assert cli(*ops, "--context", "run=7").code == 3  # revoked at once

    g3 = ok(
        cli("grants", "create", key, "--grantee", job, "--operations", "Decrypt", "--json")
    ).json()
    ok(cli("grants", "retire", key, g3["GrantId"]))  # by key and grant id, as the key's account
    assert ok(cli("grants", "list", key, "--json")).json()["Grants"] == []
    r = cli("grants", "revoke", key, g3["GrantId"])
    assert r.code == 3 and "InvalidGrantIdException" in r.err


def test_every_token_of_an_idempotent_grant_retires_it(cli: Cli) -> None:
    """AWS: 'All grant tokens for the same grant ID can be used interchangeably' (the service
    once replaced the first token when CreateGrant was repeated with the same Name)."""
    key = new_key(cli)
    job = session("job")
    role(cli, "job")
    create = (
        "grants",
        "create",
        key,
        "--grantee",
        job,
        "--operations",
        "Decrypt",
        "--name",
        "n",
        "--json",
    )
    first = ok(cli(*create)).json()
    second = ok(cli(*create)).json()
    assert first["GrantId"] == second["GrantId"] and first["GrantToken"] != second["GrantToken"]
    ok(cli("grants", "retire", "--token", first["GrantToken"]))


def test_grants_refusals(cli: Cli) -> None:
    key = new_key(cli)
    job, other = session("job"), session("other")
    role(cli, "job")
    role(cli, "other")
    r = cli("grants", "retire")
    assert r.code == 2 and "--token" in r.err
    r = cli("grants", "create", key, "--grantee", job, "--operations", ",")
    assert r.code == 2 and "--operations" in r.err
    r = cli("grants", "create", key, "--grantee", job, "--operations", "Decrypt,Fly")
    assert r.code == 3 and "ValidationException" in r.err and "Fly" in r.err
    g = ok(
        cli("grants", "create", key, "--grantee", job, "--operations", "Decrypt", "--json")
    ).json()
    r = cli("grants", "retire", key, g["GrantId"], "--as", other)  # not retiring, not grantee
    assert r.code == 3 and "AccessDeniedException" in r.err and "kms:RetireGrant" in r.err
    # a grantee cannot create a grant for more than its own
    r = cli("grants", "create", key, "--grantee", other, "--operations", "Encrypt", "--as", job)
    assert r.code == 3 and "AccessDeniedException" in r.err
    assert len(ok(cli("grants", "list", key, "--json")).json()["Grants"]) == 1


# -- policy explain -------------------------------------------------------------------------


def test_explain_exit_codes_and_every_explanation_line(cli: Cli) -> None:
    key = new_key(cli)
    role(
        cli,
        "writer",
        allow(
            "kms:GenerateDataKey",
            Condition={"StringEquals": {"kms:EncryptionContext:dataset": "sales"}},
        ),
    )
    w = session("writer")
    base = ("policy", "explain", "--as", w, key)
    yes = ok(cli(*base, "--action", "kms:GenerateDataKey", "--context", "dataset=sales", "--json"))
    data = yes.json()
    assert data["Allowed"] is True and data["Matched"] == "iam:p:#0" and data["Message"] is None
    assert len(data["Explanation"]) == 2 and yes.err == ""

    no = cli(*base, "--action", "kms:GenerateDataKey", "--context", "dataset=hr", "--json")
    assert no.code == 3
    d = no.json()
    assert d["Allowed"] is False and d["Matched"] is None
    assert d["Message"].startswith(f"User: {w} is not authorized to perform: kms:GenerateDataKey")
    assert any("kms:encryptioncontext:dataset" in line.lower() for line in d["Explanation"])
    assert "AccessDeniedException" in no.err

    dec = cli(*base, "--action", "kms:Decrypt", "--context", "dataset=sales", "--output", "text")
    assert dec.code == 3
    lines = dec.out.splitlines()
    assert lines[0].split("\t")[:2] == ["kms:Decrypt", "False"]
    explained = [line for line in lines if line.startswith("EXPLANATION\t")]
    assert len(explained) == 2 and any("kms:Decrypt is not in Action" in x for x in explained)

    # a pattern or a malformed action is a question no call asks: usage (2), never an answer
    for pattern in ("kms:*", "kms:Get*", "kms:", "Decrypt"):
        bad = cli(*base, "--action", pattern)
        assert bad.code == 2 and "one service:Action name" in bad.err, (pattern, bad.err)

    # account-level actions: no key; IAM alone decides
    assert cli("policy", "explain", "--as", w, "--action", "kms:CreateKey", "--json").code == 3
    assert ok(cli("policy", "explain", "--action", "kms:CreateKey", "--json")).json()["Allowed"]
    # a condition key given with --value
    role(
        cli,
        "late",
        allow(
            "kms:Decrypt",
            Condition={"DateGreaterThan": {"aws:CurrentTime": "2030-01-01T00:00:00Z"}},
        ),
    )
    late = ("policy", "explain", "--as", session("late"), "--action", "kms:Decrypt", key, "--json")
    assert cli(*late).code == 3
    assert cli(*late, "--value", "aws:CurrentTime=2031-01-01T00:00:00Z").code == 0


def test_explain_a_question_that_cannot_be_asked_is_a_usage_error(cli: Cli) -> None:
    """Exit 3 means denied: a typo in the action, the principal or the key must not read as
    a denial to a script."""
    key = new_key(cli)
    for argv, said in (
        (("--action", "Decrypt", key), "ValidationException"),
        (("--action", "kms:Decrypt", "--as", "bob", key), "--as: 'bob' is not a principal"),
        (("--action", "kms:Decrypt", "alias/none"), "NotFoundException"),
    ):
        r = cli("policy", "explain", *argv, "--json")
        assert (r.code, r.out) == (2, ""), r.err
        assert said in r.err


def test_explain_managed_key_only_through_the_service(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "x").write_bytes(b"x")
    ok(cli("encrypt", str(tmp_path / "x"), str(tmp_path / "x.env")))  # creates alias/aws/envelope
    role(cli, "any")
    ask = (
        "policy",
        "explain",
        "--as",
        session("any"),
        "--action",
        "kms:Decrypt",
        "alias/aws/envelope",
        "--json",
    )
    assert cli(*ask).code == 3
    assert cli(*ask, "--via-service", "envelope.us-east-1.amazonaws.com").code == 0
    foreign = (
        "policy",
        "explain",
        "--as",
        f"arn:aws:iam::{OTHER}:root",
        "--action",
        "kms:Decrypt",
        "--via-service",
        "envelope.us-east-1.amazonaws.com",
        "--json",
    )
    arn = ok(cli("keys", "describe", "alias/aws/envelope", "--json")).json()["KeyMetadata"]["Arn"]
    assert cli(*foreign, arn).code == 3  # never from another account


def test_explain_exit_code_in_a_real_process(tmp_path: Path) -> None:
    env = {**os.environ, "ENVELOPE_HOME": str(tmp_path / "home"), "ENVELOPE_CONFIG": ""}
    env.pop("ENVELOPE_PRINCIPAL", None)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "envelope.cli.main", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    assert run("keys", "create").returncode == 0  # a store to ask about
    denied = run(
        "policy",
        "explain",
        "--as",
        f"arn:aws:iam::{ACCOUNT}:user/ghost",
        "--action",
        "kms:ListKeys",
        "--output",
        "json",
    )
    assert denied.returncode == 3, denied.stderr
    assert json.loads(denied.stdout)["Allowed"] is False
    allowed = run("policy", "explain", "--action", "kms:ListKeys", "--output", "json")
    assert allowed.returncode == 0, allowed.stderr


# -- audit tail --denied --------------------------------------------------------------------


def test_audit_tail_denied_shows_only_denials_with_their_reason(cli: Cli) -> None:
    key = new_key(cli)
    role(cli, "nobody")
    nobody = session("nobody")
    for _ in range(3):
        assert cli("keys", "describe", key, "--as", nobody).code == 3
        ok(cli("keys", "describe", key))
    everything = ok(cli("audit", "tail", "-n", "100", "--json")).json()["Records"]
    assert {r["decision"] for r in everything} >= {"allowed", "denied"}

    denied = ok(cli("audit", "tail", "--denied", "--json")).json()["Records"]
    assert len(denied) == 3
    for rec in denied:
        assert rec["decision"] == "denied" and rec["principal"] == nobody
        assert rec["account"] == ACCOUNT and rec["operation"] == "DescribeKey"
        assert rec["error_code"] == "AccessDeniedException" and rec["reason"]
        assert "matched" in rec and rec["key_id"].endswith(key)
    last = ok(cli("audit", "tail", "--denied", "-n", "1", "--json")).json()["Records"]
    assert last == denied[-1:]
    # far back in a long log: the window grows until it finds them
    for _ in range(20):
        ok(cli("keys", "describe", key))
    again = ok(cli("audit", "tail", "--denied", "-n", "2", "--json")).json()["Records"]
    assert again == denied[-2:]


# -- docs/access.md -------------------------------------------------------------------------

ACCESS_DOC = Path(__file__).resolve().parent.parent / "docs" / "access.md"


@pytest.mark.slow
def test_the_access_guide_examples_run_as_written(tmp_path: Path) -> None:
    """Every ``sh`` block of docs/access.md, in order, in one bash with -euo pipefail, in an
    empty folder: the worked examples assert their own outcomes (`refused` needs exit 3,
    `test` compares decrypted text), so a page that drifts from the commands fails here."""
    import re

    blocks = re.findall(r"^```sh\n(.*?)^```$", ACCESS_DOC.read_text("utf-8"), re.S | re.M)
    script = "\n".join(blocks)
    assert len(blocks) >= 7 and script.count("refused ") >= 8  # the extraction found them
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENVELOPE_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["ENVELOPE_CONFIG"] = ""
    r = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (tmp_path / "back" / "day=1" / "a.csv").read_text() == "a\n"


def test_as_does_not_outlive_the_command_in_process(cli: Cli) -> None:
    """`--as` is exported for what the command starts (key URIs, Dask workers), but a caller
    running `main` in its own process gets its environment back unchanged."""
    before = os.environ.get("ENVELOPE_PRINCIPAL")
    role(cli, "someone")
    cli("keys", "list", "--as", session("someone"))
    assert os.environ.get("ENVELOPE_PRINCIPAL") == before


def test_keys_list_for_a_caller_allowed_only_list_keys(cli: Cli) -> None:
    """kms:ListKeys alone gives the list; the aliases and details `keys list` adds are
    extras, left empty with a note when they are not allowed (it was refused outright)."""
    kid = new_key(cli)
    ok(cli("keys", "alias", "create", "alias/lister-test", kid))
    role(cli, "lister", allow("kms:ListKeys"))
    r = ok(cli("keys", "list", "--as", session("lister"), "--json"))
    (row,) = r.json()["Keys"]
    # unknown aliases are left out: a None was a scalar, a column of its own in text output
    # before every other, so `cut -f` read the wrong fields for this caller only (review)
    assert row["KeyId"] == kid and "Aliases" not in row and row["KeyState"] is None
    assert "not allowed kms:ListAliases" in r.err
    assert "not allowed kms:DescribeKey on 1 of 1 keys" in r.err
    r = ok(cli("keys", "list", "--as", session("lister"), "--brief", "--output", "text"))
    assert r.out == f"KEYS\t{row['KeyArn']}\t{kid}\n"  # as `aws kms list-keys` prints it
    role(cli, "reader", allow(["kms:ListKeys", "kms:ListAliases", "kms:DescribeKey"]))
    r = ok(cli("keys", "list", "--as", session("reader"), "--json"))
    (row,) = r.json()["Keys"]
    assert row["Aliases"] == ["alias/lister-test"] and row["KeyState"] == "Enabled"
    assert "note" not in r.err


def test_explain_refuses_an_action_kms_does_not_have(cli: Cli) -> None:
    """`--action kms:Decryptt` (a typo) matched `kms:*` and was answered "allowed", exit 0,
    by the very tool operators use to test policies; `s3:GetObject` read as "denied"
    (review). Both are questions that cannot be asked: exit 2."""
    key = new_key(cli)
    for action in ("kms:Decryptt", "kms:Bogus", "s3:GetObject"):
        r = cli("policy", "explain", "--action", action, key, "--json")
        assert (r.code, r.out) == (2, ""), r.err
        assert "is not an AWS KMS action" in r.err
    for action in ("kms:Decrypt", "kms:ReEncryptFrom", "kms:ListRetirableGrants"):
        assert cli("policy", "explain", "--action", action, key, "--json").code == 0
