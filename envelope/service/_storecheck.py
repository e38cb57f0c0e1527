"""The store check `envelope audit verify` runs beside the audit chain: is every row authentic?

The audit chain says what was done; this says whether the state it left is still the state the
service wrote: every key row's MAC (`_rows`), every sealed key-material row (unsealed under the
root key with its key id and version as AAD) and none of the versions a key row names missing,
every access-control row (principals, identity policies, grants: `_rows.record_mac`) and every
principal's set of policies, and that the store was upgraded to its schema once (a second
``UpgradeStore`` record means the rows were re-authenticated after a rollback).
"""

from __future__ import annotations

import json
import sqlite3

from . import _rows
from ._migrate import UPGRADE_OPERATION
from .errors import RootKeyError
from .store import Store, material_aad

__all__ = ("check_store",)


def _missing_versions(meta: object, key_id: str, versions: set[tuple[str, int]]) -> list[int]:
    """The material versions a key's authenticated row says it has (1 to ``x_version``) that
    have no row: only for keys whose material is made in the store and never deleted while
    the key exists (not imported, not multi-Region, not in a custom key store)."""
    if not isinstance(meta, dict) or meta.get("Origin") != "AWS_KMS" or meta.get("MultiRegion"):
        return []
    last = meta.get("x_version")
    if not isinstance(last, int) or isinstance(last, bool):
        return []
    return [v for v in range(1, last + 1) if (key_id, v) not in versions]


def _policy_sets(store: Store, conn: sqlite3.Connection) -> list[str]:
    """Principals whose identity-policy rows are not the ones their authenticated row names
    (a policy row deleted or added outside the KMS: each row is authenticated alone)."""
    attached: dict[str, list[str]] = {}
    for principal, name in conn.execute(
        "SELECT principal, name FROM identity_policies ORDER BY principal, name"
    ):
        attached.setdefault(str(principal), []).append(str(name))
    problems = []
    for arn, body, mac in conn.execute("SELECT arn, body, mac FROM principals ORDER BY arn"):
        names = attached.pop(str(arn), [])
        if not (
            isinstance(arn, str)
            and isinstance(body, str)
            and _rows.check_record(store.row_key, "principals", arn, body, mac)
        ):
            continue  # reported as edited above
        named = json.loads(body).get("PolicyNames")
        if named != names:
            problems.append(
                f"principal {arn:.120}: its identity policies are not the ones its row names "
                "(a policy row deleted or added outside the KMS)"
            )
    for arn in attached:
        problems.append(f"identity policies of {arn:.120}, which does not exist")
    return problems


def check_store(store: Store, conn: sqlite3.Connection) -> list[str]:
    """Every problem found, one sentence each (empty: the store's rows are authentic)."""
    problems: list[str] = []
    versions = {(str(k), v) for k, v in conn.execute("SELECT key_id, version FROM material")}
    for region, key_id, meta, mac in conn.execute(
        "SELECT region, key_id, meta, mac FROM keys ORDER BY region, key_id"
    ):
        if not (
            isinstance(region, str)
            and isinstance(key_id, str)
            and isinstance(meta, str)
            and _rows.check(store.row_key, region, key_id, meta, mac)
        ):
            problems.append(
                f"key {key_id!s:.80} in {region!s:.40}: its metadata fails authentication "
                "(edited outside the KMS)"
            )
            continue
        missing = _missing_versions(json.loads(meta), key_id, versions)
        if missing:
            problems.append(
                f"key {key_id!s:.80} in {region!s:.40}: its key material version"
                f"{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing[:10]))} "
                "named by its authenticated row is missing (deleted outside the KMS)"
            )
    for key_id, version, sealed in conn.execute(
        "SELECT key_id, version, sealed FROM material ORDER BY key_id, version"
    ):
        try:
            if not isinstance(sealed, bytes) or not isinstance(version, int):
                raise RootKeyError("malformed")
            store.root.unseal(sealed, material_aad(str(key_id), version))
        except RootKeyError:
            problems.append(
                f"key material {key_id!s:.80} version {version!s:.20} fails authentication "
                "(edited, or copied from another key)"
            )
    access = (
        ("principals", "SELECT arn, body, mac FROM principals ORDER BY arn", "principal"),
        (
            "identity_policies",
            "SELECT principal || '|' || name, body, mac FROM identity_policies "
            "ORDER BY principal, name",
            "identity policy",
        ),
        ("grants", "SELECT grant_id, body, mac FROM grants ORDER BY grant_id", "grant"),
        (
            "access_keys",
            "SELECT access_key_id, body, mac FROM access_keys ORDER BY access_key_id",
            "access key",
        ),
    )
    for table, sql, what in access:
        for ident, body, mac in conn.execute(sql):
            if not (
                isinstance(ident, str)
                and isinstance(body, str)
                and _rows.check_record(store.row_key, table, ident, body, mac)
            ):
                problems.append(
                    f"{what} {ident!s:.120} fails authentication (edited outside the KMS)"
                )
    problems += _policy_sets(store, conn)
    upgrades: dict[object, int] = {}
    pattern = f'%"operation":"{UPGRADE_OPERATION}"%'
    for (body,) in conn.execute("SELECT body FROM audit WHERE body LIKE ?", (pattern,)):
        try:
            to = json.loads(body)["params"]["ToSchema"]
        except (ValueError, KeyError, TypeError):
            continue  # an edited record: the chain check names it
        upgrades[to] = upgrades.get(to, 0) + 1
    for to, n in sorted(upgrades.items(), key=str):
        if n > 1:
            problems.append(
                f"the store was upgraded to schema {to} {n} times: its version was rolled back "
                "and its rows re-authenticated, so edits made before the second upgrade are "
                "hidden"
            )
    return problems
