"""Text from an untrusted source, such as an object's header, made safe to print.

format.md §4 lets a provider id hold any ASCII byte, control characters included, "so a reader
that prints a provider id escapes it"; key ids and context keys and values are any UTF-8.
Printed raw to a terminal or a report, an ESC sequence retitles or clears the terminal, a
newline or a tab forges a line or a field, and a bidirectional override reorders what follows.
`printable` escapes every character Python's `str.isprintable` rejects (control characters,
format characters such as U+202E, line and paragraph separators) the way a repr does, and
leaves every other character, non-ASCII letters included, as it is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .hazmat.format import WrappedKey

__all__ = ("is_utf8", "printable", "wrapped_key_name")


def is_utf8(text: str) -> bool:
    """Whether `text` encodes as UTF-8: a lone surrogate (the bytes of an environment variable
    or argument that are not UTF-8) does not. A secret is checked with this before it is
    encoded, and refused outside any ``except`` block: the UnicodeEncodeError of a failed
    encode holds the whole string (a passphrase, a PIN) for whatever prints or walks it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(text: str) -> str:
    """`text` with its unprintable characters escaped (``\\x1b``, ``\\n``, ``\\u202e``)."""
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )


def wrapped_key_name(wrapped: WrappedKey) -> str:
    """``provider:key-id`` of a wrapped key from a header, for a message."""
    return f"{printable(wrapped.provider_id)}:{printable(wrapped.key_id)}"
