"""GetKeyLastUsage: the last successful cryptographic operation with a key, from the audit log.

AWS answers from a record it keeps beside CloudTrail; here every call is already in the
tamper-evident audit log, so the answer is read from it (no write on the hot path to keep a
second copy): the newest record of this Region that succeeded, names one of the cryptographic
operations and names the key (as the key the call used, or as a ReEncrypt's destination, whose
use AWS records for that key too). The scan runs newest first and stops at the first match; a
key never used is a scan of the whole log, done in SQLite (`instr` on the key's ARN) before any
record is parsed. `CloudTrailEventId` is the audit record's sequence number (`envelope audit
tail`, and the record's place in the hash chain); `KmsRequestId` its request id.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from ._core import RequestContext, Response, ServiceCore, _Call, _Key
from ._states import READ
from .errors import InvalidArnException, NotFoundException

#: The operations AWS counts as a key's cryptographic use.
CRYPTOGRAPHIC_OPERATIONS = frozenset(
    {
        "Encrypt",
        "Decrypt",
        "ReEncrypt",
        "GenerateDataKey",
        "GenerateDataKeyWithoutPlaintext",
        "GenerateDataKeyPair",
        "GenerateDataKeyPairWithoutPlaintext",
        "Sign",
        "Verify",
        "GenerateMac",
        "VerifyMac",
        "DeriveSharedSecret",
        "Encapsulate",
        "Decapsulate",
    }
)
_BATCH = 512


class KeyUsageOps(ServiceCore):
    """GetKeyLastUsage."""

    def get_key_last_usage(
        self, *, key_id: str, principal: str | None = None, context: RequestContext | None = None
    ) -> Response:
        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            if isinstance(key_id, str) and ":alias/" in key_id:  # AWS: no alias names here
                raise InvalidArnException(f"{key_id[:256]} is an alias ARN, not a key ARN")
            if isinstance(key_id, str) and key_id.startswith("alias/"):
                raise NotFoundException(f"Invalid keyId '{key_id[:256]}': name the key itself")
            key = self._key(conn, call, key_id, READ, now)
            created = float(key.meta["CreationDate"])
            return {
                "KeyId": key.id,
                "KeyLastUsage": self._last_use(conn, key),
                "TrackingStartDate": created,
                "KeyCreationDate": created,
            }

        return self._run("GetKeyLastUsage", principal, context, {}, op)

    def _last_use(self, conn: sqlite3.Connection, key: _Key) -> dict[str, Any]:
        before: int | None = None
        while True:
            rows = conn.execute(
                "SELECT seq, body FROM audit WHERE instr(body, ?) > 0"
                + (" AND seq < ?" if before is not None else "")
                + " ORDER BY seq DESC LIMIT ?",
                (key.arn, before, _BATCH) if before is not None else (key.arn, _BATCH),
            ).fetchall()
            for seq, body in rows:
                try:
                    record = json.loads(body)
                except ValueError:
                    continue
                if self._used(record, key):
                    return {
                        "Operation": record["operation"],
                        "Timestamp": float(record["time"]),
                        "CloudTrailEventId": str(seq),
                        "KmsRequestId": str(record.get("request_id") or ""),
                    }
            if len(rows) < _BATCH:
                return {}
            before = int(rows[-1][0])

    @staticmethod
    def _used(record: Any, key: _Key) -> bool:
        if not isinstance(record, dict) or record.get("outcome") != "ok":
            return False
        if record.get("region") != key.region:
            return False
        operation = record.get("operation")
        if operation not in CRYPTOGRAPHIC_OPERATIONS:
            return False
        if record.get("key_id") == key.arn:
            return True
        params = record.get("params")
        return (
            operation == "ReEncrypt"
            and isinstance(params, dict)
            and params.get("DestinationKeyId") == key.arn
        )
