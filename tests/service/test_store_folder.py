"""The store's folder: a planted link and a folder others may write (an adversarial review)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

from envelope.service import open_service
from envelope.service.errors import StoreError
from envelope.service.rootkey import InsecureRootKeyWarning


def test_a_dangling_link_in_place_of_the_store_is_refused_before_anything_is_made(
    tmp_path: Path,
) -> None:
    """It made the root key, then failed naming a temporary file, and every later attempt was
    refused for the root key it had left behind."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    (home / "kms.sqlite3").symlink_to(tmp_path / "elsewhere.sqlite3")
    with pytest.raises(StoreError, match="symbolic link"):
        open_service(home)
    assert sorted(p.name for p in home.iterdir()) == ["kms.sqlite3"]
    assert not (tmp_path / "elsewhere.sqlite3").exists()


def test_a_home_others_may_write_is_warned_about_and_refused_in_strict_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ENVELOPE_STRICT", raising=False)
    home = tmp_path / "home"
    home.mkdir()
    os.chmod(home, 0o777)
    with pytest.warns(InsecureRootKeyWarning, match="writable by group or others"):
        open_service(home).close()
    with pytest.raises(StoreError, match="strict mode"):
        open_service(home, strict=True)
    os.chmod(home, 0o700)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        open_service(home).close()
