"""`envelope keys ...`: every key-lifecycle operation of the embedded KMS.

Each command opens the store under ``--home`` / ``$ENVELOPE_HOME`` (default ``~/.envelope``,
created with its root-key file on first use) in ``--region`` and calls one `KeyService`
operation. Output is the AWS-shaped response (binary members base64, times as epoch seconds),
drawn by `envelope.cli._output` as ``--output json|text|table`` and ``--query`` ask (``--json``
is ``--output json``); never truncated. Exit codes: 0 success, 2 usage or
configuration (including a wrong root key, or a missing, truncated or corrupt store), 3 the
KMS refused (the AWS error code is printed).
"""

from __future__ import annotations

import argparse
import errno
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError
from ..printable import printable
from ..service import KeyService, KmsServiceError, open_service, store_path
from ..service.errors import AccessDeniedException, StoreError, TamperedStoreError
from ._common import EXIT_IO, EXIT_KMS, EXIT_OK, EXIT_USAGE, add_principal_argument, err
from ._output import add_output_arguments, emit

__all__ = ("add_store_arguments", "emit", "register")


Handler = Callable[[argparse.Namespace, KeyService], Any]


def _err(message: str) -> None:
    """One line on stderr. Messages quote what the caller typed (a key id, an alias): it is
    escaped (a newline or a terminal escape in an argument split the line or recoloured the
    terminal; review)."""
    err(printable(message))


def add_store_arguments(p: argparse.ArgumentParser, *, principal: bool = True) -> None:
    """``--home``, ``--region``, ``--digests``, ``--strict`` and the output options
    (``--output``, ``--query``, ``--json``, ``--profile``), shared by keys/audit commands;
    ``--as`` is listed only where a `principal` applies."""
    g = p.add_argument_group("embedded KMS")
    g.add_argument(
        "--home",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="KMS home (default $ENVELOPE_HOME or ~/.envelope)",
    )
    g.add_argument(
        "--region",
        default=argparse.SUPPRESS,
        help="Region namespace of the store (default $ENVELOPE_REGION or us-east-1)",
    )
    g.add_argument(
        "--digests",
        metavar="DIR|s3://PREFIX",
        default=argparse.SUPPRESS,
        help="where audit digests are published (default $ENVELOPE_AUDIT_DIGESTS or "
        "HOME.audit-digests beside the home)",
    )
    g.add_argument(
        "--strict",
        action="store_true",
        default=argparse.SUPPRESS,
        help="refuse a root-key file readable by group or others (default: warn; also "
        "$ENVELOPE_STRICT=1)",
    )
    add_principal_argument(g, shown=principal)
    add_output_arguments(p, nested=True)
    p.set_defaults(settings=("home", "region", "principal", "output"))


@contextmanager
def open_from_args(args: argparse.Namespace) -> Iterator[KeyService]:
    """The embedded KMS of the command line's home. Only a command that makes something
    (`creates_store`: CreateKey, a user or role, an access key, an HSM cluster) starts a
    store where there is none; any other finds nothing in an empty KMS, and a mistyped
    `--home` would otherwise leave a new store behind and answer "no keys"."""
    home = getattr(args, "home", None)
    path = store_path(home)
    if not getattr(args, "creates_store", False) and not path.exists():
        raise ConfigurationError(
            f"no embedded KMS store at {str(path)!r} (check --home or $ENVELOPE_HOME; "
            "`envelope keys create` starts one)"
        )
    read_only = getattr(args, "read_only", False)
    if read_only == "if-unwritable":  # a reader that upgrades an older store it can write
        from ..service.store import unwritable

        read_only = unwritable(path) is not None
    svc = open_service(  # an exposed root-key file warns: `envelope_warnings` shows it
        home,
        region=getattr(args, "region", None),
        digests=getattr(args, "digests", None),
        strict=True if getattr(args, "strict", False) else None,
        principal=getattr(args, "principal", None),
        read_only=bool(read_only),
    )
    try:
        yield svc
    finally:
        svc.close()


def _by_arn(args: argparse.Namespace, svc: KeyService) -> None:
    """Replace an alias name or alias ARN in `args.key` by its key's ARN (a DescribeKey call).

    AWS takes an alias only in DescribeKey and the cryptographic operations; the management
    operations want "the key ID or key ARN" and refuse an alias. On the command line an alias
    is the name people know, so it is looked up first, as the caller."""
    ref = getattr(args, "key", None)
    if isinstance(ref, str) and (ref.startswith("alias/") or ":alias/" in ref):
        args.key = str(svc.describe_key(key_id=ref)["KeyMetadata"]["Arn"])


#: Errors of a path named on the command line that names nothing usable
_MISNAMED = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP})


def _run(
    fn: Handler,
    *,
    takes_alias: bool = False,
    tampered: int = EXIT_KMS,
    tampered_what: str = "",
) -> Callable[[argparse.Namespace], int]:
    """The handler of a command: `fn` with the store open and errors reported. Unless the
    operation `takes_alias`, an alias given as KEY is resolved first (`_by_arn`). A tampered
    store exits with `tampered` (`audit verify`: 1, a failed verification)."""

    def handler(args: argparse.Namespace) -> int:
        try:
            with open_from_args(args) as svc:
                if not takes_alias:
                    _by_arn(args, svc)
                result = fn(args, svc)
        except TamperedStoreError as e:  # a row edited outside the KMS: the key is refused
            _err(f"ALARM: {tampered_what}{e.message}")
            return tampered
        except StoreError as e:  # wrong root key, truncated or corrupt store: not the KMS refusing
            _err(str(e))
            return EXIT_USAGE
        except KmsServiceError as e:
            _err(f"{e.code}: {e.message}")
            return EXIT_KMS
        except OSError as e:
            _err(f"{e.strerror or e}" + (f": {e.filename}" if e.filename else ""))
            # a --file or --trust-policy-file named wrong is the command line's fault (2); the
            # output or the storage failing (a full disk, a closed pipe, permission) is an I/O
            # error (5), as docs/cli.md says (both were 2)
            return EXIT_USAGE if e.errno in _MISNAMED else EXIT_IO
        except ValueError as e:
            _err(str(e))
            return EXIT_USAGE
        return result if isinstance(result, int) else EXIT_OK

    return handler


def _pairs(items: list[str] | None) -> list[dict[str, str]]:
    tags = []
    for item in items or ():
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise ValueError(f"tags must be KEY=VALUE, got {item!r}")
        tags.append({"TagKey": k, "TagValue": v})
    return tags


def _all_pages(call: Callable[[str | None], dict[str, Any]], member: str) -> list[Any]:
    items: list[Any] = []
    marker: str | None = None
    while True:
        page = call(marker)
        items.extend(page[member])
        if not page.get("Truncated"):
            return items
        marker = page["NextMarker"]


# -- handlers ---------------------------------------------------------------------------------


def _store_type(svc: KeyService, store_id: str) -> str | None:
    """The custom key store's type, or None when it cannot be read (CreateKey then says why)."""
    try:
        (store,) = svc.describe_custom_key_stores(custom_key_store_id=store_id)["CustomKeyStores"]
    except (KmsServiceError, ValueError):
        return None
    kind = store.get("CustomKeyStoreType")
    return kind if isinstance(kind, str) else None


def _create(args: argparse.Namespace, svc: KeyService) -> None:
    policy = None
    if args.document is not None or args.file is not None:
        from .policy import read_document

        policy = read_document(args)
    origin = args.origin
    if args.custom_key_store is not None and origin is None:
        # a key in a custom key store: its origin follows from the store's kind
        origin = "EXTERNAL_KEY_STORE" if args.xks_key_id is not None else "AWS_CLOUDHSM"
        external = _store_type(svc, args.custom_key_store) == "EXTERNAL_KEY_STORE"
        if args.xks_key_id is None and external:
            # (it was guessed AWS_CLOUDHSM, and refused as an origin the user never gave)
            raise ConfigurationError(
                f"{args.custom_key_store} is an external key store: give the external key's "
                "id in the proxy with --xks-key-id"
            )
    resp = svc.create_key(
        description=args.description,
        key_spec=args.key_spec,
        key_usage=args.key_usage or _default_usage(args.key_spec),
        origin=origin or "AWS_KMS",
        custom_key_store_id=args.custom_key_store,
        xks_key_id=args.xks_key_id,
        multi_region=args.multi_region,
        tags=_pairs(args.tag),
        policy=policy,
        bypass_policy_lockout_safety_check=args.bypass_policy_lockout_safety_check,
    )
    emit(args, resp, "CreateKey")


def _default_usage(spec: str) -> str:
    """The one KeyUsage a spec has, or its most common one (RSA: ENCRYPT_DECRYPT; ECC on the
    NIST curves: SIGN_VERIFY, not KEY_AGREEMENT); AWS itself requires KeyUsage for them."""
    if spec.startswith("HMAC_"):
        return "GENERATE_VERIFY_MAC"
    if spec.startswith(("ECC_", "ML_DSA_")):
        return "SIGN_VERIFY"
    if spec.startswith("ML_KEM_"):
        return "ENCAPSULATE_DECAPSULATE"
    return "ENCRYPT_DECRYPT"


#: What `keys list` adds to each ListKeys entry (from DescribeKey), beside its aliases.
_LIST_DETAILS = ("KeyState", "KeySpec", "KeyUsage", "Description")


def _list(args: argparse.Namespace, svc: KeyService) -> int:
    """ListKeys, each entry (KeyId, KeyArn, as AWS) with its state, spec, usage, description
    and aliases added: one listing that a person and a script both read whole."""
    keys = _all_pages(lambda m: svc.list_keys(marker=m), "Keys")
    aliases: dict[str, list[str]] | None = {}
    try:
        found: dict[str, list[str]] = {}
        for a in _all_pages(lambda m: svc.list_aliases(marker=m), "Aliases"):
            found.setdefault(a["TargetKeyId"], []).append(a["AliasName"])
        aliases = found
    except AccessDeniedException:
        # a caller allowed kms:ListKeys alone still gets its list (the details are extras)
        aliases = None
        _err("note: not allowed kms:ListAliases, so no aliases are shown")
    rows = []
    hidden = 0
    alarms = 0
    for k in keys:
        meta: dict[str, Any] = {}
        if not args.brief:  # one DescribeKey per key (each one audited)
            try:
                meta = svc.describe_key(key_id=k["KeyId"])["KeyMetadata"]
            except AccessDeniedException:
                hidden += 1
            except TamperedStoreError as e:
                # one edited row: that key is named and refused, the others still listed
                # (it sank the whole listing; review); the command still exits 3
                _err(f"ALARM: {e.message}")
                alarms += 1
        # --brief leaves the details out (they printed as null, and None columns in text)
        details = {} if args.brief else {f: meta.get(f) for f in _LIST_DETAILS}
        row = {**k, **details}
        if aliases is not None:  # (unknown: left out. A None was a scalar, so text output
            # gained a first column and every `cut -f` field moved; review)
            row["Aliases"] = aliases.get(k["KeyId"], [])
        rows.append(row)
    if hidden:
        _err(f"note: not allowed kms:DescribeKey on {hidden} of {len(keys)} keys: no details shown")
    emit(args, {"Keys": rows}, "ListKeys")
    return EXIT_KMS if alarms else EXIT_OK


def _describe(args: argparse.Namespace, svc: KeyService) -> None:
    emit(args, svc.describe_key(key_id=args.key), "DescribeKey")


def _simple(op: str) -> Handler:
    title = "".join(w.capitalize() for w in op.split("_"))

    def fn(args: argparse.Namespace, svc: KeyService) -> None:
        resp = getattr(svc, op)(key_id=args.key)
        if resp:
            emit(args, resp, title)
        else:  # nothing to print (as the AWS CLI); a person still sees it was done
            _err(f"{op.replace('_', ' ')}: done ({args.key})")

    return fn


def _update_description(args: argparse.Namespace, svc: KeyService) -> None:
    resp = svc.update_key_description(key_id=args.key, description=args.description)
    if resp:
        emit(args, resp, "UpdateKeyDescription")
    else:
        _err(f"update key description: done ({args.key})")


def _rotation_on(args: argparse.Namespace, svc: KeyService) -> None:
    svc.enable_key_rotation(key_id=args.key, rotation_period_in_days=args.period)
    emit(args, svc.get_key_rotation_status(key_id=args.key), "GetKeyRotationStatus")


def _rotation_list(args: argparse.Namespace, svc: KeyService) -> None:
    include = "ALL_KEY_MATERIAL" if args.all_material else None
    rot = _all_pages(
        lambda m: svc.list_key_rotations(key_id=args.key, include_key_material=include, marker=m),
        "Rotations",
    )
    emit(args, {"Rotations": rot}, "ListKeyRotations")


def _schedule(args: argparse.Namespace, svc: KeyService) -> None:
    resp = svc.schedule_key_deletion(key_id=args.key, pending_window_in_days=args.days)
    emit(args, resp, "ScheduleKeyDeletion")


def _alias_create(args: argparse.Namespace, svc: KeyService) -> None:
    svc.create_alias(alias_name=args.name, target_key_id=args.key)
    emit(args, {"AliasName": args.name, "TargetKeyId": args.key}, "CreateAlias")


def _alias_update(args: argparse.Namespace, svc: KeyService) -> None:
    svc.update_alias(alias_name=args.name, target_key_id=args.key)
    emit(args, {"AliasName": args.name, "TargetKeyId": args.key}, "UpdateAlias")


def _alias_delete(args: argparse.Namespace, svc: KeyService) -> None:
    svc.delete_alias(alias_name=args.name)
    emit(args, {"AliasName": args.name, "Deleted": True}, "DeleteAlias")


def _alias_list(args: argparse.Namespace, svc: KeyService) -> None:
    aliases = _all_pages(lambda m: svc.list_aliases(key_id=args.key, marker=m), "Aliases")
    emit(args, {"Aliases": aliases}, "ListAliases")


def _tag(args: argparse.Namespace, svc: KeyService) -> None:
    svc.tag_resource(key_id=args.key, tags=_pairs(args.tags))
    _tags(args, svc)


def _untag(args: argparse.Namespace, svc: KeyService) -> None:
    svc.untag_resource(key_id=args.key, tag_keys=args.tag_keys)
    _tags(args, svc)


def _tags(args: argparse.Namespace, svc: KeyService) -> None:
    tags = _all_pages(lambda m: svc.list_resource_tags(key_id=args.key, marker=m), "Tags")
    emit(args, {"Tags": tags}, "ListResourceTags")


def _import_params(args: argparse.Namespace, svc: KeyService) -> None:
    resp = svc.get_parameters_for_import(
        key_id=args.key,
        wrapping_algorithm=args.wrapping_algorithm,
        wrapping_key_spec=args.wrapping_key_spec,
    )
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "WrappingPublicKey.der").write_bytes(resp["PublicKey"])
    (out / "ImportToken.bin").write_bytes(resp["ImportToken"])
    emit(
        args,
        {
            "KeyId": resp["KeyId"],
            "ParametersValidTo": resp["ParametersValidTo"],
            "PublicKeyFile": str(out / "WrappingPublicKey.der"),
            "ImportTokenFile": str(out / "ImportToken.bin"),
        },
        "GetParametersForImport",
    )


def _valid_to(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:  # it said only "Invalid isoformat string", naming no option
        raise ConfigurationError(
            f"--valid-to {text!r} is not an ISO 8601 date and time (2027-01-31T00:00:00Z)"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _expiry(text: str | None) -> dict[str, Any]:
    """ValidTo and the ExpirationModel it implies: `--valid-to` makes the material expire, and
    without it the material never does (AWS's own default, KEY_MATERIAL_EXPIRES, would then
    refuse the import for want of a date)."""
    valid_to = _valid_to(text)
    if valid_to is None:
        return {"expiration_model": "KEY_MATERIAL_DOES_NOT_EXPIRE"}
    return {"expiration_model": "KEY_MATERIAL_EXPIRES", "valid_to": valid_to}


def _material_options(args: argparse.Namespace) -> dict[str, Any]:
    """ImportType, KeyMaterialId and KeyMaterialDescription from the command line, and the
    expiry (`_expiry`)."""
    out = _expiry(args.valid_to)
    if args.new:
        out["import_type"] = "NEW_KEY_MATERIAL"
    if args.material_id is not None:
        out["import_type"] = "EXISTING_KEY_MATERIAL"
        out["key_material_id"] = args.material_id
    if args.material_description is not None:
        out["key_material_description"] = args.material_description
    return out


def _import_material(args: argparse.Namespace, svc: KeyService) -> None:
    done = svc.import_key_material(
        key_id=args.key,
        import_token=Path(args.token).read_bytes(),
        encrypted_key_material=Path(args.encrypted_material).read_bytes(),
        **_material_options(args),
    )
    emit(args, done, "ImportKeyMaterial")


def _delete_material(args: argparse.Namespace, svc: KeyService) -> None:
    resp = svc.delete_imported_key_material(key_id=args.key, key_material_id=args.material_id)
    emit(args, resp, "DeleteImportedKeyMaterial")


def _import_local(args: argparse.Namespace, svc: KeyService) -> None:
    """Both steps at once, wrapping a local material file with the service's public key.

    Symmetric and HMAC material is wrapped with RSAES_OAEP_SHA_256. A private key (PKCS#8
    DER, or PEM, which is turned into the DER AWS asks for) is too long for one OAEP block,
    so it is wrapped with RSA_AES_KEY_WRAP_SHA_256, as AWS requires for RSA and P-521 keys."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa
    from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding

    material = _local_material(Path(args.material).read_bytes(), args.material)
    asymmetric = _is_private_key(material)
    if not asymmetric and len(material) > _OAEP_2048_SHA256_MAX:
        raise ConfigurationError(
            f"{args.material}: {len(material)} bytes is neither key material of a symmetric "
            "or HMAC key nor a private key (PKCS#8 DER or PEM)"
        )
    algorithm = "RSA_AES_KEY_WRAP_SHA_256" if asymmetric else "RSAES_OAEP_SHA_256"
    params = svc.get_parameters_for_import(
        key_id=args.key, wrapping_algorithm=algorithm, wrapping_key_spec="RSA_2048"
    )
    public = serialization.load_der_public_key(params["PublicKey"])
    assert isinstance(public, rsa.RSAPublicKey)
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    if asymmetric:
        aes_key = secrets.token_bytes(32)
        wrapped = public.encrypt(aes_key, oaep) + aes_key_wrap_with_padding(aes_key, material)
    else:
        wrapped = public.encrypt(material, oaep)
    done = svc.import_key_material(
        key_id=args.key,
        import_token=params["ImportToken"],
        encrypted_key_material=wrapped,
        **_material_options(args),
    )
    emit(args, done, "ImportKeyMaterial")


#: The longest plaintext one RSAES_OAEP_SHA_256 block of a 2048-bit key holds (RFC 8017).
_OAEP_2048_SHA256_MAX = 2048 // 8 - 2 * 32 - 2


def _local_material(data: bytes, name: str) -> bytes:
    """The material as AWS takes it: a PEM private key becomes unencrypted PKCS#8 DER."""
    if not data.lstrip().startswith(b"-----BEGIN"):
        return data
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(
            f"{name}: PEM material must be an unencrypted private key ({exc})"
        ) from None
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _is_private_key(material: bytes) -> bool:
    from cryptography.hazmat.primitives import serialization

    try:
        serialization.load_der_private_key(material, password=None)
    except (ValueError, TypeError):
        return False
    return True


def _material_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--valid-to", default=None, metavar="ISO-8601")
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--new",
        action="store_true",
        help="new material for a key that has some, to rotate to (ImportType NEW_KEY_MATERIAL)",
    )
    which.add_argument(
        "--material-id",
        default=None,
        metavar="ID",
        help="the material being imported again (KeyMaterialId, checked)",
    )
    p.add_argument("--material-description", default=None, metavar="TEXT")


def _replicate(args: argparse.Namespace, svc: KeyService) -> None:
    resp = svc.replicate_key(
        key_id=args.key, replica_region=args.replica_region, description=args.description
    )
    emit(args, resp, "ReplicateKey")


def _update_primary(args: argparse.Namespace, svc: KeyService) -> None:
    svc.update_primary_region(key_id=args.key, primary_region=args.primary_region)
    emit(args, svc.describe_key(key_id=args.key), "DescribeKey")


# -- parser -----------------------------------------------------------------------------------


def _cmd(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    name: str,
    help: str,
    fn: Handler,
    *,
    key: bool = True,
    takes_alias: bool = False,
) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(name, help=help, description=help)
    add_store_arguments(p)
    if key:
        p.add_argument(
            "key",
            metavar="KEY",
            help="key id, key ARN or alias name"
            + ("" if takes_alias else " (an alias is looked up with DescribeKey first)"),
        )
    p.set_defaults(handler=_run(fn, takes_alias=takes_alias))
    return p


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``keys`` command tree to the main parser's subcommands."""
    keys = subparsers.add_parser(
        "keys", help="manage keys of the embedded KMS", description=__doc__.split("\n\n")[0]
    )
    add_store_arguments(keys)
    sub = keys.add_subparsers(dest="keys_command", metavar="COMMAND", required=True)

    p = _cmd(sub, "create", "create a key (CreateKey)", _create, key=False)
    p.set_defaults(creates_store=True)
    p.add_argument("--description", default="")
    p.add_argument(
        "--key-spec",
        default="SYMMETRIC_DEFAULT",
        help="SYMMETRIC_DEFAULT, RSA_2048, ECC_NIST_P256, ECC_NIST_EDWARDS25519, ML_DSA_65, "
        "ML_KEM_768, HMAC_256, ...",
    )
    p.add_argument("--key-usage", default=None, help="default: from the key spec")
    p.add_argument(
        "--origin",
        default=None,
        choices=["AWS_KMS", "EXTERNAL", "AWS_CLOUDHSM", "EXTERNAL_KEY_STORE"],
        help="default AWS_KMS; with --custom-key-store, AWS_CLOUDHSM (EXTERNAL_KEY_STORE with "
        "--xks-key-id)",
    )
    p.add_argument(
        "--custom-key-store",
        metavar="ID",
        default=None,
        help="make the key in this custom key store (envelope keystores)",
    )
    p.add_argument(
        "--xks-key-id",
        metavar="ID",
        default=None,
        help="the external key backing the key (an EXTERNAL_KEY_STORE)",
    )
    p.add_argument("--multi-region", action="store_true")
    p.add_argument("--tag", action="append", metavar="KEY=VALUE")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--policy",
        "--document",  # (the spelling of `keys policy put` and `iam put-policy`)
        dest="document",
        metavar="JSON",
        help="the key policy (default: the "
        "default key policy, which delegates the key to the account's IAM policies)",
    )
    g.add_argument(
        "--policy-file", "--file", dest="file", metavar="PATH", help="the key policy from PATH"
    )
    p.add_argument(
        "--bypass-policy-lockout-safety-check",
        action="store_true",
        help="accept a policy that would stop you from changing it again",
    )

    p = _cmd(sub, "list", "list keys (ListKeys)", _list, key=False)
    p.add_argument(
        "--brief",
        action="store_true",
        help="ListKeys and ListAliases only: no DescribeKey per key (no state, spec, usage or "
        "description; one audit record per page instead of one per key)",
    )
    _cmd(sub, "describe", "show a key (DescribeKey)", _describe, takes_alias=True)
    _cmd(sub, "enable", "enable a key (EnableKey)", _simple("enable_key"))
    _cmd(sub, "disable", "disable a key (DisableKey)", _simple("disable_key"))
    p = _cmd(sub, "update-description", "UpdateKeyDescription", _update_description)
    p.add_argument("description")
    _cmd(sub, "rotate", "rotate a key now (RotateKeyOnDemand)", _simple("rotate_key_on_demand"))

    rot = sub.add_parser("rotation", help="automatic rotation: on, off, status, list")
    rsub = rot.add_subparsers(dest="rotation_command", metavar="COMMAND", required=True)
    p = _cmd(rsub, "on", "EnableKeyRotation", _rotation_on)
    p.add_argument("--period", type=int, default=None, metavar="DAYS", help="90..2560 (365)")
    _cmd(rsub, "off", "DisableKeyRotation", _simple("disable_key_rotation"))
    _cmd(rsub, "status", "GetKeyRotationStatus", _simple("get_key_rotation_status"))
    p = _cmd(rsub, "list", "ListKeyRotations", _rotation_list)
    p.add_argument(
        "--all-material",
        action="store_true",
        help="also the first key material and any pending rotation (IncludeKeyMaterial)",
    )

    p = _cmd(sub, "schedule-deletion", "ScheduleKeyDeletion", _schedule)
    p.add_argument("--days", type=int, default=None, help="waiting period, 7..30 (30)")
    _cmd(
        sub,
        "cancel-deletion",
        "CancelKeyDeletion (the key becomes Disabled)",
        _simple("cancel_key_deletion"),
    )

    al = sub.add_parser("alias", help="aliases: create, update, delete, list")
    asub = al.add_subparsers(dest="alias_command", metavar="COMMAND", required=True)
    p = _cmd(asub, "create", "CreateAlias", _alias_create, key=False)
    p.add_argument("name", metavar="alias/NAME")
    p.add_argument("key", metavar="KEY")
    p = _cmd(asub, "update", "UpdateAlias", _alias_update, key=False)
    p.add_argument("name", metavar="alias/NAME")
    p.add_argument("key", metavar="KEY")
    p = _cmd(asub, "delete", "DeleteAlias", _alias_delete, key=False)
    p.add_argument("name", metavar="alias/NAME")
    p = _cmd(asub, "list", "ListAliases", _alias_list, key=False)
    p.add_argument("--key", default=None, help="only the aliases of this key")

    p = _cmd(sub, "tag", "TagResource", _tag)
    p.add_argument("tags", nargs="+", metavar="KEY=VALUE")
    p = _cmd(sub, "untag", "UntagResource", _untag)
    p.add_argument("tag_keys", nargs="+", metavar="TAG_KEY")
    _cmd(sub, "tags", "ListResourceTags", _tags)

    imp = sub.add_parser("import", help="imported key material (Origin EXTERNAL keys)")
    isub = imp.add_subparsers(dest="import_command", metavar="COMMAND", required=True)
    p = _cmd(
        isub, "params", "GetParametersForImport: write the wrapping key and token", _import_params
    )
    p.add_argument("--wrapping-algorithm", default="RSAES_OAEP_SHA_256")
    p.add_argument("--wrapping-key-spec", default="RSA_2048")
    p.add_argument("--out-dir", default=os.curdir)
    p = _cmd(isub, "material", "ImportKeyMaterial from a wrapped material file", _import_material)
    p.add_argument("--token", required=True, metavar="FILE")
    p.add_argument("--encrypted-material", required=True, metavar="FILE")
    _material_arguments(p)
    p = _cmd(isub, "local", "wrap a plaintext material file here and import it", _import_local)
    p.add_argument("material", metavar="MATERIAL_FILE")
    _material_arguments(p)
    p = _cmd(isub, "delete", "DeleteImportedKeyMaterial", _delete_material)
    p.add_argument(
        "--material-id", default=None, metavar="ID", help="which material (default: the current)"
    )

    from .policy import add_key_policy_commands  # imported here: policy imports this module

    add_key_policy_commands(sub)

    p = _cmd(sub, "replicate", "ReplicateKey (multi-Region keys)", _replicate)
    p.add_argument("replica_region", metavar="REGION")
    p.add_argument("--description", default=None)
    p = _cmd(sub, "update-primary", "UpdatePrimaryRegion", _update_primary)
    p.add_argument("primary_region", metavar="REGION")
