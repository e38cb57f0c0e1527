"""``pkcs11:`` URIs (RFC 7512) naming a token, and a key in it, with where its PIN comes from.

    pkcs11:token=envelope;object=envelope-root?module-path=/usr/lib/softhsm/libsofthsm2.so
    pkcs11:token=envelope;object=envelope-root?module-path=/opt/hsm/lib.so&pin-source=file:/etc/pin
    pkcs11:module=/usr/lib/softhsm/libsofthsm2.so;token=envelope;object=envelope-root

Path attributes (``;``-separated): ``token`` (the token label, required), ``object`` (the key
label), ``type`` (``secret-key`` if given). Query attributes (``&``-separated): ``module-path``
(the PKCS#11 module) and ``pin-source`` (``file:/absolute/path``; without it the PIN is
``$ENVELOPE_HSM_PIN``). Values are percent-decoded. ``module=`` in the path is accepted as a
shorter spelling of ``module-path`` (it is not RFC 7512's).

Refused, with a message: ``pin-value`` (a PIN in a URI ends up in shell history, process lists
and logs), ``module-name`` (resolving a name to a file is p11-kit's job: give the path), any
other attribute (a typo must not select something else), and a repeated attribute.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, unquote

from ..errors import ConfigurationError
from .config import TokenConfig, pin_from_source

__all__ = ("Pkcs11Uri", "parse_pkcs11_uri")

_SCHEME = "pkcs11:"
_PATH_ATTRIBUTES = frozenset({"token", "object", "type", "module"})
_QUERY_ATTRIBUTES = frozenset({"module-path", "pin-source"})


@dataclass(frozen=True)
class Pkcs11Uri:
    """A parsed ``pkcs11:`` URI (no secret in it: the PIN is read by `config`)."""

    module: str
    token: str
    object: str | None = None
    pin_source: str | None = None

    def config(self, *, pool_size: int = 8) -> TokenConfig:
        """The token configuration, with the PIN read from `pin_source` or the environment."""
        return TokenConfig(self.module, self.token, pin_from_source(self.pin_source), pool_size)

    def __str__(self) -> str:
        path = f"token={_quote(self.token)}"
        if self.object is not None:
            path += f";object={_quote(self.object)}"
        query = f"module-path={_quote(self.module)}"
        if self.pin_source is not None:
            query += f"&pin-source={_quote(self.pin_source)}"
        return f"{_SCHEME}{path}?{query}"


def parse_pkcs11_uri(uri: str) -> Pkcs11Uri:
    if not uri.startswith(_SCHEME):
        raise ConfigurationError("a PKCS#11 URI starts with 'pkcs11:'")
    path, _, query = uri[len(_SCHEME) :].partition("?")
    attributes: dict[str, str] = {}
    for part, separator, allowed in (
        (path, ";", _PATH_ATTRIBUTES),
        (query, "&", _QUERY_ATTRIBUTES),
    ):
        for item in part.split(separator) if part else ():
            name, equals, raw = item.partition("=")
            if not equals or not name:
                # the item is not echoed: it may be a mistyped PIN
                raise ConfigurationError("a PKCS#11 URI attribute is not of the form name=value")
            if name == "pin-value":
                raise ConfigurationError(
                    "a PIN in a PKCS#11 URI (pin-value) is refused: use pin-source=file:/path "
                    "or $ENVELOPE_HSM_PIN"
                )
            if name == "module-name":
                raise ConfigurationError(
                    "module-name is not resolved here: give the module's file as module-path"
                )
            if name not in allowed:
                where = "path" if separator == ";" else "query"
                raise ConfigurationError(
                    f"PKCS#11 URI {where} attribute {name!r} is not supported "
                    f"(supported: {', '.join(sorted(allowed))})"
                )
            key = "module" if name == "module-path" else name
            if key in attributes:
                raise ConfigurationError(f"PKCS#11 URI names the {name!r} attribute twice")
            value = unquote(raw, errors="replace")
            if "\ufffd" in value:  # (refused here, not from a decode error holding the value)
                raise ConfigurationError(f"PKCS#11 URI attribute {name!r} is not UTF-8")
            if "pin-value" in value or "pin-source" in value:
                # a separator mistaken (";" in the query, "&" in the path, or one
                # percent-encoded) carried a PIN into another attribute, whose messages quote
                # it and whose label is stored: refused, naming where, never what (review)
                raise ConfigurationError(
                    f"PKCS#11 URI attribute {name!r} holds 'pin-value' or 'pin-source': path "
                    "attributes are separated by ';' and query attributes by '&' (RFC 7512), "
                    "and a PIN never goes in the URI (use pin-source=file:/path or "
                    "$ENVELOPE_HSM_PIN)"
                )
            attributes[key] = value
    if attributes.get("type", "secret-key") != "secret-key":
        raise ConfigurationError("only secret keys are used here: type=secret-key or no type")
    module, token = attributes.get("module"), attributes.get("token")
    if not module:
        raise ConfigurationError("a PKCS#11 URI here names its module (?module-path=/path/to.so)")
    if not token:
        raise ConfigurationError("a PKCS#11 URI here names its token (token=label)")
    obj = attributes.get("object")
    if obj == "":
        raise ConfigurationError("the PKCS#11 URI's object label is empty")
    return Pkcs11Uri(module, token, obj, attributes.get("pin-source"))


def _quote(value: str) -> str:
    """Percent-encode what RFC 7512 does not allow unescaped in a value."""
    return quote(value, safe="/:-._~!$'()*+,@")
