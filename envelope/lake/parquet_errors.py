"""pyarrow's errors on reading an encrypted Parquet file, as this package's error types.

One translation for both encrypted forms: Parquet modular encryption (`parquet_pme`) and a
Parquet file envelope sealed whole and read through the verifying reader
(`parquet_objects`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pyarrow as pa

from ..errors import AuthenticationError, EnvelopeError, InvalidObjectError

__all__ = ("parquet_read_errors",)


@contextlib.contextmanager
def parquet_read_errors(path: str) -> Iterator[None]:
    """pyarrow's errors on reading an encrypted Parquet file as this package's types: a
    decryption or signature failure (a page, the footer or a column's metadata changed, or
    not this key's) is `AuthenticationError`; a file pyarrow cannot parse is
    `InvalidObjectError`. Errors of the KMS and of this package pass as they are, and so do
    other I/O errors (a file that is gone, a network failure)."""
    try:
        yield
    except EnvelopeError:
        raise
    except (OSError, pa.ArrowException) as e:
        text = str(e)
        lowered = text.lower()
        if "decryption" in lowered or "signature verification" in lowered:
            raise AuthenticationError(
                f"{path}: {text}: the file was changed, or its keys are not these"
            ) from None
        if isinstance(e, ValueError) or "corrupt" in lowered or "invalid column" in lowered:
            raise InvalidObjectError(f"{path} is not a readable Parquet file: {text}") from None
        raise
