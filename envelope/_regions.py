"""The Regions AWS KMS has in the `aws` partition, from botocore's endpoint data: one list for
the server (which Regions it answers for) and the embedded KMS (where ReplicateKey may put a
replica).

This KMS is one account space of the `aws` partition: its ARNs are ``arn:aws:...`` and an ARN
of another partition names nothing here. The China and GovCloud Regions are other partitions
(``arn:aws-cn:``, ``arn:aws-us-gov:``), so they are not served, and a replica never goes there
(ReplicateKey: the replica must be "in the same Amazon Web Services partition"; a replica in
cn-north-1 was made, with an ``arn:aws:`` ARN that partition cannot have).

botocore is not a dependency of the base install (the server and the `aws` backend bring it);
without it the answer is None and callers keep to the well-formed-name check.
"""

from __future__ import annotations

import functools

__all__ = ("PARTITION", "aws_kms_regions")

#: The partition this KMS belongs to (the second field of its ARNs).
PARTITION = "aws"


@functools.cache
def aws_kms_regions() -> frozenset[str] | None:
    """Every Region of the `aws` partition where AWS KMS has an endpoint, or None without
    botocore. A made-up Region name has no AWS endpoint."""
    try:
        import botocore.session
    except ImportError:
        return None
    session = botocore.session.get_session()
    return frozenset(session.get_available_regions("kms", partition_name=PARTITION))
