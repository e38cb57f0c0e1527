"""Parquet and `envelope`, two ways (see docs/parquet.md); kept so existing imports work.

- `envelope.lake.parquet_pme`: Parquet modular encryption, with envelope's KMS backends
  wrapping Parquet's keys (`ParquetCrypto`, `EnvelopeKmsClient`, ...).
- `envelope.lake.parquet_objects`: reading a Parquet file that envelope encrypted whole, in
  place, with ranged reads (`open_encrypted_parquet`).

This module re-exports both; new code imports the one it uses.
"""

from __future__ import annotations

from .parquet_objects import EncryptedParquetFile, aopen_encrypted_parquet, open_encrypted_parquet
from .parquet_pme import (
    DEFAULT_CACHE_LIFETIME,
    PME_PURPOSE,
    EnvelopeKmsClient,
    ParquetCrypto,
    check_encrypted,
    crypto_factory,
    kms_client_factory,
    pme_kms_context,
    read_encrypted_table,
    write_encrypted_table,
)

__all__ = (
    "DEFAULT_CACHE_LIFETIME",
    "PME_PURPOSE",
    "EncryptedParquetFile",
    "EnvelopeKmsClient",
    "ParquetCrypto",
    "aopen_encrypted_parquet",
    "check_encrypted",
    "crypto_factory",
    "kms_client_factory",
    "open_encrypted_parquet",
    "pme_kms_context",
    "read_encrypted_table",
    "write_encrypted_table",
)
