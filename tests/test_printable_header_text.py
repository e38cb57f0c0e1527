"""Text from an object's header is printed escaped (format.md §4: "a reader that prints a
provider id escapes it"; key ids and context values are any UTF-8 too).

Raw, an ESC sequence would retitle or clear the terminal, a tab or newline would forge a field
or a line of a report, and U+202E would reorder what follows. The header below is what an
attacker writes without any key: its wrapped key's names are never authenticated before the
"no backend" message names them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from envelope import sync
from envelope.errors import NoBackendError
from envelope.keyring import Keyring
from envelope.kms.memory import MemoryKms
from envelope.printable import printable

EVIL = "\x1b]0;PWNED\x07\x1b[2J\x1b[31mred\u202eevil\nFAILED forged line\tfield"
RAW = ("\x1b", "\x07", "\n", "\t", "\u202e")


class _EvilKms(MemoryKms):
    provider_id = "mem\x1b[2J\x07"


def test_printable_escapes_exactly_the_unprintable() -> None:
    assert printable("plain text, é, 中文, a\\b") == "plain text, é, 中文, a\\b"
    shown = printable(EVIL)
    assert not any(c in shown for c in RAW)
    assert "\\x1b]0;PWNED\\x07" in shown and "\\u202e" in shown and "\\n" in shown


def test_the_no_backend_message_escapes_the_headers_names() -> None:
    evil = _EvilKms()
    key = evil.create_key(EVIL)
    blob = sync.encrypt_bytes(b"payload", keyring=Keyring(evil, key))
    with pytest.raises(NoBackendError) as e:
        sync.decrypt_bytes(blob, keyring=Keyring(MemoryKms(), MemoryKms().create_key()))
    message = str(e.value)
    assert not any(c in message for c in RAW), message
    assert "mem\\x1b[2J\\x07:" in message and "\\u202eevil\\nFAILED" in message


@pytest.mark.parametrize("fmt", ["text", "table"])
def test_the_cli_summary_escapes_context_text(tmp_path: Path, fmt: str) -> None:
    def envelope(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "envelope.cli.main", *args],
            capture_output=True,
            text=True,
            env={**os.environ, "ENVELOPE_HOME": str(tmp_path / "home"), "COLUMNS": "200"},
            timeout=120,
        )

    key, src, enc = tmp_path / "k.key", tmp_path / "in.txt", tmp_path / "in.env"
    src.write_text("rows")
    assert envelope("keygen", str(key)).returncode == 0
    r = envelope("encrypt", str(src), str(enc), "--key-file", str(key), "--context", f"k={EVIL}")
    assert r.returncode == 0, r.stderr
    r = envelope(
        "decrypt", str(enc), str(tmp_path / "out"), "--key-file", str(key), "--output", fmt
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out").read_text() == "rows"
    out = r.stdout
    assert "\\x1b]0;PWNED" in out and "forged" in out
    assert not any(c in out.replace("\n", "").replace("\t", "") for c in RAW), out
    assert not any(line.startswith("FAILED") for line in out.splitlines())
    if fmt == "text":  # one field per tab, as many as the header has: none forged
        line = next(x for x in out.splitlines() if "PWNED" in x)
        assert line.split("\t") == ["OBJECT_CONTEXT", printable(EVIL)]
