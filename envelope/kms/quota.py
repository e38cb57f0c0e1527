"""Request-rate quotas: moved to `envelope._ratelimit` (a leaf module the KMS service shares);
this name stays for existing imports."""

from .._ratelimit import (
    AWS_DEFAULT_RATES as AWS_DEFAULT_RATES,
)
from .._ratelimit import (
    CRYPTOGRAPHIC as CRYPTOGRAPHIC,
)
from .._ratelimit import (
    OPERATION_FAMILIES as OPERATION_FAMILIES,
)
from .._ratelimit import (
    RateQuota as RateQuota,
)
from .._ratelimit import (
    TokenBucket as TokenBucket,
)
from .._ratelimit import (
    family_of as family_of,
)

__all__ = (
    "AWS_DEFAULT_RATES",
    "CRYPTOGRAPHIC",
    "OPERATION_FAMILIES",
    "RateQuota",
    "TokenBucket",
    "family_of",
)
