"""Two source trees of envelope on the command line, interleaved: before / after a change.

    git archive 311906a | tar -x -C /tmp/old; git archive HEAD | tar -x -C /tmp/new
    python bench/cli_ab.py /tmp/old /tmp/new [--rounds 8] [--size-mib 512] [--json]

Each round runs `cp`, then `envelope encrypt` and `envelope decrypt` of the same file in the
page cache and `envelope encrypt` of a 1-byte file (start-up) with every tree, the trees in
turns (`python -m envelope.cli.main` run from inside each tree, so each runs its own code),
every command's previous output removed just before it runs (see `bench/cli.py` for why).
Reports medians and bests of wall time and the medians of the child's CPU time (user +
system), and each figure's ratio to `cp`'s median. On a shared machine the medians of
interleaved runs are what compare; a single run is noise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(cmd: list[str], cwd: str, env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, child CPU seconds) of one command."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{cmd} failed ({status})")
    return time.perf_counter() - t0, usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("trees", nargs="+", help="folders that each hold an envelope/ package")
    ap.add_argument("--rounds", type=int, default=8, help="alternating A/B rounds (8)")
    ap.add_argument("--size-mib", type=int, default=512, help="file size in MiB (512)")
    ap.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    args = ap.parse_args()
    trees = [str(Path(t).resolve()) for t in args.trees]
    for t in trees:
        if not (Path(t) / "envelope" / "cli" / "main.py").is_file():
            raise SystemExit(f"{t} holds no envelope/cli/main.py")
    work = Path(tempfile.mkdtemp(prefix="envelope-bench-ab-"))
    env = {**os.environ, "ENVELOPE_HOME": str(work / "home")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # bytecode cached, as installed
    env.pop("PYTHONPATH", None)
    py = sys.executable
    try:
        src, key, tiny = work / "in.bin", work / "k.key", work / "tiny.bin"
        with open(src, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(1 << 20))
        tiny.write_bytes(b"x")
        cli = [py, "-m", "envelope.cli.main"]
        subprocess.run([*cli, "keygen", str(key)], cwd=trees[0], env=env, check=True,
                       stderr=subprocess.DEVNULL)

        def fresh(name: str) -> str:
            (work / name).unlink(missing_ok=True)
            return str(work / name)

        times: dict[str, list[tuple[float, float]]] = {}
        for r in range(args.rounds + 1):  # round 0 warms up (bytecode, page cache)
            order = list(enumerate(trees))
            order = order[r % len(order) :] + order[: r % len(order)]
            got = {"cp": run(["cp", str(src), fresh("cp.bin")], str(work), env)}
            for i, t in order:
                got[f"{i} encrypt"] = run(
                    [*cli, "encrypt", str(src), fresh(f"{i}.env"), "--key-file", str(key)],
                    t, env)
            for i, t in order:
                got[f"{i} decrypt"] = run(
                    [*cli, "decrypt", str(work / f"{i}.env"), fresh(f"{i}.bin"),
                     "--key-file", str(key)], t, env)
            for i, t in order:
                got[f"{i} startup"] = run(
                    [*cli, "encrypt", str(tiny), fresh(f"{i}.tiny"), "--key-file", str(key)],
                    t, env)
            if r:
                for name, v in got.items():
                    times.setdefault(name, []).append(v)
        cp = statistics.median(w for w, _ in times["cp"])
        size = src.stat().st_size
        result: dict[str, object] = {"trees": trees, "rounds": args.rounds,
                                     "size_mib": args.size_mib, "cp_median_s": round(cp, 3)}
        for name, v in times.items():
            wall = statistics.median(w for w, _ in v)
            fig: dict[str, float] = {
                "median_s": round(wall, 3),
                "best_s": round(min(w for w, _ in v), 3),
                "cpu_median_s": round(statistics.median(c for _, c in v), 3),
            }
            if "startup" not in name:
                fig["mbps_median"] = round(size / wall / 1e6)
                fig["ratio_to_cp"] = round(cp / wall, 3)
            result[name] = fig
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            for i, t in enumerate(trees):
                print(f"{i}: {t}")
            for name, fig in result.items():
                print(f"{name}: {fig}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
