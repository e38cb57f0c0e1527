"""The benches' own helpers: the file system their figures are taken on, and sizes that are
not a multiple of the generator's chunk."""

from __future__ import annotations

from pathlib import Path

from envelope.bench.lake import generate_tree
from envelope.bench.machine import filesystem_type

MIB = 1 << 20


def test_filesystem_type_takes_the_longest_mount_point_above_the_path(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "/dev/vda1 / ext4 rw 0 0\n"
        "tmpfs /tmp tmpfs rw 0 0\n"
        "/dev/vdb /tmp/data xfs rw 0 0\n"
        "/dev/vdc /tmp/data\\040two btrfs rw 0 0\n"
    )
    assert filesystem_type("/tmp/data/x", str(mounts)) == "xfs"
    assert filesystem_type("/tmp/data two/y", str(mounts)) == "btrfs"
    assert filesystem_type("/tmp/database", str(mounts)) == "tmpfs"  # not under /tmp/data
    assert filesystem_type("/srv", str(mounts)) == "ext4"
    assert filesystem_type("/srv", str(tmp_path / "missing")) is None


def test_generate_tree_writes_large_objects_of_any_size(tmp_path: Path) -> None:
    """`bench/lake.py --large-mib 2` made empty large objects (whole 4 MiB chunks only), and
    the bench then divided by their zero size."""
    generate_tree(tmp_path, 3, 2, 2 * MIB + 5)
    sizes = sorted(p.stat().st_size for p in (tmp_path / "large").iterdir())
    assert sizes == [2 * MIB + 5] * 2
    assert len(list((tmp_path / "small").rglob("*.bin"))) == 3
