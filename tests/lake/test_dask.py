"""Scale-out: a real Dask LocalCluster with two worker processes runs a lake job."""

from __future__ import annotations

from pathlib import Path

import anyio
import distributed
import pytest

from envelope import api
from envelope.keycache import CachePolicy
from envelope.keyring import Keyring
from envelope.kms.keyspec import KeySpec
from envelope.kms.local import open_local
from envelope.lake import jobs
from envelope.lake.distributed import run_on_dask

from .conftest import make_tree, read_tree

OPTS = jobs.LakeOptions(engine=api.Options(segment_size=65536, workers=1, depth=3))


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    b = open_local(h)
    kid = b.service.create_key()["KeyMetadata"]["KeyId"]
    b.service.create_alias(alias_name="alias/lake", target_key_id=kid)
    kid2 = b.service.create_key()["KeyMetadata"]["KeyId"]
    b.service.create_alias(alias_name="alias/lake2", target_key_id=kid2)
    b.service.close()
    return h


def test_dask_cluster_matches_single_machine(tmp_path: Path, home: Path) -> None:
    src = tmp_path / "src"
    tree = make_tree(src, [0, 7, 3000, 70_000, 300_000] * 12 + [(10 << 20) + 1])
    keys = KeySpec(key="local:alias/lake", home=str(home))

    # one machine
    kr = Keyring(open_local(home), "alias/lake", cache=CachePolicy())
    single = anyio.run(
        lambda: jobs.encrypt_prefix(str(src), str(tmp_path / "one"), keyring=kr, options=OPTS)
    )
    anyio.run(kr.aclose)

    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address="127.0.0.1:0",  # None still binds :8787 for its HTTP routes
            host="127.0.0.1",
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        report = run_on_dask(
            client, "encrypt", str(src), str(tmp_path / "many"), keys=keys, options=OPTS
        )
        assert (report.objects, report.done, report.failed) == (
            single.objects,
            single.done,
            0,
        ), report.failures
        verified = run_on_dask(
            client, "verify", str(tmp_path / "many"), None, keys=keys, options=OPTS
        )
        assert verified.ok and verified.done == len(tree)
        again = run_on_dask(
            client, "encrypt", str(src), str(tmp_path / "many"), keys=keys, options=OPTS
        )
        assert again.skipped == len(tree) and again.done == 0  # the same resume rule
        moved = run_on_dask(
            client,
            "rewrap",
            str(tmp_path / "many"),
            None,
            keys=KeySpec(home=str(home)),  # the purpose follows the operation
            to=KeySpec(key="alias/lake2", home=str(home)),
            options=OPTS,
        )
        assert moved.ok and moved.done == len(tree), moved.failures

    assert set(read_tree(tmp_path / "many")) == set(read_tree(tmp_path / "one")) == set(tree)
    kr = Keyring(decrypt_with=[open_local(home)], cache=CachePolicy())
    for name in ("one", "many"):
        back = anyio.run(
            lambda n=name: jobs.decrypt_prefix(
                str(tmp_path / n), str(tmp_path / f"back-{n}"), keyring=kr, options=OPTS
            )
        )
        assert back.ok and read_tree(tmp_path / f"back-{name}") == tree
    anyio.run(kr.aclose)


def test_cli_workers_starts_a_local_cluster(tmp_path: Path, home: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    src = tmp_path / "src"
    tree = make_tree(src, [100, 5000, 80_000] * 6)
    env = {**os.environ, "ENVELOPE_HOME": str(home)}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "envelope.cli.main",
            "lake",
            "encrypt",
            str(src),
            str(tmp_path / "enc"),
            "--key",
            "alias/lake",
            "--workers",
            "2",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["done"] == len(tree)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "envelope.cli.main",
            "lake",
            "decrypt",
            str(tmp_path / "enc"),
            str(tmp_path / "back"),
            "--workers",
            "2",
            "--json",
        ],
        capture_output=True,
        text=True,
        # --workers asks for a local cluster: it wins over a scheduler in the environment
        env={**env, "DASK_SCHEDULER_ADDRESS": "tcp://127.0.0.1:1"},
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-3000:]
    assert read_tree(tmp_path / "back") == tree
    # without --workers, DASK_SCHEDULER_ADDRESS is --scheduler: here nothing listens there
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "envelope.cli.main",
            "lake",
            "verify",
            str(tmp_path / "enc"),
            "--key",
            "alias/lake",
        ],
        capture_output=True,
        text=True,
        env={
            **env,
            "DASK_SCHEDULER_ADDRESS": "tcp://127.0.0.1:1",
            "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s",
        },
        timeout=300,
    )
    assert r.returncode != 0 and "127.0.0.1:1" in r.stderr, (r.returncode, r.stderr[-2000:])
