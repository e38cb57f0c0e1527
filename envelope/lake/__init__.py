"""Data-lake scale: bulk encrypt, decrypt, verify and re-wrap whole prefixes.

Paths are pyarrow filesystem URIs (local paths, ``s3://...``), so any filesystem pyarrow
supports works. See `envelope.lake.jobs` for the library API and `envelope lake --help`.
"""
