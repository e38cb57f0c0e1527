"""The Regions AWS KMS has, from botocore's endpoint data: one list for the server (which
Regions it answers for) and the embedded KMS (where ReplicateKey may put a replica).

botocore is not a dependency of the base install (the server and the `aws` backend bring it);
without it the answer is None and callers keep to the well-formed-name check.
"""

from __future__ import annotations

import functools

__all__ = ("aws_kms_regions",)


@functools.cache
def aws_kms_regions() -> frozenset[str] | None:
    """Every Region of every partition where AWS KMS has an endpoint, or None without
    botocore. A made-up Region name has no AWS endpoint."""
    try:
        import botocore.session
    except ImportError:
        return None
    session = botocore.session.get_session()
    return frozenset(
        region
        for partition in session.get_available_partitions()
        for region in session.get_available_regions("kms", partition_name=partition)
    )
