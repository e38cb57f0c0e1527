"""The service's exceptions, named exactly like the AWS KMS error codes.

A later HTTP layer turns `KmsServiceError.code` into the ``__type`` of an AWS error response,
so every refusal a client can see is one of these classes and nothing else. Messages name key
ids, states, parameter names and limits only: never plaintext, key material or ciphertext.

Store problems (`StoreError`, and its `RootKeyError` and `TamperedStoreError`) are not AWS
errors: a missing, truncated, corrupt or tampered store, or the wrong secret, is a configuration
problem that no retry can fix (restore from backup, or give the right root key). They carry the
code ``KMSInternalException`` for an HTTP layer, but clients must not treat them as transient.
"""

from __future__ import annotations

__all__ = (
    "AccessDeniedException",
    "AlreadyExistsException",
    "CloudHsmClusterInUseException",
    "CloudHsmClusterInvalidConfigurationException",
    "CloudHsmClusterNotActiveException",
    "CloudHsmClusterNotFoundException",
    "CloudHsmClusterNotRelatedException",
    "CustomKeyStoreHasCMKsException",
    "CustomKeyStoreInvalidStateException",
    "CustomKeyStoreNameInUseException",
    "CustomKeyStoreNotFoundException",
    "DependencyTimeoutException",
    "DigestError",
    "DisabledException",
    "DryRunOperationException",
    "ExpiredImportTokenException",
    "IncorrectKeyException",
    "IncorrectKeyMaterialException",
    "IncorrectTrustAnchorException",
    "InvalidAliasNameException",
    "InvalidArnException",
    "InvalidCiphertextException",
    "InvalidGrantIdException",
    "InvalidGrantTokenException",
    "InvalidImportTokenException",
    "InvalidKeyUsageException",
    "InvalidMarkerException",
    "KMSInternalException",
    "KMSInvalidMacException",
    "KMSInvalidSignatureException",
    "KMSInvalidStateException",
    "KeyUnavailableException",
    "KmsServiceError",
    "LimitExceededException",
    "MalformedPolicyDocumentException",
    "NotFoundException",
    "RootKeyError",
    "StoreError",
    "TagException",
    "TamperedStoreError",
    "ThrottlingException",
    "UnsupportedOperationException",
    "ValidationException",
    "XksKeyAlreadyInUseException",
    "XksKeyInvalidConfigurationException",
    "XksKeyNotFoundException",
    "XksProxyIncorrectAuthenticationCredentialException",
    "XksProxyInvalidConfigurationException",
    "XksProxyInvalidResponseException",
    "XksProxyUriEndpointInUseException",
    "XksProxyUriInUseException",
    "XksProxyUriUnreachableException",
)


class KmsServiceError(Exception):
    """Base of every refusal; `code` is the AWS error name (the class name by default)."""

    code: str = "KMSInternalException"
    alarm: bool = False

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.code)
        self.message = message or self.code

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__()
        if "code" not in cls.__dict__:
            cls.code = cls.__name__


class NotFoundException(KmsServiceError):
    """The key, alias, or other resource does not exist (in this region)."""


class DisabledException(KmsServiceError):
    """The key is disabled."""


class KMSInvalidStateException(KmsServiceError):
    """The key's state does not allow this operation."""


class InvalidCiphertextException(KmsServiceError):
    """The ciphertext was altered, or the encryption context does not match."""


class IncorrectKeyException(KmsServiceError):
    """The ciphertext was made under another key than the one named."""


class ValidationException(KmsServiceError):
    """A parameter is missing, malformed or out of its bounds."""


class AlreadyExistsException(KmsServiceError):
    """The resource (an alias, a replica) already exists."""


class LimitExceededException(KmsServiceError):
    """A quota (tags per key, aliases, ...) would be exceeded."""


class InvalidKeyUsageException(KmsServiceError):
    """The key's KeyUsage or key spec does not support this operation or algorithm."""


class KMSInvalidSignatureException(KmsServiceError):
    """The signature does not verify."""


class KMSInvalidMacException(KmsServiceError):
    """The MAC does not verify."""


class InvalidAliasNameException(KmsServiceError):
    """The alias name breaks the `alias/` rules or is reserved (`alias/aws/`)."""


class InvalidArnException(KmsServiceError):
    """The ARN is malformed or names another partition, account or region."""


class InvalidMarkerException(KmsServiceError):
    """A pagination marker was not issued by this service."""


class UnsupportedOperationException(KmsServiceError):
    """This kind of key does not support the operation (e.g. rotating an asymmetric key)."""


class InvalidImportTokenException(KmsServiceError):
    """The import token is unknown or belongs to another key."""


class ExpiredImportTokenException(KmsServiceError):
    """The import token (and its wrapping key) has expired."""


class IncorrectKeyMaterialException(KmsServiceError):
    """Re-imported material differs from the material the key was created with."""


class TagException(KmsServiceError):
    """A tag key or value is malformed or reserved (`aws:`)."""


class InvalidGrantTokenException(KmsServiceError):
    """A grant token is malformed, unknown, or names another key."""


class InvalidGrantIdException(KmsServiceError):
    """The grant id does not name a grant of this key."""


class AccessDeniedException(KmsServiceError):
    """No policy or grant allows the caller this action on this resource, or one denies it.

    The message has AWS's shape ("User: ARN is not authorized to perform: kms:Action on
    resource: ARN because ...") and the reason names what was missing, never a secret.
    """


class MalformedPolicyDocumentException(KmsServiceError):
    """A key policy or IAM policy is not valid JSON, breaks the policy grammar, names an
    unknown operator or an invalid principal, or is too large; the message says where."""


class DryRunOperationException(KmsServiceError):
    """The call would have succeeded; nothing was done because DryRun was set."""


class ThrottlingException(KmsServiceError):
    """Reserved for request quotas (a later issue)."""


class KMSInternalException(KmsServiceError):
    """Something broke inside the service (the store is unreadable, ...)."""


class CloudHsmClusterInUseException(KmsServiceError):
    """The HSM cluster (PKCS#11 token) already backs another custom key store."""


class CloudHsmClusterInvalidConfigurationException(KmsServiceError):
    """The HSM cluster (token) cannot hold this store's keys as configured."""


class CloudHsmClusterNotActiveException(KmsServiceError):
    """The HSM cluster's token cannot be reached (module or token missing)."""


class CloudHsmClusterNotFoundException(KmsServiceError):
    """No HSM cluster with that id is registered with this KMS."""


class CloudHsmClusterNotRelatedException(KmsServiceError):
    """The new cluster's token does not hold this store's keys."""


class CustomKeyStoreHasCMKsException(KmsServiceError):
    """The custom key store still holds KMS keys (schedule their deletion first)."""


class CustomKeyStoreInvalidStateException(KmsServiceError):
    """The custom key store's ConnectionState does not allow this operation."""


class CustomKeyStoreNameInUseException(KmsServiceError):
    """Another custom key store of this account has that name."""


class CustomKeyStoreNotFoundException(KmsServiceError):
    """No custom key store with that id or name in this account."""


class DependencyTimeoutException(KmsServiceError):
    """A dependency (an HSM or an external key store proxy) timed out; retryable."""


class IncorrectTrustAnchorException(KmsServiceError):
    """The trust anchor is not the one registered for the cluster."""


class KeyUnavailableException(KmsServiceError):
    """The key cannot be used right now; retryable."""


class XksKeyAlreadyInUseException(KmsServiceError):
    """That external key already backs another KMS key of this store."""


class XksKeyInvalidConfigurationException(KmsServiceError):
    """The external key is not an enabled AES-256 key that encrypts and decrypts."""


class XksKeyNotFoundException(KmsServiceError):
    """The external key store proxy has no key with that id."""


class XksProxyIncorrectAuthenticationCredentialException(KmsServiceError):
    """The proxy refused the store's SigV4 credential."""


class XksProxyInvalidConfigurationException(KmsServiceError):
    """The proxy settings cannot work (for example VPC endpoint connectivity)."""


class XksProxyInvalidResponseException(KmsServiceError):
    """The proxy answered something the XKS API does not allow."""


class XksProxyUriEndpointInUseException(KmsServiceError):
    """Another external key store uses that proxy endpoint."""


class XksProxyUriInUseException(KmsServiceError):
    """Another external key store uses that proxy endpoint and path."""


class XksProxyUriUnreachableException(KmsServiceError):
    """The proxy could not be reached (or did not answer GetHealthStatus)."""


class StoreError(KmsServiceError):
    """The store cannot be used as it is (missing, truncated, corrupt): not retryable.

    Not an AWS error: a server would report it as an internal error, but a client must not retry
    it; the message says what was found and how to recover (usually: restore from backup).
    """

    code = "KMSInternalException"


class RootKeyError(StoreError):
    """The root key is missing or wrong; the store was not changed.

    Raised by `Store.open`. Not an AWS error: a server would report it as an internal error.
    """

    code = "KMSInternalException"


class TamperedStoreError(StoreError):
    """A row of the store fails authentication under the root key: it was edited outside the
    service (or restored from another store). The row is refused and the refusal is an alarm."""

    code = "KMSInternalException"
    alarm = True


class DigestError(StoreError):
    """An audit digest file is malformed, unsigned, or cannot be written without replacing
    another (see `digests`). Not retryable."""

    code = "KMSInternalException"
