"""`envelope demo`: the main job end to end on a generated sample lake, nothing to set up.

It opens an embedded KMS in a fresh home (temporary unless --home), creates a key and the
alias alias/demo, generates a small lake of Parquet and CSV files, encrypts it with the
bucket-key cache, verifies every object, reads one column of an encrypted Parquet object
without decrypting the file first (ranged reads through the seekable reader), shows that a
damaged object is named by verify, decrypts the lake back and compares it byte for byte,
checks the KMS audit log, and prints throughput and the KMS calls the cache saved.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from .. import sync
from ..api import Options
from ..errors import ConfigurationError
from ..keycache import CachePolicy
from ..keyring import Keyring
from ..kms.uri import open_local_backend
from ..printable import printable
from ._common import positive_int
from ._output import add_output_arguments, emit, output_requested


def add_demo_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="run the main job end to end on a generated sample lake")
    p.add_argument(
        "--size-mib", type=positive_int, default=64, help="sample lake size (default 64 MiB)"
    )
    p.add_argument("--keep", metavar="DIR", help="work in DIR and keep the files")
    p.add_argument(
        "--home", metavar="DIR", help="embedded KMS home to use (default: a fresh one in DIR)"
    )
    add_output_arguments(p)  # the results as data with --json/--output/--query
    p.set_defaults(handler=cmd_demo, settings=("output",))


def make_sample_lake(root: Path, size: int) -> dict[str, int]:
    """Parquet files (several row groups, many columns) and CSV files, about `size` bytes."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    def ints(n: int) -> pa.Array:
        return pa.Array.from_buffers(pa.int64(), n, [None, pa.py_buffer(os.urandom(8 * n))])

    made: dict[str, int] = {}
    rows = 20_000
    countries = pa.array(["DE", "FR", "US", "JP", "BR"])
    i = 0
    total = 0
    while total < size:
        day = f"date=2026-11-{1 + i % 28:02d}"
        raw = ints(rows)
        table = pa.table(
            {
                "id": pa.array(range(i * rows, (i + 1) * rows), pa.int64()),
                "amount": pc.divide(pc.cast(pc.bit_wise_and(raw, 0xFFFFF), pa.float64()), 100.0),
                "account": pc.bit_wise_and(ints(rows), (1 << 40) - 1),
                "country": pc.take(countries, pc.bit_wise_and(raw, 3)),
                **{f"m{k}": ints(rows) for k in range(8)},
            }
        )
        (root / day).mkdir(parents=True, exist_ok=True)
        pq_path = root / day / f"events-{i:03d}.parquet"
        pq.write_table(table, pq_path, row_group_size=5_000, compression="zstd")
        csv_path = root / day / f"summary-{i:03d}.csv"
        pacsv.write_csv(table.select(["id", "country", "amount"]).slice(0, 2_000), csv_path)
        for p in (pq_path, csv_path):
            made[str(p.relative_to(root))] = p.stat().st_size
            total += p.stat().st_size
        i += 1
    return made


def _same_tree(a: Path, b: Path) -> bool:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    return files_a == files_b and all((a / p).read_bytes() == (b / p).read_bytes() for p in files_a)


#: The folders the demo makes in its work folder (and removes before a run there again).
_DEMO_FOLDERS = ("lake", "encrypted", "restored", "tampered")
#: Left in a --keep folder: the demo made these folders, so a later run may replace them.
_MARKER = ".envelope-demo"


def _claim(work: Path) -> None:
    """Make `work` the demo's: its demo folders are removed only when an earlier run left its
    marker there. ``--keep .`` in a project with a ``lake/`` folder removed the user's files
    (review): refused instead, before anything is touched."""
    mine = (work / _MARKER).is_file()
    theirs = [d for d in _DEMO_FOLDERS if (work / d).exists() and not mine]
    if theirs:
        raise ConfigurationError(
            f"{printable(str(work))} already has {', '.join(theirs)}, not made by envelope "
            "demo: give --keep a new or empty folder (the demo replaces those folders)"
        )
    work.mkdir(parents=True, exist_ok=True)
    for d in _DEMO_FOLDERS:
        shutil.rmtree(work / d, ignore_errors=True)
    (work / _MARKER).write_text("made by envelope demo: its folders here are replaced\n")


def cmd_demo(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="envelope-demo-") as tmp:
        work = Path(args.keep or tmp)
        if args.keep:
            _claim(work)
        home = args.home or str(work / "kms-home")
        result = _run(work, home, args.size_mib << 20)
        result["work_dir"] = str(work) if args.keep else None
    if output_requested(args):
        emit(args, result, "Demo")
    else:
        print(f"sample lake     {result['objects']} objects, {result['bytes'] / 1e6:.1f} MB")
        print(
            f"encrypt         {result['encrypt_mb_per_s']} MB/s, "
            f"{result['encrypt_objects_per_s']} objects/s"
        )
        print(f"verify          {'all authentic' if result['verified'] else 'FAILED'}")
        column = "read from the encrypted object" if result["column_ok"] else "FAILED"
        print(
            f"parquet column  {column} ({result['column_bytes_read_pct']}% of the object fetched)"
        )
        print(f"tampering       {'named by verify' if result['tamper_detected'] else 'MISSED'}")
        print(
            f"decrypt         {result['decrypt_mb_per_s']} MB/s; "
            f"{'identical to the source' if result['round_trip_identical'] else 'DIFFERENT'}"
        )
        print(
            f"KMS calls       {result['kms_calls']} for {result['objects']} objects written "
            f"and read 4 times ({result['kms_calls_saved']} saved by the data-key cache)"
        )
        print(
            f"KMS audit log   {result['kms_audit_records']} records, "
            f"{'verified' if result['kms_audit_log_verified'] else 'BROKEN'}"
        )
    ok = all(
        result[k]
        for k in (
            "verified",
            "column_ok",
            "tamper_detected",
            "round_trip_identical",
            "kms_audit_log_verified",
        )
    )
    return 0 if ok else 1


def _run(work: Path, home: str, size: int) -> dict[str, Any]:
    from ..service.errors import AlreadyExistsException  # (here: `--help` loads no service)

    sample = make_sample_lake(work / "lake", size)
    backend = open_local_backend(home)
    service = backend.service
    key_id = service.create_key(description="envelope demo")["KeyMetadata"]["KeyId"]
    alias = "alias/demo"
    try:
        service.create_alias(alias_name=alias, target_key_id=key_id)
    except AlreadyExistsException:
        # an existing --home's own alias/demo is left as it is (it was re-pointed at the
        # demo's throwaway key, so whatever encrypted under it used that key; review)
        alias = f"alias/demo-{key_id[:8]}"
        service.create_alias(alias_name=alias, target_key_id=key_id)
    keyring = Keyring(backend, alias, cache=CachePolicy())
    try:
        return _steps(work, home, sample, keyring, service, key_id)
    finally:
        # seals the audit log, and (on failure) before the work folder is removed: a store
        # closed later would write its digests into a folder that is gone
        sync.run(keyring.aclose)


def _steps(
    work: Path, home: str, sample: dict[str, int], keyring: Keyring, service: Any, key_id: str
) -> dict[str, Any]:
    from ..lake import jobs  # (here: `--help` loads no pyarrow)
    from ..lake.parquet_objects import open_encrypted_parquet

    lake, enc, back = work / "lake", work / "encrypted", work / "restored"
    audit_start = len(service.audit_tail(1_000_000))
    # 64 KiB segments: Parquet readers fetch column chunks, so small segments mean fewer
    # bytes fetched per ranged read (the cost: 16 bytes of tag per 64 KiB).
    options = jobs.LakeOptions(engine=Options(segment_size=64 << 10, workers=2, depth=4))

    t0 = time.perf_counter()
    enc_report = sync.run(
        jobs.encrypt_prefix, str(lake), str(enc), keyring=keyring, options=options
    )
    t_enc = time.perf_counter() - t0
    verify_report = sync.run(jobs.verify_prefix, str(enc), keyring=keyring, options=options)

    column_rel = next(r for r in sorted(sample) if r.endswith(".parquet"))
    import pyarrow.parquet as pq

    expected = pq.read_table(lake / column_rel, columns=["amount"])
    pf = open_encrypted_parquet(
        str(enc / column_rel),
        keyring=keyring,
        expected_context={jobs.PATH_CONTEXT_KEY: column_rel},
    )
    try:
        column_ok = pf.read(columns=["amount"]).equals(expected)
        fetched = pf.range_file.bytes_read
    finally:
        pf.close()
    fetched_pct = round(100 * fetched / (enc / column_rel).stat().st_size, 1)

    shutil.copytree(enc, work / "tampered")
    victim = work / "tampered" / column_rel
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    tampered = sync.run(
        jobs.verify_prefix, str(work / "tampered"), keyring=keyring, options=options
    )
    tamper_detected = [f.path for f in tampered.failures] == [column_rel]

    t0 = time.perf_counter()
    dec_report = sync.run(
        jobs.decrypt_prefix, str(enc), str(back), keyring=keyring, options=options
    )
    t_dec = time.perf_counter() - t0
    same = dec_report.ok and _same_tree(lake, back)

    records = service.audit_tail(1_000_000)
    kms_calls = len(records) - audit_start
    sync.run(keyring.aclose)  # seals the audit log (closing again is a no-op)
    checker = open_local_backend(home).service
    audit_ok = checker.verify_audit_log().ok
    checker.close()
    total = sum(sample.values())
    objects = len(sample)
    return {
        "objects": objects,
        "bytes": total,
        "encrypt_mb_per_s": round(total / t_enc / 1e6, 1),
        "encrypt_objects_per_s": round(objects / t_enc, 1),
        "decrypt_mb_per_s": round(total / t_dec / 1e6, 1),
        "encrypted_ok": enc_report.ok,
        "verified": verify_report.ok and verify_report.done == objects,
        "column_ok": column_ok,
        "column_bytes_read_pct": fetched_pct,
        "tamper_detected": tamper_detected,
        "round_trip_identical": same,
        "kms_key": key_id,
        "kms_calls": kms_calls,
        # without the cache: a GenerateDataKey per object written and a Decrypt per object
        # read (verify twice, the column read, decrypt)
        "kms_calls_saved": max(0, 4 * objects + 1 - kms_calls),
        "kms_audit_records": len(records),
        "kms_audit_log_verified": audit_ok,
    }
