"""`envelope.pkcs11` sits below the service: it imports nothing from the service, the server,
the KMS clients, lake or the CLI, and python-pkcs11 only when a token is opened."""

from __future__ import annotations

import json
import subprocess
import sys


def test_the_token_layer_imports_nothing_above_it() -> None:
    code = (
        "import sys, json\n"
        "import envelope.pkcs11, envelope.pkcs11.uri, envelope.pkcs11.metrics\n"
        "print(json.dumps(sorted(m for m in sys.modules"
        " if m.startswith('envelope') or m == 'pkcs11' or m.startswith('pkcs11.'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout)
    for outer in ("envelope.service", "envelope.server", "envelope.kms", "envelope.lake",
                  "envelope.cli", "envelope.xks", "pkcs11"):  # fmt: skip
        assert [m for m in loaded if m == outer or m.startswith(outer + ".")] == [], outer
