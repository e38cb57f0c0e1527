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
