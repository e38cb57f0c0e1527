"""Arrows point one way (docs: ../shared/design/architecture.md, issue 9).

Each check runs in a fresh interpreter, so what one import loads is all that is in
`sys.modules`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def loaded(*imports: str) -> list[str]:
    code = (
        "import sys, json\n"
        + "".join(f"import {m}\n" for m in imports)
        + "print(json.dumps(sorted(m for m in sys.modules if m.startswith('envelope'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return list(json.loads(out.stdout))


def under(modules: list[str], package: str) -> list[str]:
    return [m for m in modules if m == package or m.startswith(package + ".")]


def test_the_service_loads_nothing_from_the_kms_clients() -> None:
    mods = loaded("envelope.service", "envelope.service.store", "envelope.service.audit")
    assert under(mods, "envelope.kms") == []
    assert under(mods, "envelope.api") == [] and under(mods, "envelope.objects") == []


@pytest.mark.parametrize(
    "module",
    ["envelope.kms", "envelope.kms.base", "envelope.kms.memory", "envelope.kms.filekey",
     "envelope.kms.retry", "envelope.kms.uri", "envelope.kms.faults"],
)
def test_kms_clients_load_nothing_from_the_service_until_local_is_used(module: str) -> None:
    assert under(loaded(module), "envelope.service") == []


def test_only_the_local_backend_loads_the_service() -> None:
    assert under(loaded("envelope.kms.local"), "envelope.service") != []


@pytest.mark.parametrize(
    "module", ["envelope.objects", "envelope.sync", "envelope.api", "envelope.reader",
               "envelope.files", "envelope.keyring"]
)
def test_the_core_imports_no_service_server_lake_or_cli(module: str) -> None:
    mods = loaded(module)
    for outer in ("envelope.service", "envelope.server", "envelope.lake", "envelope.cli"):
        assert under(mods, outer) == [], (module, outer)


def test_hazmat_imports_only_errors() -> None:
    mods = loaded("envelope.hazmat.format", "envelope.hazmat.keyschedule",
                  "envelope.hazmat.segments")
    assert set(mods) <= {
        "envelope", "envelope.errors", "envelope.hazmat", "envelope.hazmat.format",
        "envelope.hazmat.keyschedule", "envelope.hazmat.segments", "envelope._version",
    }, mods


def test_encrypting_a_file_from_the_cli_loads_no_heavy_optional_parts() -> None:
    code = (
        "import sys\n"
        "from envelope.cli.main import build_parser\n"
        "build_parser(['encrypt', 'a', 'b'])\n"
        "import envelope.cli.crypt, envelope.files\n"
        "print(','.join(m for m in ('pyarrow', 'rich', 'prometheus_client', 'envelope.service',"
        " 'envelope.lake', 'botocore') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_lake_and_the_recipes_reach_hazmat_only_through_the_object_layer() -> None:
    """`lake`, `sync`, the seekable `reader` and the CLI import `envelope.objects`, never
    `envelope.hazmat` itself (the streaming engine `api` and the loops of `files` and
    `blocking_streams` sit beside the object layer and drive segments directly)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "envelope"
    offenders = []
    for path in [*root.joinpath("lake").glob("*.py"), root / "sync.py", root / "reader.py",
                 *root.joinpath("cli").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and "hazmat" in node.module:
                if not node.module.startswith("cryptography"):
                    offenders.append(f"{path.name}: from {node.module}")
    assert offenders == []


def test_encrypting_a_small_file_with_a_key_file_loads_no_event_loop(tmp_path: Path) -> None:
    """The CLI's file path is the object layer: no anyio, no asyncio, no async recipes; and
    nothing it does not use at start-up (the aws backend, `secrets` with hmac and OpenSSL's
    hashlib behind it)."""
    code = (
        "import sys\n"
        "from envelope.cli.main import main\n"
        "from envelope.kms.filekey import generate_key_file\n"
        f"d = {str(tmp_path)!r}\n"
        "generate_key_file(d + '/k.key')\n"
        "open(d + '/in', 'wb').write(b'x')\n"
        "assert main(['encrypt', d + '/in', d + '/out', '--key-file', d + '/k.key']) == 0\n"
        "assert main(['decrypt', d + '/out', d + '/back', '--key-file', d + '/k.key']) == 0\n"
        "print(','.join(m for m in ('anyio', 'asyncio', 'envelope.api', 'envelope._pipeline',"
        " 'envelope.kms.aws', 'secrets') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
    assert (tmp_path / "back").read_bytes() == b"x"
