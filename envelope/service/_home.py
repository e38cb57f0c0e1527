"""Where the embedded KMS lives: ``$ENVELOPE_HOME`` (default ``~/.envelope``).

Layout: ``kms.sqlite3`` (the store, with its ``-wal`` and ``-shm`` files) and ``root.key`` (the
root-key file, mode 0600). ``$ENVELOPE_KMS_PASSPHRASE`` selects a scrypt passphrase instead of
the file, and ``$ENVELOPE_ROOT_KEY=pkcs11:...`` a key in an HSM (`Pkcs11RootKey`, before
both); ``$ENVELOPE_REGION`` picks the Region (default us-east-1). The audit digests go to
``$ENVELOPE_AUDIT_DIGESTS`` (a folder or an ``s3://`` prefix), default ``<home>.audit-digests``
beside the home (``~/.envelope.audit-digests``): a separate path, so the home can be deleted or
restored without its anchor.
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

from .._names import REGION as REGION_PATTERN
from .._ratelimit import RateQuota
from .._regions import aws_kms_regions
from ._core import DEFAULT_REGION, Clock
from .digests import default_location
from .errors import RootKeyError, StoreError
from .rootkey import (
    FileRootKey,
    InsecureRootKeyWarning,
    PassphraseRootKey,
    Pkcs11RootKey,
    RootKeyProvider,
    strict_from_environment,
)
from .service import KeyService
from .store import Store, Synchronous, read_only_uri, store_files

__all__ = (
    "ROOT_KEY_NAME",
    "STORE_NAME",
    "default_home",
    "digests_location",
    "home_paths",
    "open_service",
    "store_path",
)

STORE_NAME = "kms.sqlite3"
ROOT_KEY_NAME = "root.key"


def default_home(home: str | os.PathLike[str] | None = None) -> Path:
    if home is not None:
        return Path(home).expanduser()
    env = os.environ.get("ENVELOPE_HOME")
    return Path(env).expanduser() if env else Path.home() / ".envelope"


def store_path(home: str | os.PathLike[str] | None = None) -> Path:
    """Where the store of `home` (default ``$ENVELOPE_HOME`` or ``~/.envelope``) lives: the
    public answer for clients that must not reach into this module."""
    return default_home(home) / STORE_NAME


def home_paths(home: str | os.PathLike[str] | None = None) -> tuple[str, ...]:
    """Where the embedded KMS under `home` keeps its state, whether or not a store is open
    there: the store and its companions, the root-key file, and the digest folder when it is
    local (`Store.state_paths` for an open store). For commands that write files and open no
    store, which must not write over these."""
    h = default_home(home)
    paths = list(store_files(h / STORE_NAME))
    paths.append(str(h / ROOT_KEY_NAME))
    digests = digests_location(h)
    if "://" not in digests:
        paths.append(digests)
    return tuple(paths)


def _check_folder(home: Path, strict: bool) -> None:
    """A home that group or others may write lets them replace the store or its root key (or
    plant a link where one will be made): warned about, refused in strict mode, as a root-key
    file they may read is."""
    mode = stat.S_IMODE(os.stat(home).st_mode)
    if not mode & 0o022:
        return
    message = (
        f"the KMS home {home} is writable by group or others (mode {mode:04o}): they could "
        f"replace the store or its root key: chmod 700 {home}"
    )
    if strict:
        raise StoreError(message + " (refused in strict mode)")
    warnings.warn(message, InsecureRootKeyWarning, stacklevel=3)


def default_root(home: Path, *, strict: bool | None = None) -> RootKeyProvider:
    uri = os.environ.get("ENVELOPE_ROOT_KEY")
    if uri:
        if not uri.startswith("pkcs11:"):
            raise RootKeyError("$ENVELOPE_ROOT_KEY is a pkcs11: URI (docs/hsm.md)")
        return Pkcs11RootKey(uri)
    passphrase = os.environ.get("ENVELOPE_KMS_PASSPHRASE")
    if passphrase:
        return PassphraseRootKey(passphrase)
    return FileRootKey(home / ROOT_KEY_NAME, strict=strict)


def digests_location(home: Path, digests: str | os.PathLike[str] | None = None) -> str:
    """`digests`, else ``$ENVELOPE_AUDIT_DIGESTS``, else ``<home>.audit-digests`` beside it."""
    if digests is not None:
        return os.fspath(digests)
    env = os.environ.get("ENVELOPE_AUDIT_DIGESTS")
    if env:
        return env
    return str(default_location(home / STORE_NAME))


def _check_region(region: str, store: Path) -> None:
    """Refuse a Region no key can be in, before a store is opened or made: a name of the
    wrong shape, or (with botocore's Region list at hand) a name AWS does not have and this
    store holds no keys in. A typo (us-eest-1) made keys in a Region no one looks in, and
    ``envelope serve --region bogus`` left a new store behind with a traceback (review).

    The default Region and one the store holds keys in are taken without botocore: its Region
    list costs a third of a second to load, which every command of the embedded KMS paid."""
    if not REGION_PATTERN.match(region):
        raise StoreError(f"{region!r} is not a Region name (like us-east-1)")
    if region == DEFAULT_REGION or _holds_keys_in(store, region):
        return
    aws = aws_kms_regions()
    if aws is None or region in aws:
        return
    raise StoreError(
        f"{region!r} is not an AWS Region of the aws partition (this KMS's ARNs are arn:aws:), "
        "and this store holds no keys in it: check --region or $ENVELOPE_REGION"
    )


def _holds_keys_in(store: Path, region: str) -> bool:
    """Whether the store at `store` (if any) holds a key in `region` (a store that cannot be
    read is left to `Store.open` to explain)."""
    if not store.exists():
        return False
    import sqlite3

    try:
        conn = sqlite3.connect(read_only_uri(store), uri=True)
        try:
            held = conn.execute("SELECT 1 FROM keys WHERE region=? LIMIT 1", (region,)).fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return True  # (not readable as a store here: Store.open says what is wrong with it)
    return held is not None


def open_service(
    home: str | os.PathLike[str] | None = None,
    *,
    region: str | None = None,
    root: RootKeyProvider | None = None,
    synchronous: Synchronous = "NORMAL",
    clock: Clock | None = None,
    quota: RateQuota | None = None,
    digests: str | os.PathLike[str] | None = None,
    strict: bool | None = None,
    principal: str | None = None,
    read_only: bool = False,
) -> KeyService:
    """Open (creating on first use) the store under `home` and return its `KeyService`.

    The service owns the store: `close()` seals the audit log and closes the file. `strict`
    (default ``$ENVELOPE_STRICT``) refuses a root-key file readable by group or others instead
    of warning (`InsecureRootKeyWarning`). `principal` is who calls when a call names no
    principal (default ``$ENVELOPE_PRINCIPAL``, else the account root). `read_only` opens an
    existing store for checking (`Store.open`): no schema upgrade, no digests published.
    """
    h = default_home(home)
    region = region or os.environ.get("ENVELOPE_REGION") or DEFAULT_REGION
    _check_region(region, h / STORE_NAME)
    try:
        h.mkdir(parents=True, exist_ok=True, mode=0o700)
    except (FileExistsError, NotADirectoryError):  # a file where the home (or a parent) goes
        raise StoreError(f"the KMS home {str(h)!r} is not a folder") from None
    _check_folder(h, strict_from_environment() if strict is None else strict)
    provider = root or default_root(h, strict=strict)
    if (
        not isinstance(provider, FileRootKey)
        and not (h / STORE_NAME).exists()
        and (h / ROOT_KEY_NAME).exists()
    ):
        # The file provider refuses this itself (under the store's creation lock); another
        # provider never looks at root.key, so it is checked here.
        raise RootKeyError(
            f"{h / ROOT_KEY_NAME} exists but the store {h / STORE_NAME} does not: the store was "
            "deleted or moved. A new store is not created beside an old root key; restore the "
            "store from a backup, or move the root-key file away to start a new, empty KMS."
        )
    store = Store.open(
        h / STORE_NAME,
        provider,
        synchronous=synchronous,
        digests=digests_location(h, digests),
        read_only=read_only,
    )
    try:
        return KeyService(
            store,
            clock=clock,
            region=region,
            owns_store=True,
            quota=quota,
            principal=principal or os.environ.get("ENVELOPE_PRINCIPAL") or None,
        )
    except BaseException:
        store.close()
        raise
