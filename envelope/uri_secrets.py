"""Secrets in filesystem URIs, masked wherever a URI is shown (reports, logs, errors).

A pyarrow filesystem URI may carry credentials: ``s3://KEY:SECRET@bucket/...`` and query
members such as ``secret_key``, ``session_token``, Azure's ``client_secret``, ``account_key``
and ``sas_token``, or GCS's ``access_token``. A leaf module, so that the lake jobs and the
audit-digest location (server side) share one idea of what to hide.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

__all__ = ("redact_uri", "without_secrets")

#: query members of a pyarrow filesystem URI that carry secrets (compared in lower case): any
#: name that says secret, token, key, password, credential or sig (an Azure SAS's signature,
#: given as its own members) (masking one too many is harmless)
_SECRET_NAME = r"[a-z0-9_]*(?:secret|token|key|passw(?:or)?d|credential|sas|sig)[a-z0-9_]*"
#: scheme://USER:SECRET@ — the secret runs to the last "@" before the query: AWS secret keys
#: hold "/" and "+", which a URI parser would take for the start of the path
_USERINFO = re.compile(r"^(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:@/?#]*):(?P<secret>[^?#]*)@")
_QUERY_SECRET = re.compile(
    r"(?P<key>[?&]" + _SECRET_NAME + r"=)(?P<value>[^&#]*)", re.IGNORECASE
)


def _secrets(uri: str) -> list[str]:
    """The secrets spelled in `uri`: its userinfo's secret and its credential query members."""
    found = []
    m = _USERINFO.match(uri)
    if m and m.group("secret"):
        found.append(m.group("secret"))
    found += [q.group("value") for q in _QUERY_SECRET.finditer(uri) if q.group("value")]
    return found


def redact_uri(uri: str) -> str:
    """`uri` fit for a report, a log or a message: the secret of ``s3://KEY:SECRET@...`` and
    the credentials of its query (any member named like a secret, a token or a key, in any
    case) replaced by ``***``. Anything that is not a URI comes back as it is."""
    if "://" not in uri:
        return uri
    uri = _USERINFO.sub(lambda m: f"{m.group('head')}:***@", uri, count=1)
    return _QUERY_SECRET.sub(lambda q: f"{q.group('key')}***", uri)


def without_secrets(text: str, uri: str) -> str:
    """`text` (an error that may quote `uri` or parts of it) with `uri`'s secrets masked."""
    text = text.replace(uri, redact_uri(uri))
    for secret in _secrets(uri):
        text = text.replace(secret, "***").replace(unquote(secret), "***")
    return text
