"""Nothing that holds key material can be pickled (a pickle would ship it to another host)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from envelope.keycache import CachePolicy
from envelope.keyring import Keyring
from envelope.kms.filekey import FileKeyBackend, generate_key_file
from envelope.kms.memory import MemoryKms


def test_backends_and_keyrings_refuse_pickling(tmp_path: Path) -> None:
    generate_key_file(str(tmp_path / "k.key"))
    fk = FileKeyBackend(str(tmp_path / "k.key"))
    mem = MemoryKms()
    for obj in (fk, mem, Keyring(fk, fk.key_id), Keyring(mem, mem.create_key(), cache=None),
                Keyring(mem, mem.create_key(), cache=CachePolicy())):
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(obj)


def test_secret_holding_settings_and_credentials_refuse_pickling() -> None:
    """The XKS proxy's settings (the token PIN) and credentials, and the server's static
    credentials and checked claims (secret access keys), pickled with the secret inside
    (review); the token configuration already refused."""
    from envelope.server.auth import StaticCredentials, _Claims
    from envelope.xks.config import Credential, XksSettings

    secret = "sARwWk4ciLnN0bZ7+J8wWesEGbZ/f0MZRMsjFn3e4cQ="
    claims = _Claims(None, "AKIDEXAMPLE", "us-east-1", "20261201T000000Z", [], "", secret, "p")
    for obj in (
        Credential("HMLG7DAFPC72QCMBHX4HWTQ4", secret),
        XksSettings(pin="PIN-9876"),
        StaticCredentials({"HMLG7DAFPC72QCMBHX4HWTQ4": secret}, "us-east-1"),
        claims,
    ):
        with pytest.raises(TypeError, match="pickled"):
            pickle.dumps(obj)
        assert secret not in repr(obj) and "PIN-9876" not in repr(obj)


def test_the_embedded_and_aws_backends_refuse_pickling_by_design(tmp_path: Path) -> None:
    """They failed on a sqlite3 connection and a botocore internal, by accident, with messages
    that did not say to ship a KeySpec (review)."""
    from envelope.kms.aws import AwsKms
    from envelope.kms.local import open_local

    local = open_local(tmp_path / "home")
    try:
        with pytest.raises(TypeError, match="KeySpec"):
            pickle.dumps(local)
    finally:
        local.close_blocking()
    aws = AwsKms(region="us-east-1")
    with pytest.raises(TypeError, match="KeySpec"):
        pickle.dumps(aws)
