"""A refused input's secrets do not ride along in the error's chain.

``raise ... from None`` hides the original exception from a traceback but keeps it as
``__context__``, and a decode error keeps the whole input it failed on: a config file with
the token PIN and secret access keys, a PIN file, a request body with a Plaintext. Anything
that walks the chain (an error reporter, a debugger, a crash dump) would get them (review).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from envelope.errors import EnvelopeError

SECRET = b"sARwWk4ciLnN0bZ7+J8wWesEGbZ/f0MZRMsjFn3e4cQ="


def chain(e: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    at: BaseException | None = e
    while at is not None and len(out) < 10:
        out.append(at)
        at = at.__cause__ or at.__context__
    return out


def holds_secret(e: BaseException) -> bool:
    return any(
        SECRET in bytes(getattr(x, "object", b"") or b"")
        or SECRET.decode() in str(getattr(x, "doc", ""))
        for x in chain(e)
    )


def test_a_settings_file_that_is_not_utf8(tmp_path: Path) -> None:
    from envelope._toml import read_toml

    p = tmp_path / "x.toml"
    p.write_bytes(b'secret_access_key = "' + SECRET + b'"\n# \xff\n')
    with pytest.raises(EnvelopeError, match="not UTF-8") as e:
        read_toml(p, "XKS proxy config")
    assert chain(e.value) == [e.value] and not holds_secret(e.value)


def test_a_pin_file_that_is_not_utf8(tmp_path: Path) -> None:
    from envelope.pkcs11.config import pin_from_source

    p = tmp_path / "pin"
    p.write_bytes(SECRET + b"\xff\n")
    with pytest.raises(EnvelopeError, match="not UTF-8") as e:
        pin_from_source(f"file:{p}")
    assert chain(e.value) == [e.value] and not holds_secret(e.value)


@pytest.mark.parametrize(
    "body", [b'{"Plaintext": "' + SECRET + b'", ', b'{"P": "' + SECRET + b'\xff"}']
)
def test_a_request_body_that_is_not_json(body: bytes) -> None:
    from envelope.server.wire import WireError, WireModel
    from envelope.service import KeyService

    wire = WireModel(KeyService)
    with pytest.raises(WireError, match="not valid JSON") as e:
        wire.parse(wire.operation("TrentService.Encrypt"), body)
    assert chain(e.value) == [e.value] and not holds_secret(e.value)


@pytest.mark.parametrize(
    "body", [b'{"plaintext": "' + SECRET + b'", ', b'{"plaintext": "' + SECRET + b'\xff"}']
)
def test_an_xks_request_body_that_is_not_json(body: bytes) -> None:
    """The XKS proxy's refusal kept the decode error, and the body with it (diff review)."""
    import anyio

    from envelope.xks.app import XksProxyApp, _Outcome
    from envelope.xks.errors import XksProxyError

    app = object.__new__(XksProxyApp)  # (the parse is the first thing `_serve` does)

    async def serve() -> None:
        await XksProxyApp._serve(app, None, _Outcome(), "application/json", body)  # type: ignore[arg-type]

    with pytest.raises(XksProxyError, match="not valid JSON") as e:
        anyio.run(serve)
    assert chain(e.value) == [e.value] and not holds_secret(e.value)
