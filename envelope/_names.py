"""The shapes of the names a caller gives the embedded KMS: a Region and a principal.

A leaf, so that both the service (which enforces them on every call) and the command line's
settings (which check a profile's or the environment's values before anything runs, naming
where the value came from) use one definition. Parsing a principal into its parts stays in
`envelope.service.access.principals`.
"""

from __future__ import annotations

import re

__all__ = (
    "IAM_ARN",
    "KMS_ARN",
    "KMS_PARTITION",
    "REGION",
    "SERVICE_PRINCIPAL",
    "SESSION_ARN",
    "principal_problem",
)

#: A Region name of the embedded KMS ("us-east-1", "eu-central-2").
REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")

# IAM names: letters, digits and +=,.@_- (AWS's documented character set), 1-64 characters;
# paths are "/"-separated runs of the same characters (AWS allows up to 512 characters).
_NAME = r"[\w+=,.@-]{1,64}"
#: The partitions a KMS ARN may name (aws, aws-cn, aws-us-gov, ...).
KMS_PARTITION = r"aws(?:-[a-z]+)*"
#: A KMS key or alias ARN: groups partition, Region, account, "key" or "alias", the rest (the
#: aws backend's key references and the embedded KMS's reader both read it).
KMS_ARN = re.compile(
    rf"arn:({KMS_PARTITION}):kms:([a-z0-9-]+):(\d{{12}}):(key|alias)/([A-Za-z0-9/_+=,.@-]+)"
)
IAM_ARN = re.compile(
    r"arn:aws:iam::(?P<account>[0-9]{12}):"
    r"(?:(?P<root>root)|(?P<kind>user|role)/(?P<path>(?:[\w+=,.@-]+/){0,32})(?P<name>"
    + _NAME
    + r"))\Z",
    re.ASCII,
)
SESSION_ARN = re.compile(
    r"arn:aws:sts::(?P<account>[0-9]{12}):assumed-role/(?P<role>"
    + _NAME
    + r")/(?P<session>[\w+=,.@-]{2,64})\Z",
    re.ASCII,
)
# Service principals are DNS-like names under amazonaws.com ("envelope.amazonaws.com").
SERVICE_PRINCIPAL = re.compile(r"(?P<name>[a-z0-9][a-z0-9-]*)(?:\.[a-z0-9-]+)*\.amazonaws\.com\Z")


def principal_problem(text: str) -> str | None:
    """None if `text` is a caller ARN or service principal, else what it should be."""
    if IAM_ARN.match(text) or SESSION_ARN.match(text) or SERVICE_PRINCIPAL.match(text):
        return None
    shown = text if len(text) <= 200 else text[:200] + "..."
    return (
        f"{shown!r} is not a principal: expected arn:aws:iam::<account>:root, "
        "arn:aws:iam::<account>:user/<name>, arn:aws:iam::<account>:role/<name>, "
        "arn:aws:sts::<account>:assumed-role/<role>/<session> or a service principal "
        "such as envelope.amazonaws.com"
    )
