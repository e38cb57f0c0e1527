"""botocore's debug logs, kept free of secrets.

At DEBUG, botocore logs each request's parameters and each response body (KMS's
``Plaintext``: data keys), the signed request's headers and its canonical request (a session
token, ``X-Amz-Security-Token``: a bearer credential). An application that turned on debug
logging wrote every data key and its session token to its log (reviews). The records that hold
them are withheld (replaced by a line that says so); the others stay. Shared by the AWS KMS
backend and the lake's S3 client.
"""

from __future__ import annotations

import logging
import re

__all__ = ("guard_botocore_logs",)

#: What marks a record as holding a secret: a ``Plaintext`` member (``PrivateKeyPlaintext``
#: too), DeriveSharedSecret's ``SharedSecret``, a secret access key (an XKS store's
#: ``RawSecretAccessKey``, an IAM key's), a CloudHSM ``KeyStorePassword``, a session token, or
#: a request's signature (the ``Authorization`` header, botocore's ``Signature:`` line): a
#: signed request can be replayed within the clock-skew window, and a replayed Decrypt gave
#: the data key back to anyone who could read the log (review)
_SECRET_MARKS = re.compile(
    r"Plaintext|SharedSecret|SecretAccessKey|KeyStorePassword|security-token|SessionToken"
    r"|Authorization|Signature",
    re.IGNORECASE,
)


class _SecretLogFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # a record that cannot be formatted is not ours to judge
            return True
        if _SECRET_MARKS.search(text):
            record.msg = "(a %s record withheld by envelope: it holds key material or a token)"
            record.args = (record.name,)
        return True


_LOG_FILTER = _SecretLogFilter()
#: The botocore loggers that write request parameters, headers, canonical requests and bodies
_BOTOCORE_LOGGERS = ("botocore.endpoint", "botocore.parsers", "botocore.auth", "botocore.hooks")


def guard_botocore_logs() -> None:
    """Install the filter on botocore's loggers (once; process-wide, so it covers this
    process's other botocore clients too)."""
    for name in _BOTOCORE_LOGGERS:
        logger = logging.getLogger(name)
        if _LOG_FILTER not in logger.filters:
            logger.addFilter(_LOG_FILTER)
