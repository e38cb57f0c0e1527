"""The imported key materials of one key in one Region (keys of EXTERNAL origin).

AWS lets a symmetric encryption key with imported material hold several materials: the first,
then each one imported with ImportType NEW_KEY_MATERIAL, which waits (PENDING_ROTATION) until
RotateKeyOnDemand makes it the current material; earlier ones stay for decryption
(NON_CURRENT). Each Region of a multi-Region key imports, deletes and lets expire its own copy
of each material, with its own ExpirationModel and ValidTo, while which material is current is
one fact for all Regions (a rotation on the primary moves every Region).

The bookkeeping lives in the key's metadata row, ``meta["x_mats"]``: version (as a string) ->
entry, where the version is the backing-key version the key's ciphertexts name (so a material's
KeyMaterialId, derived from key id and version, is the same in every Region). An entry holds:

- ``fp``: the material's fingerprint (HMAC under the store's fingerprint key of key id and
  material: what a later import must match, kept after the material itself is deleted);
- ``state``: ``CURRENT``, ``NON_CURRENT`` or ``PENDING`` (shown as PENDING_ROTATION, or as
  PENDING_MULTI_REGION_IMPORT_AND_ROTATION while a Region of the key lacks it);
- ``imported``: this Region holds the material now (ImportState IMPORTED, else PENDING_IMPORT);
- ``model`` / ``valid_to``: this Region's ExpirationModel and ValidTo of its last import;
- ``desc``: KeyMaterialDescription; ``rotated`` / ``rtype``: RotationDate and RotationType of
  the rotation that made it current (absent for the first material).

The key's own members follow its current entry (`refresh`): ``x_version`` (the current version
while this Region holds it, else 0), ``ExpirationModel`` and ``ValidTo`` (DescribeKey's), and
``x_expiry``, the earliest ValidTo of any material this Region holds (what `_settle` checks on
every call, so expiry costs one comparison). Rows written before several materials existed
(``x_fp`` and ``x_version`` only) are read as one material, version 1 (`entries`).
"""

from __future__ import annotations

from typing import Any, Final

from ._states import DISABLED, ENABLED, PENDING_IMPORT

__all__ = (
    "CURRENT",
    "NON_CURRENT",
    "PENDING",
    "adopt",
    "complete",
    "current",
    "entries",
    "expired",
    "for_replica",
    "next_expiry",
    "pending",
    "refresh",
    "shown_state",
    "unimported",
)

CURRENT: Final = "CURRENT"
NON_CURRENT: Final = "NON_CURRENT"
PENDING: Final = "PENDING"

Entry = dict[str, Any]


def entries(meta: dict[str, Any]) -> dict[str, Entry]:
    """The key's material entries (made from an older row's members the first time)."""
    mats = meta.get("x_mats")
    if mats is None:
        mats = {}
        if meta.get("x_fp") is not None:
            mats["1"] = {
                "fp": meta["x_fp"],
                "state": CURRENT,
                "imported": bool(meta.get("x_version")),
                "model": meta.get("ExpirationModel"),
                "valid_to": meta.get("ValidTo"),
            }
        meta["x_mats"] = mats
        meta.pop("x_fp", None)
    return mats


def _find(meta: dict[str, Any], state: str) -> tuple[int, Entry] | None:
    for v, e in entries(meta).items():
        if e["state"] == state:
            return int(v), e
    return None


def current(meta: dict[str, Any]) -> tuple[int, Entry] | None:
    """(version, entry) of the current material, imported here or not; None before any."""
    return _find(meta, CURRENT)


def pending(meta: dict[str, Any]) -> tuple[int, Entry] | None:
    """(version, entry) of the material waiting for RotateKeyOnDemand, if any."""
    return _find(meta, PENDING)


def complete(meta: dict[str, Any]) -> bool:
    """This Region holds every material permanently associated with the key (all but one
    pending rotation): AWS's condition for the key to be usable. Deleting or letting expire
    any of them, current or not, makes the key PendingImport until it is imported again."""
    mats = entries(meta)
    return bool(mats) and all(e["imported"] for e in mats.values() if e["state"] != PENDING)


def refresh(meta: dict[str, Any]) -> None:
    """Set the key's members that follow its entries (see the module docstring), and its
    state: Enabled or Disabled become PendingImport when a material is missing, PendingImport
    becomes Enabled when none is; other states (pending deletion) stay."""
    mats = entries(meta)
    cur = current(meta)
    meta["x_version"] = cur[0] if cur is not None and cur[1]["imported"] else 0
    held = [e for e in mats.values() if e["imported"] and e["state"] != PENDING]
    dates = [
        float(e["valid_to"])
        for e in held
        if e.get("model") == "KEY_MATERIAL_EXPIRES" and e.get("valid_to") is not None
    ]
    # DescribeKey's ValidTo: "the earliest time at which any imported key material
    # permanently associated with this KMS key expires"
    if not held:
        meta.pop("ExpirationModel", None)
        meta.pop("ValidTo", None)
    elif dates:
        meta["ExpirationModel"] = "KEY_MATERIAL_EXPIRES"
        meta["ValidTo"] = min(dates)
    else:
        meta["ExpirationModel"] = "KEY_MATERIAL_DOES_NOT_EXPIRE"
        meta.pop("ValidTo", None)
    every = [
        float(e["valid_to"])
        for e in mats.values()
        if e["imported"] and e.get("model") == "KEY_MATERIAL_EXPIRES" and e.get("valid_to")
    ]
    meta["x_expiry"] = min(every) if every else None
    state = meta["KeyState"]
    if state in (ENABLED, DISABLED) and not complete(meta):
        meta["KeyState"] = PENDING_IMPORT
    elif state == PENDING_IMPORT and complete(meta):
        meta["KeyState"] = ENABLED


def next_expiry(meta: dict[str, Any]) -> float | None:
    """When the first material this Region holds expires (None: none does)."""
    if "x_expiry" in meta:
        return meta["x_expiry"]  # type: ignore[no-any-return]
    if meta.get("ExpirationModel") == "KEY_MATERIAL_EXPIRES" and meta.get("ValidTo"):
        return float(meta["ValidTo"])  # a row written before several materials
    return None


def expired(meta: dict[str, Any], now: float) -> list[int]:
    """The versions of the materials this Region holds whose ValidTo has passed."""
    return sorted(
        int(v)
        for v, e in entries(meta).items()
        if e["imported"]
        and e.get("model") == "KEY_MATERIAL_EXPIRES"
        and e.get("valid_to") is not None
        and float(e["valid_to"]) <= now
    )


_SHARED = ("fp", "state", "desc", "rotated", "rtype")


def unimported(entry: Entry) -> Entry:
    """Another Region's entry as this Region's before it imports the material: what every
    Region shares (fingerprint, state, description, rotation), none of its import."""
    return {f: entry[f] for f in _SHARED if f in entry} | {"imported": False}


def for_replica(meta: dict[str, Any]) -> dict[str, Entry]:
    """A new replica's entries: every material permanently associated with the key, none
    imported yet (the replica is usable once it holds them all)."""
    return {v: unimported(e) for v, e in entries(meta).items() if e["state"] != PENDING}


def adopt(meta: dict[str, Any], family: dict[str, Entry]) -> None:
    """Give this Region an entry, not imported, for every material permanently associated
    with the key in another Region (`family`: every Region's entries), so that `complete`
    asks for all of them here too."""
    mats = entries(meta)
    for v, e in family.items():
        if e["state"] != PENDING and v not in mats:
            mats[v] = unimported(e)


def shown_state(entry: Entry, everywhere: bool) -> str:
    """The KeyMaterialState AWS shows: `everywhere` says whether every Region of the key holds
    a pending material (a single-Region key: always)."""
    if entry["state"] != PENDING:
        return str(entry["state"])
    return "PENDING_ROTATION" if everywhere else "PENDING_MULTI_REGION_IMPORT_AND_ROTATION"
