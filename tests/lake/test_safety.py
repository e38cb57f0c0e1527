"""What a lake job may touch: links in the source, overlapping prefixes, unsafe object keys.

Each test here failed on the code before these rules: links were followed out of the tree and
into loops, dangling ones dropped without a word, a destination inside its source accepted,
and keys with ``..``, ``.`` or empty segments never checked by the job itself.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pytest

from envelope import api, sync
from envelope.errors import ConfigurationError
from envelope.keycache import CachePolicy
from envelope.keyring import Keyring
from envelope.kms.filekey import generate_key_file
from envelope.kms.memory import MemoryKms
from envelope.lake import jobs

from .conftest import S3, read_tree

pytestmark = pytest.mark.anyio

ENGINE = api.Options(segment_size=64 << 10, workers=2, depth=3)
SECRET = b"outside secret: must never be encrypted by a job over src/\n"


def opts(**kw: object) -> jobs.LakeOptions:
    return jobs.LakeOptions(engine=ENGINE, **kw)  # type: ignore[arg-type]


@pytest.fixture
def k1() -> Keyring:
    kms = MemoryKms()
    return Keyring(kms, kms.create_key("k1"), cache=CachePolicy())


def linked_tree(tmp_path: Path) -> Path:
    """src/ with real files and every kind of link; outside/ beside it."""
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "secret.txt").write_bytes(SECRET)
    (outside / "dir" / "also-secret.txt").write_bytes(SECRET)
    src = tmp_path / "src"
    (src / "real" / "deep").mkdir(parents=True)
    (src / "top.txt").write_bytes(b"top")
    (src / "real" / "a.txt").write_bytes(b"a" * 1000)
    (src / "real" / "deep" / "b.txt").write_bytes(b"b" * 70_000)
    os.symlink("../outside/secret.txt", src / "to-secret")  # a file outside the root
    os.symlink(outside / "dir", src / "to-outside-dir")  # a folder outside (absolute)
    os.symlink("nowhere/missing.txt", src / "dangling")  # a dangling link
    os.symlink("self-loop", src / "self-loop")  # a link to itself
    os.symlink("..", src / "real" / "up")  # a folder link back to a parent: a loop
    os.symlink("real/a.txt", src / "inside-file")  # a file inside the root
    os.symlink("real/deep", src / "inside-dir")  # a folder inside the root
    return src


def skipped(report: jobs.JobReport) -> dict[str, str]:
    return {s.path: s.reason for s in report.skipped_paths}


async def decrypted(tmp_path: Path, enc: Path, k1: Keyring) -> dict[str, bytes]:
    back = tmp_path / "back"
    r = await jobs.decrypt_prefix(str(enc), str(back), keyring=k1, options=opts())
    assert r.ok, r.failures
    return read_tree(back)


# -- finding 6: links -------------------------------------------------------------------------


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_links_are_skipped_and_reported_by_default(
    anyio_backend: str, tmp_path: Path, k1: Keyring
) -> None:
    src = linked_tree(tmp_path)
    enc = tmp_path / "enc"
    r = await jobs.encrypt_prefix(str(src), str(enc), keyring=k1, options=opts())
    assert r.ok and r.done == 3, r.failures
    assert set(read_tree(enc)) == {"top.txt", "real/a.txt", "real/deep/b.txt"}
    links = ["to-secret", "to-outside-dir", "dangling", "self-loop", "real/up"]
    links += ["inside-file", "inside-dir"]
    assert set(skipped(r)) == set(links)
    assert all("symbolic link" in why for why in skipped(r).values())
    # in the JSON report too, with path and reason
    d = json.loads(json.dumps(r.to_dict()))
    assert {s["path"] for s in d["skipped_paths"]} == set(links)
    assert all(s["reason"] for s in d["skipped_paths"])


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_follow_symlinks_never_leaves_the_root(
    anyio_backend: str, tmp_path: Path, k1: Keyring
) -> None:
    src = linked_tree(tmp_path)
    enc = tmp_path / "enc"
    r = await jobs.encrypt_prefix(
        str(src), str(enc), keyring=k1, options=opts(follow_symlinks=True)
    )
    assert r.ok, r.failures
    # links inside the root are followed, under their own (link) path
    assert set(read_tree(enc)) == {
        "top.txt",
        "real/a.txt",
        "real/deep/b.txt",
        "inside-file",
        "inside-dir/b.txt",
    }
    why = skipped(r)
    assert set(why) == {"to-secret", "to-outside-dir", "dangling", "self-loop", "real/up"}
    assert "outside the source root" in why["to-secret"]
    assert "outside the source root" in why["to-outside-dir"]
    assert "dangling" in why["dangling"]
    assert "loop" in why["self-loop"] and "loop" in why["real/up"]
    back = await decrypted(tmp_path, enc, k1)
    assert SECRET not in back.values()
    assert back["inside-file"] == b"a" * 1000


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_follow_symlinks_takes_large_files_too(
    anyio_backend: str, tmp_path: Path, k1: Keyring
) -> None:
    """Objects past small_object_bytes go file to file, which opened every source without
    following links: a link to a file over 8 MiB failed with "became a symbolic link after
    it was listed" under --follow-symlinks, encrypt and decrypt alike (review)."""
    src = linked_tree(tmp_path)
    o = opts(follow_symlinks=True, small_object_bytes=0)  # every object file to file
    enc, back = tmp_path / "enc", tmp_path / "back"
    r = await jobs.encrypt_prefix(str(src), str(enc), keyring=k1, options=o)
    assert r.ok, r.failures
    assert {"inside-file", "inside-dir/b.txt"} <= set(read_tree(enc))
    # a lake of links to the encrypted objects (each under the path its object is bound to)
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "inside-file").symlink_to(enc / "inside-file")
    o = opts(follow_symlinks=True, allow_outside=True, small_object_bytes=0)
    r = await jobs.decrypt_prefix(str(linked), str(back), keyring=k1, options=o)
    assert r.ok, r.failures
    assert (back / "inside-file").read_bytes() == b"a" * 1000


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_allow_outside_follows_links_out_of_the_root(
    anyio_backend: str, tmp_path: Path, k1: Keyring
) -> None:
    src = linked_tree(tmp_path)
    enc = tmp_path / "enc"
    r = await jobs.encrypt_prefix(
        str(src), str(enc), keyring=k1, options=opts(follow_symlinks=True, allow_outside=True)
    )
    assert r.ok, r.failures
    back = await decrypted(tmp_path, enc, k1)
    assert back["to-secret"] == SECRET and back["to-outside-dir/also-secret.txt"] == SECRET
    # dangling and looping links are still reported, never dropped silently
    assert set(skipped(r)) == {"dangling", "self-loop", "real/up"}


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_followed_link_never_leads_the_job_into_its_own_destination(
    anyio_backend: str, tmp_path: Path, k1: Keyring
) -> None:
    """With --follow-symlinks --allow-outside, a link in the source to the destination (or to
    a folder above it) must not make the job read its own outputs: each re-run would
    encrypt the ciphertext again, one level deeper."""
    src, dst = tmp_path / "s", tmp_path / "d"
    src.mkdir()
    dst.mkdir()
    (src / "a.txt").write_bytes(b"a")
    os.symlink("../d", src / "out")  # the destination itself
    os.symlink("..", src / "up")  # a folder that holds the destination
    o = opts(follow_symlinks=True, allow_outside=True)
    for _ in range(2):
        r = await jobs.encrypt_prefix(str(src), str(dst), keyring=k1, options=o)
        assert r.ok, r.failures
        assert skipped(r)["out"].startswith("symbolic link leads into the destination")
        assert not any(rel.startswith(("out/", "up/d/")) for rel in read_tree(dst)), sorted(
            read_tree(dst)
        )


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_special_files_are_reported_not_read(
    anyio_backend: str, tmp_path: Path, k1: Keyring
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_bytes(b"f")
    os.mkfifo(src / "pipe")  # opening it for reading would block the job forever
    r = await jobs.encrypt_prefix(str(src), str(tmp_path / "enc"), keyring=k1, options=opts())
    assert r.ok and r.done == 1
    assert skipped(r) == {"pipe": "a FIFO"}


def test_a_local_name_that_is_not_utf8_is_refused_and_reported_as_json(tmp_path: Path) -> None:
    """A file named with bytes that are not UTF-8 reaches Python with surrogates; no pyarrow
    filesystem can address it. The job refuses that one object with a typed reason, does the
    others, and its JSON report stays valid UTF-8 (it was a UnicodeEncodeError from pyarrow,
    and the report then carried the raw bytes)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok.bin").write_bytes(b"ok")
    with open(os.path.join(os.fsencode(src), b"\xff\xfeodd.bin"), "wb") as f:
        f.write(b"odd")
    generate_key_file(tmp_path / "k.key")
    r = subprocess.run(
        [sys.executable, "-m", "envelope.cli.main", "lake", "encrypt", str(src),
         str(tmp_path / "enc"), "--key-file", str(tmp_path / "k.key"), "--json"],
        capture_output=True,
        env={**os.environ, "ENVELOPE_HOME": str(tmp_path / "home")},
        timeout=120,
    )  # fmt: skip
    assert r.returncode == 1, r.stderr
    out = json.loads(r.stdout.decode("utf-8"))  # strict: valid UTF-8
    assert out["done"] == 1
    (failure,) = out["failures"]
    assert failure["error_type"] == "UnsafePathError" and "not valid UTF-8" in failure["error"]
    assert os.fsencode(failure["path"]) == b"\xff\xfeodd.bin"
    assert set(read_tree(tmp_path / "enc")) == {"ok.bin"}
    # a source or destination root so named: a usage error before anything is read or written
    odd_root = os.path.join(os.fsencode(tmp_path), b"r\xff")
    os.mkdir(odd_root)
    for source, dest in ((odd_root, os.fsencode(tmp_path / "enc2")), (os.fsencode(src), odd_root)):
        r = subprocess.run(
            [sys.executable, "-m", "envelope.cli.main", "lake", "encrypt", source, dest,
             "--key-file", str(tmp_path / "k.key")],
            capture_output=True,
            env={**os.environ, "ENVELOPE_HOME": str(tmp_path / "home")},
            timeout=120,
        )  # fmt: skip
        assert r.returncode == 2 and b"is not valid UTF-8" in r.stderr, r.stderr
    assert os.listdir(odd_root) == [] and not (tmp_path / "enc2").exists()


def envelope_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ENVELOPE_HOME": str(tmp_path / "home")}
    return subprocess.run(
        [sys.executable, "-m", "envelope.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_cli_reports_skipped_links_in_summary_report_and_folder_mode(tmp_path: Path) -> None:
    src = linked_tree(tmp_path)
    report = tmp_path / "report.json"
    r = envelope_cli(tmp_path, "lake", "encrypt", str(src), str(tmp_path / "enc"),
                     "--report", str(report))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "SKIPPED to-secret: symbolic link" in r.stdout
    assert "7 paths skipped" in r.stdout
    saved = json.loads(report.read_text())
    assert len(saved["skipped_paths"]) == 7 and saved["done"] == 3

    r = envelope_cli(tmp_path, "lake", "encrypt", str(src), str(tmp_path / "enc2"),
                     "--follow-symlinks", "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["done"] == 5
    assert {s["path"] for s in out["skipped_paths"]} == {
        "to-secret",
        "to-outside-dir",
        "dangling",
        "self-loop",
        "real/up",
    }

    # `envelope encrypt FOLDER OUT` goes through the same job and the same rule
    r = envelope_cli(tmp_path, "encrypt", str(src), str(tmp_path / "enc3"), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["done"] == 3 and len(out["skipped_paths"]) == 7
    assert set(read_tree(tmp_path / "enc3")) == {"top.txt", "real/a.txt", "real/deep/b.txt"}
    r = envelope_cli(tmp_path, "encrypt", str(src), str(tmp_path / "enc4"))
    # (it prints nothing unless asked; what it left alone is named on stderr)
    assert r.returncode == 0 and "SKIPPED dangling: symbolic link" in r.stderr, r.stderr
    assert r.stdout == ""


# -- finding 7: destination and source apart --------------------------------------------------


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_overlapping_local_prefixes_are_refused_before_writing(
    anyio_backend: str, tmp_path: Path, k1: Keyring
) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"a")
    (src / "sub" / "b.txt").write_bytes(b"b")
    os.symlink(src / "sub", tmp_path / "alias")  # the same folder under another name
    before = read_tree(tmp_path)
    cases = [
        (str(src), str(src), "is the source itself"),
        (str(src), str(src) + "/", "is the source itself"),
        (str(src), str(tmp_path / "src" / ".." / "src"), "is the source itself"),
        (str(src), str(src / "enc"), "inside the source"),
        (str(src), str(tmp_path / "alias" / "enc"), "inside the source"),
        (str(src / "sub"), str(src), "source .* is inside the destination"),
    ]
    for source, dest, why in cases:
        for job in (jobs.encrypt_prefix, jobs.decrypt_prefix):
            with pytest.raises(ConfigurationError, match=why):
                await job(source, dest, keyring=k1, options=opts())
            with pytest.raises(ConfigurationError, match=why):  # even a dry run
                await job(source, dest, keyring=k1, options=opts(dry_run=True))
    assert read_tree(tmp_path) == before  # nothing written anywhere
    assert not (src / "enc").exists() and not (src / ".envelope-lock").exists()
    # siblings with a common name prefix are not nested
    r = await jobs.encrypt_prefix(str(src), str(tmp_path / "src-enc"), keyring=k1, options=opts())
    assert r.ok and r.done == 2


def test_cli_refuses_a_destination_inside_the_source(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"a")
    r = envelope_cli(tmp_path, "lake", "encrypt", str(src), str(src / "enc"))
    assert r.returncode == 2 and "inside the source" in r.stderr, r.stderr
    r = envelope_cli(tmp_path, "encrypt", str(src), str(src / "enc"))
    assert r.returncode == 2 and "inside the source" in r.stderr, r.stderr
    assert sorted(p.name for p in src.iterdir()) == ["a.txt"]


def test_cli_refuses_a_destination_that_is_a_file(tmp_path: Path) -> None:
    """It failed as an I/O error (exit 5) while taking the lock; it is a usage error."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"a")
    target = tmp_path / "out.bin"
    target.write_bytes(b"keep me")
    r = envelope_cli(tmp_path, "lake", "encrypt", str(src), str(target))
    assert r.returncode == 2 and "is a file" in r.stderr, r.stderr
    assert target.read_bytes() == b"keep me"


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_overlapping_s3_prefixes_are_refused(
    anyio_backend: str, tmp_path: Path, s3: S3, k1: Keyring
) -> None:
    fs = s3.fs()
    with fs.open_output_stream("lake/raw/x.txt") as f:
        f.write(b"x")
    cases = [
        ("lake/raw", "lake/raw/", "is the source itself"),
        ("lake/raw", "lake/raw/enc", "inside the source"),
        ("lake/raw/", "lake//raw/enc/", "inside the source"),
        ("lake/raw", "lake", "source .* is inside the destination"),
    ]
    for source, dest, why in cases:
        with pytest.raises(ConfigurationError, match=why):
            await jobs.encrypt_prefix(s3.uri(source), s3.uri(dest), keyring=k1, options=opts())
    names = [i.path for i in fs.get_file_info(pafs.FileSelector("lake", recursive=True))]
    assert sorted(names) == ["lake/raw", "lake/raw/x.txt"]  # nothing written
    # a sibling prefix, and a local destination that shares the path text, are fine
    r = await jobs.encrypt_prefix(s3.uri("lake/raw"), s3.uri("lake/raw-enc"), keyring=k1)
    assert r.ok and r.done == 1
    r = await jobs.encrypt_prefix(s3.uri("lake/raw"), str(tmp_path / "lake/raw/enc"), keyring=k1)
    assert r.ok and r.done == 1


# -- finding 9: unsafe object keys -------------------------------------------------------------


BAD_KEYS = {
    "a//b": "empty path segment",
    "a/./c": "'.' path segment",
    "a/../d": "'..' path segment",
    "../../escape.txt": "'..' path segment",
    "e/": "ends with '/'",
    "/h": "absolute",
}


def all_keys(client: Any) -> set[str]:
    return {o["Key"] for o in client.list_objects_v2(Bucket="lake").get("Contents", [])}


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_unsafe_s3_keys_are_rejected_per_object(
    anyio_backend: str, tmp_path: Path, s3: S3, k1: Keyring
) -> None:
    client = s3.client()
    client.put_object(Bucket="lake", Key="src/ok.txt", Body=b"fine")
    client.put_object(Bucket="lake", Key="src/dir/", Body=b"")  # an empty folder marker
    for rel in BAD_KEYS:
        client.put_object(Bucket="lake", Key=f"src/{rel}", Body=b"payload of " + rel.encode())
    before = all_keys(client)

    # S3 to a local folder: the direction where a '..' would climb out of the destination
    out = tmp_path / "out" / "dst"
    r = await jobs.encrypt_prefix(s3.uri("lake/src"), str(out), keyring=k1, options=opts())
    assert r.done == 1 and r.failed == len(BAD_KEYS) and not r.ok
    failed = {f.path: (f.error_type, f.error) for f in r.failures}
    assert set(failed) == set(BAD_KEYS)
    for rel, why in BAD_KEYS.items():
        kind, message = failed[rel]
        assert kind == "UnsafePathError" and why in str(message), (rel, message)
    assert list(read_tree(tmp_path)) == ["out/dst/ok.txt"]

    # S3 to S3: nothing appears outside the destination prefix
    r = await jobs.encrypt_prefix(s3.uri("lake/src"), s3.uri("lake/enc"), keyring=k1)
    assert r.done == 1 and {f.path for f in r.failures} == set(BAD_KEYS)
    assert all_keys(client) - before == {"enc/ok.txt"}

    # decrypt and verify refuse them the same way
    client.put_object(Bucket="lake", Key="enc/x/../ok.txt", Body=b"junk")
    v = await jobs.verify_prefix(s3.uri("lake/enc"), keyring=k1)
    assert v.done == 1 and [f.path for f in v.failures] == ["x/../ok.txt"]
    d = await jobs.decrypt_prefix(s3.uri("lake/enc"), str(tmp_path / "back"), keyring=k1)
    assert d.done == 1 and [f.error_type for f in d.failures] == ["UnsafePathError"]
    assert read_tree(tmp_path / "back") == {"ok.txt": b"fine"}


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_given_entries_go_through_the_same_check(
    anyio_backend: str, tmp_path: Path, k1: Keyring
) -> None:
    """A caller-made listing (a Dask chunk) is checked too: '..' never reaches a path."""
    src = tmp_path / "a" / "src"
    src.mkdir(parents=True)
    (tmp_path / "a" / "victim.txt").write_bytes(b"outside")
    (src / "ok.txt").write_bytes(b"ok")
    entries = [jobs.Entry("ok.txt", 2, None), jobs.Entry("../victim.txt", 7, None)]
    r = await jobs.encrypt_prefix(
        str(src), str(tmp_path / "a" / "dst"), keyring=k1, options=opts(), entries=entries
    )
    assert r.done == 1 and [(f.path, f.error_type) for f in r.failures] == [
        ("../victim.txt", "UnsafePathError")
    ]
    assert not (tmp_path / "a" / "victim.txt.env").exists()
    assert sorted(read_tree(tmp_path / "a")) == ["dst/ok.txt", "src/ok.txt", "victim.txt"]
    assert (tmp_path / "a" / "victim.txt").read_bytes() == b"outside"


@pytest.mark.parametrize(
    ("rel", "ok"),
    [
        ("a", True),
        ("a/b.c/d..e/.hidden", True),
        ("...", True),
        ("", False),
        ("a//b", False),
        ("./a", False),
        ("a/.", False),
        ("a/../b", False),
        ("..", False),
        ("a/", False),
        ("/a", False),
        ("a\x00b", False),
        ("caf\u00e9/\u6587\u4ef6", True),
        ("a/\udcff\udcfe.bin", False),  # b"\xff\xfe.bin" as os.fsdecode gives it
    ],
)
def test_check_relative(rel: str, ok: bool) -> None:
    from envelope.errors import UnsafePathError
    from envelope.lake.paths import check_relative

    if ok:
        assert check_relative(rel) == rel
    else:
        with pytest.raises(UnsafePathError):
            check_relative(rel)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_file_swapped_for_a_link_after_listing_is_not_followed(
    anyio_backend: str, tmp_path: Path, k1: Keyring
) -> None:
    """The listing saw a file; a link to a secret or a FIFO stands there when it is read."""
    outside = tmp_path / "secret.txt"
    outside.write_bytes(SECRET)
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok.txt").write_bytes(b"ok")
    os.symlink(outside, src / "swapped.txt")
    os.mkfifo(src / "fifo.txt")
    entries = [
        jobs.Entry("fifo.txt", 10, None),
        jobs.Entry("ok.txt", 2, None),
        jobs.Entry("swapped.txt", len(SECRET), None),
    ]
    enc = tmp_path / "enc"
    r = await jobs.encrypt_prefix(str(src), str(enc), keyring=k1, options=opts(), entries=entries)
    assert r.done == 1
    assert {f.path: f.error for f in r.failures} == {
        "swapped.txt": f"{str(src / 'swapped.txt')!r} became a symbolic link after the "
        "listing; not followed",
        "fifo.txt": f"{str(src / 'fifo.txt')!r} is no longer a regular file",
    }
    assert list(read_tree(enc)) == ["ok.txt"]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_links_standing_in_the_destination_do_not_carry_writes_out(
    anyio_backend: str, tmp_path: Path, k1: Keyring
) -> None:
    """A link already in the destination (a file, or a folder on the way) would carry the
    output writer, which writes a link's target, outside the destination; and one inside it
    sent two objects to one file (``a.bin -> b.bin``: both written to b.bin, one lost, both
    counted done; review): no object is written through a link."""
    victim_dir = tmp_path / "elsewhere"
    victim_dir.mkdir()
    victim = victim_dir / "victim.txt"
    victim.write_bytes(b"do not overwrite")
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "x.bin").write_bytes(b"x" * 100)
    (src / "sub" / "y.bin").write_bytes(b"y" * 100)
    (src / "z.bin").write_bytes(b"z" * 100)
    dst = tmp_path / "dst"
    dst.mkdir()
    os.symlink(victim, dst / "x.bin")
    os.symlink(victim_dir, dst / "sub")
    os.symlink("z-real.bin", dst / "z.bin")  # a link that stays inside
    (src / "a.bin").write_bytes(b"a" * 100)
    (src / "b.bin").write_bytes(b"b" * 100)
    os.symlink("b.bin", dst / "a.bin")  # onto another object's output
    (src / "in").mkdir()
    (src / "in" / "b.bin").write_bytes(b"B" * 100)
    os.symlink(".", dst / "in")  # a folder link inside: in/b.bin would be b.bin
    r = await jobs.encrypt_prefix(str(src), str(dst), keyring=k1, options=opts())
    assert {f.path: f.error_type for f in r.failures} == {
        "x.bin": "UnsafePathError",
        "sub/y.bin": "UnsafePathError",
        "z.bin": "UnsafePathError",
        "a.bin": "UnsafePathError",
        "in/b.bin": "UnsafePathError",
    }
    assert r.done == 1 and not (dst / "z-real.bin").exists()
    assert sync.decrypt_bytes((dst / "b.bin").read_bytes(), keyring=k1) == b"b" * 100
    assert (dst / "a.bin").is_symlink() and (dst / "in").is_symlink()
    assert victim.read_bytes() == b"do not overwrite"
    assert sorted(p.name for p in victim_dir.iterdir()) == ["victim.txt"]
    # and decrypting into such a destination is refused the same way
    enc = tmp_path / "enc"
    assert (await jobs.encrypt_prefix(str(src), str(enc), keyring=k1, options=opts())).ok
    back = tmp_path / "back"
    back.mkdir()
    os.symlink(victim, back / "x.bin")
    d = await jobs.decrypt_prefix(str(enc), str(back), keyring=k1, options=opts())
    assert [(f.path, f.error_type) for f in d.failures] == [("x.bin", "UnsafePathError")]
    assert victim.read_bytes() == b"do not overwrite"


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("s3://AKIA1:Se%2Fcret@lake/p?region=us-east-1", "s3://AKIA1:***@lake/p?region=us-east-1"),
        (
            "s3://lake/p?secret_key=s3cr3t&session_token=t0k&scheme=http",
            "s3://lake/p?secret_key=***&session_token=***&scheme=http",
        ),
        ("s3://AKIA1:wJalr/K7MDENG+bPx@lake/p", "s3://AKIA1:***@lake/p"),  # "/" in a secret
        ("s3://lake/p?Secret_Key=s3cr3t", "s3://lake/p?Secret_Key=***"),
        (  # Azure's and GCS's credentials (any member named like a secret, token or key)
            "abfs://acct@c/x?tenant_id=t&client_id=c&client_secret=CS1&account_key=AK2"
            "&sas_token=ST3&access_token=AT4",
            "abfs://acct@c/x?tenant_id=t&client_id=c&client_secret=***&account_key=***"
            "&sas_token=***&access_token=***",
        ),
        (  # a SAS given as its own members: its signature
            "abfs://acct@c/x?sv=2022-11-02&se=2026-12-31&sig=S1G%2Babc",
            "abfs://acct@c/x?sv=2022-11-02&se=2026-12-31&sig=***",
        ),
        ("s3://lake/p", "s3://lake/p"),
        ("relative/dir", "relative/dir"),
    ],
)
def test_credentials_of_a_uri_never_reach_a_report_or_a_message(uri: str, shown: str) -> None:
    """lake.md suggests ``s3://KEY:SECRET@bucket``: reports (printed, --json, --report files)
    and error messages show the URI with its secrets masked."""
    from envelope.lake.fs import redact_uri, resolve

    assert redact_uri(uri) == shown
    assert jobs.JobReport("encrypt", "src", uri).destination == shown
    for bad in ("nosuchfs://AKIA1:TopSekrit@x/y", "s3://AKIA1:Top/Sekrit@lake/x?Secret_Key=z9z9"):
        with pytest.raises(ConfigurationError) as e:
            resolve(bad)
        message = str(e.value)
        assert "Sekrit" not in message and "z9z9" not in message and "AKIA1:***@" in message


def test_the_summary_prints_object_names_escaped(tmp_path: Path) -> None:
    """Object names are anyone's text (a shared bucket): the person-readable summary shows
    them escaped, as --output text does, so a name cannot retitle or clear the terminal or
    forge a FAILED line."""
    src = tmp_path / "src"
    src.mkdir()
    evil = "evil\x1b]0;PWNED\x07\x1b[2J\nFAILED forged"
    (src / evil).write_bytes(b"rows")
    key = tmp_path / "k.key"
    assert envelope_cli(tmp_path, "keygen", str(key)).returncode == 0
    r = envelope_cli(
        tmp_path, "lake", "encrypt", str(src), str(tmp_path / "dst"), "--key-file", str(key),
        "--dry-run", "--no-progress",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    shown = r.stdout + r.stderr
    assert "\x1b" not in shown and "\x07" not in shown
    assert not any(line.startswith("FAILED") for line in shown.splitlines())
    assert "PLANNED evil\\x1b]0;PWNED\\x07\\x1b[2J\\nFAILED forged" in shown


def test_a_store_that_cannot_be_reached_is_an_io_error_not_a_usage_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pyarrow looks a bucket's Region up when the URI names none; a store it cannot reach
    was a ConfigurationError (exit 2, "usage"), though nothing was wrong with the command
    (review). It is an OSError now (exit 5, as a disk that fails), credentials redacted; a
    URI pyarrow cannot take is still a ConfigurationError."""
    from types import SimpleNamespace

    from envelope.errors import ConfigurationError
    from envelope.lake import fs as fs_mod

    def unreachable(uri: str) -> object:
        raise OSError("When resolving region for bucket 'lake': Could not resolve host")

    def malformed(uri: str) -> object:
        raise ValueError("Expected a URI")

    monkeypatch.setattr(
        fs_mod, "pafs", SimpleNamespace(FileSystem=SimpleNamespace(from_uri=unreachable))
    )
    with pytest.raises(OSError, match="cannot reach") as e:
        fs_mod.resolve("s3://AKIDEXAMPLE:SECRETEXAMPLE@lake/enc/")
    assert not isinstance(e.value, ConfigurationError) and "SECRETEXAMPLE" not in str(e.value)
    monkeypatch.setattr(
        fs_mod, "pafs", SimpleNamespace(FileSystem=SimpleNamespace(from_uri=malformed))
    )
    with pytest.raises(ConfigurationError, match="cannot open"):
        fs_mod.resolve("s3://lake/enc/")


def test_one_s3_endpoint_spelled_two_ways_is_one_store() -> None:
    """`endpoint_override='127.0.0.1:9000'` with `scheme='http'` and `'http://localhost:9000'`
    name one store; the overlap check counted them as two and accepted a destination
    inside the source (review)."""
    import pyarrow.fs as pafs

    from envelope.errors import ConfigurationError
    from envelope.lake.paths import check_apart

    def s3(endpoint: str, **kw: object) -> pafs.S3FileSystem:
        return pafs.S3FileSystem(
            access_key="t", secret_key="t", region="us-east-1", endpoint_override=endpoint, **kw
        )

    a = s3("127.0.0.1:9000", scheme="http")
    for b in (
        s3("http://127.0.0.1:9000"),
        s3("http://localhost:9000/"),
        s3("LOCALHOST:9000"),
        s3("localhost.:9000", scheme="http"),
    ):
        with pytest.raises(ConfigurationError, match="inside the source"):
            check_apart(a, "b/raw", b, "b/raw/enc")
    with pytest.raises(ConfigurationError, match="inside the source"):  # the default port
        check_apart(
            s3("127.0.0.1", scheme="http"), "b/raw", s3("127.0.0.1:80", scheme="http"), "b/raw/x"
        )
    check_apart(a, "b/raw", s3("127.0.0.1:9001"), "b/raw/enc")  # another store: apart


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("small_object_bytes", [8 << 20, 0], ids=["whole", "streamed"])
async def test_a_fifo_at_an_output_path_is_refused_never_written_through(
    anyio_backend: str, tmp_path: Path, k1: Keyring, small_object_bytes: int
) -> None:
    """Anyone who may write to a destination could plant a named pipe at an object's output
    path and read its plaintext (a decrypt) from it; with no reader the job stalled for ever.
    A lake job writes regular files only: that object fails, the others are done (review)."""
    src, enc, back = tmp_path / "src", tmp_path / "enc", tmp_path / "back"
    src.mkdir()
    for name in ("a.txt", "b.txt"):
        (src / name).write_bytes(b"secret rows of " + name.encode() * 1000)
    o = opts(small_object_bytes=small_object_bytes)
    for out in (enc, back):
        out.mkdir()
        os.mkfifo(out / "a.txt")
    reader = os.open(enc / "a.txt", os.O_RDONLY | os.O_NONBLOCK)  # (a writer would not block)
    try:
        r = await jobs.encrypt_prefix(str(src), str(enc), keyring=k1, options=o)
        assert r.done == 1 and [(f.path, f.error_type) for f in r.failures] == [
            ("a.txt", "UnsafePathError")
        ]
        assert os.read(reader, 1 << 20) == b""  # nothing went through the pipe
    finally:
        os.close(reader)
    (enc / "a.txt").unlink()
    assert (await jobs.encrypt_prefix(str(src), str(enc), keyring=k1, options=o)).ok
    reader = os.open(back / "a.txt", os.O_RDONLY | os.O_NONBLOCK)
    try:
        d = await jobs.decrypt_prefix(str(enc), str(back), keyring=k1, options=o)
        assert d.done == 1 and [f.error_type for f in d.failures] == ["UnsafePathError"]
        assert os.read(reader, 1 << 20) == b""
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(os.lstat(back / "a.txt").st_mode)  # left as it was


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("small_object_bytes", [8 << 20, 0], ids=["whole", "file to file"])
async def test_a_source_written_to_while_it_is_encrypted_fails_and_is_redone(
    anyio_backend: str,
    tmp_path: Path,
    k1: Keyring,
    small_object_bytes: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A source changed while it was read gave an output of its old and new bytes mixed,
    newer than the source, so every later run skipped it (review). It fails now, nothing is
    written, and the next run encrypts the new bytes."""
    src, enc, back = tmp_path / "src", tmp_path / "enc", tmp_path / "back"
    src.mkdir()
    victim = src / "big.bin"
    victim.write_bytes(b"old!" * 50_000)
    (src / "other.bin").write_bytes(b"steady")
    ino = victim.stat().st_ino
    real_fstat = os.fstat
    seen: list[int] = []
    written: list[bool] = []

    def fstat(fd: int) -> os.stat_result:
        # the writer strikes just after the job looked at the open file the second time (the
        # first look checks that it is a regular file, the second records its state)
        st = real_fstat(fd)
        if st.st_ino == ino:
            seen.append(fd)
        if len(seen) == 2 and not written:
            written.append(True)
            with open(victim, "r+b") as f:
                f.write(b"NEW!")
            os.utime(victim, ns=(st.st_mtime_ns + 10**9, st.st_mtime_ns + 10**9))
        return st

    monkeypatch.setattr(os, "fstat", fstat)
    o = opts(small_object_bytes=small_object_bytes)
    r = await jobs.encrypt_prefix(str(src), str(enc), keyring=k1, options=o)
    monkeypatch.undo()
    assert written and r.done == 1
    assert [(f.path, f.error_type) for f in r.failures] == [("big.bin", "SourceChangedError")]
    assert "changed while" in r.failures[0].error
    assert sorted(p.name for p in enc.iterdir() if not p.name.startswith(".")) == ["other.bin"]
    r = await jobs.encrypt_prefix(str(src), str(enc), keyring=k1, options=o)
    assert r.ok and r.done == 1
    assert (await jobs.decrypt_prefix(str(enc), str(back), keyring=k1, options=o)).ok
    assert (back / "big.bin").read_bytes() == victim.read_bytes()
    assert victim.read_bytes().startswith(b"NEW!")


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_bench_lake_never_shows_the_uri_s_secret(
    anyio_backend: str, s3: S3, k1: Keyring
) -> None:
    """`envelope bench lake` printed the source URI whole, secret key included, where the
    lake jobs' reports print ``***`` (review)."""
    from envelope.bench import lake as bench_lake

    s3.client().put_object(Bucket="lake", Key="bench/a.bin", Body=b"x" * 1000)
    uri = s3.uri("lake/bench").replace("test:test@", "AKIAEXAMPLE:SuperSecret123@")
    with pytest.MonkeyPatch.context() as mp:  # (the server takes any key)
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        result = await bench_lake.estimate(
            uri, backend=k1.backend, key_id=k1.key_id, sample=1, to_nowhere=True
        )
    text = json.dumps(result)
    assert "SuperSecret123" not in text and "AKIAEXAMPLE:***@" in text


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("operation", ["encrypt", "decrypt"])
@pytest.mark.parametrize("small_object_bytes", [8 << 20, 0], ids=["whole", "file to file"])
@pytest.mark.parametrize("when", ["after the read", "after the check"])
async def test_a_source_replaced_after_it_was_read_is_never_kept_stale(
    anyio_backend: str,
    tmp_path: Path,
    k1: Keyring,
    operation: str,
    small_object_bytes: int,
    when: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A source replaced (renamed over, as `mv` does) after the job had read it, before its
    output was written: the output, made from the old bytes, was newer than the change, and
    every resumed run skipped it for good (review). Replaced before the check that precedes
    the commit, the object fails and nothing is written; replaced after it, the output (its
    modification time the source's change time as the job saw it) is redone by the next run.
    Either way the resumed job ends with the new bytes."""
    from envelope.lake import fs as lake_fs

    src, out, back = tmp_path / "src", tmp_path / "out", tmp_path / "back"
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "data.bin").write_bytes(b"old!" * 50_000)
    (plain / "other.bin").write_bytes(b"steady")
    o = opts(small_object_bytes=small_object_bytes)
    if operation == "encrypt":
        os.rename(plain, src)
        new_bytes = b"NEW!" * 50_000
        replacement = tmp_path / "replacement"
        replacement.write_bytes(new_bytes)
        run = jobs.encrypt_prefix
    else:
        assert (await jobs.encrypt_prefix(str(plain), str(src), keyring=k1, options=o)).ok
        newer = tmp_path / "newer"
        newer.mkdir()
        new_bytes = b"NEW!" * 50_000
        (newer / "data.bin").write_bytes(new_bytes)
        assert (
            await jobs.encrypt_prefix(str(newer), str(newer) + "-enc", keyring=k1, options=o)
        ).ok
        replacement = Path(str(newer) + "-enc") / "data.bin"
        run = jobs.decrypt_prefix
    victim = src / "data.bin"
    swapped: list[bool] = []

    def swap() -> None:
        if not swapped:
            swapped.append(True)
            os.replace(replacement, victim)

    real_check = lake_fs.SourceGuard.check

    def check(self: Any) -> None:
        ours = self._path == str(victim)
        if ours and when == "after the read":
            swap()
        real_check(self)
        if ours and when == "after the check":
            swap()

    monkeypatch.setattr(lake_fs.SourceGuard, "check", check)
    r = await run(str(src), str(out), keyring=k1, options=o)
    monkeypatch.undo()
    assert swapped
    if when == "after the read":
        assert [(f.path, f.error_type) for f in r.failures] == [("data.bin", "SourceChangedError")]
        assert not (out / "data.bin").exists()
    else:
        assert r.ok
    r = await run(str(src), str(out), keyring=k1, options=o)
    assert r.ok and r.done == 1 and r.skipped == 1, r
    if operation == "encrypt":
        assert (await jobs.decrypt_prefix(str(out), str(back), keyring=k1, options=o)).ok
        assert (back / "data.bin").read_bytes() == new_bytes
    else:
        assert (out / "data.bin").read_bytes() == new_bytes
    assert (await run(str(src), str(out), keyring=k1, options=o)).skipped == 2


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("small_object_bytes", [8 << 20, 0], ids=["whole", "file to file"])
async def test_a_local_output_is_stamped_with_its_source_s_change_time(
    anyio_backend: str, tmp_path: Path, k1: Keyring, small_object_bytes: int
) -> None:
    """What the resume compares: an output's modification time is its source's change time
    (the later of modification and status change), as the job saw it before reading."""
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(300_000))
    os.utime(src / "a.bin", ns=(0, 4 * 10**18))  # a modification time ahead of its status change
    o = opts(small_object_bytes=small_object_bytes)
    assert (await jobs.encrypt_prefix(str(src), str(out), keyring=k1, options=o)).ok
    st = (src / "a.bin").stat()
    assert (out / "a.bin").stat().st_mtime_ns == max(st.st_mtime_ns, st.st_ctime_ns) == 4 * 10**18


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("small_object_bytes", [8 << 20, 0], ids=["whole", "streamed"])
async def test_a_local_source_replaced_before_its_upload_completes_fails(
    anyio_backend: str,
    tmp_path: Path,
    s3: S3,
    k1: Keyring,
    small_object_bytes: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """To an object store too: a local source replaced after it was read is looked at again
    before the object is put or its multipart upload completed; the object fails, nothing is
    left in the bucket, and the next run encrypts the new bytes. (The streamed route, for
    large objects, had no check at all.)"""
    from envelope.lake import fs as lake_fs

    src = tmp_path / "src"
    src.mkdir()
    victim = src / "data.bin"
    victim.write_bytes(b"old!" * 50_000)
    replacement = tmp_path / "replacement"
    replacement.write_bytes(b"NEW!" * 50_000)
    real_check = lake_fs.SourceGuard.check
    swapped: list[bool] = []

    def check(self: Any) -> None:
        if not swapped:
            swapped.append(True)
            os.replace(replacement, victim)
        real_check(self)

    uri = s3.uri(f"lake/guarded-{small_object_bytes}")
    o = opts(small_object_bytes=small_object_bytes)
    monkeypatch.setattr(lake_fs.SourceGuard, "check", check)
    r = await jobs.encrypt_prefix(str(src), uri, keyring=k1, options=o)
    monkeypatch.undo()
    assert swapped
    assert [(f.path, f.error_type) for f in r.failures] == [("data.bin", "SourceChangedError")]
    client = s3.client()
    key = f"guarded-{small_object_bytes}/data.bin"
    assert client.list_objects_v2(Bucket="lake", Prefix=key).get("KeyCount", 0) == 0
    assert client.list_multipart_uploads(Bucket="lake").get("Uploads", []) == []
    r = await jobs.encrypt_prefix(str(src), uri, keyring=k1, options=o)
    assert r.ok and r.done == 1
    assert client.list_objects_v2(Bucket="lake", Prefix=key)["KeyCount"] == 1  # (the control)
    back = await jobs.decrypt_prefix(uri, str(tmp_path / "back"), keyring=k1, options=o)
    assert back.ok and (tmp_path / "back" / "data.bin").read_bytes() == b"NEW!" * 50_000
