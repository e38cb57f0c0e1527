"""The AWS KMS External Key Store (XKS) proxy API, version 1: both of its sides.

- `envelope.xks.spec`: paths, members, limits, error names and statuses (no I/O).
- `envelope.xks.client`: `XksClient`, what the KMS calls a proxy with (HTTPS, SigV4).
- `envelope.xks.app` and `envelope.xks.run`: `envelope xks serve`, a proxy in front of a
  PKCS#11 token (`envelope.pkcs11`).
- `envelope.xks.errors`: the errors of both sides.

Nothing is imported here: the KMS loads only the client, the proxy only its own modules.
docs/xks.md.
"""
