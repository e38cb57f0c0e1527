"""The package's public surface: every exported name resolves, nothing more is promised."""

from __future__ import annotations

import subprocess
import sys

import envelope


def test_all_names_resolve_and_are_sorted() -> None:
    assert list(envelope.__all__) == sorted(envelope.__all__)
    for name in envelope.__all__:
        assert getattr(envelope, name) is not None


def test_service_does_not_load_the_encryptor() -> None:
    code = "import sys, envelope.service; print('envelope.api' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
