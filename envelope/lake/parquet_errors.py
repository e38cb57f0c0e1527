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
    other I/O errors (a file that is gone, a network failure). An object error of this
    package's own (the verifying reader's: a segment that fails its tag, a header that is not
    one) is raised again naming `path`: read from a loop over many files, "authentication
    failed" alone did not say which (review)."""
    try:
        yield
    except InvalidObjectError as e:
        if path in str(e):
            raise
        raise _naming(e, path) from None
    except EnvelopeError:
        raise
    except (OSError, pa.ArrowException) as e:
        text = str(e)
        lowered = text.lower()
        if any(m in lowered for m in _TAMPERED):
            raise AuthenticationError(
                f"{path}: {text}: the file was changed, or its keys are not these"
            ) from None
        if (
            isinstance(e, ValueError | KeyError | TypeError)  # (ArrowKeyError, ArrowTypeError:
            # a key metadata field renamed or retyped)
            or any(m in lowered for m in _MALFORMED)
        ):
            raise InvalidObjectError(f"{path} is not a readable Parquet file: {text}") from None
        raise


def _naming(error: InvalidObjectError, path: str) -> InvalidObjectError:
    """`error` again, of the same type, with `path` before its message (every object error
    takes its message as its one argument)."""
    named = type(error)(f"{path}: {error}")
    return named.with_traceback(error.__traceback__)


#: What pyarrow says of an encrypted module that fails to open: a page, the footer or a
#: column's metadata changed (the length of a module's ciphertext too), or not this key's.
_TAMPERED = ("decryption", "signature verification", "ciphertext length")

#: What pyarrow says of a file it cannot parse. A file whose footer, key metadata or thrift
#: structures were damaged raised a bare OSError (review); any other OSError (a file that is
#: gone, a network failure) passes as it is.
_MALFORMED = (
    "corrupt",
    "invalid column",
    "deserialize thrift",
    "key metadata",
    "magic bytes",
    "parquet file size",
)
