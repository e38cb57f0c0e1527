"""The command line as a user runs it: whole process, a file in the page cache, against `cp`.

    python bench/cli.py [--json] [--size-mib 512] [--rounds 3]

- cli_encrypt_mbps / cli_decrypt_mbps: `envelope encrypt|decrypt IN OUT --key-file K` (no
  fsync, the default), whole process, plaintext MB per second;
- cp_mbps: `cp` of the same file, same folder, same page cache;
- startup_s / startup_rss_mib: `envelope encrypt` of a 1-byte file, wall time and peak RSS.

Rounds are interleaved (cp, encrypt, decrypt, start-up in each round, in an order that turns
from round to round) and the best of each figure is kept, so a slow spell of this shared
machine hits every figure alike. Every command writes a new file, its previous output removed
just before it runs: replacing a file costs a flush on ext4 (auto_da_alloc), and on these VMs
freed pages turn cold within seconds (the host takes them back), so whichever command ran
first after a shared clean-up would get the warm pages. Ratios to `cp_mbps` are printed too:
the targets are encrypt and decrypt >= 1.0 of cp.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENVELOPE = [sys.executable, "-m", "envelope.cli.main"]


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(seconds, peak RSS MiB of the child) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    dt = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return dt, max(after, before) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args()
    work = Path(args.dir or tempfile.mkdtemp(prefix="envelope-bench-cli-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "ENVELOPE_HOME": str(work / "home")}
    # as installed for users: bytecode cached (some sandboxes set PYTHONDONTWRITEBYTECODE,
    # which would recompile every module on every start and measure that instead)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    try:
        src, key, tiny = work / "in.bin", work / "k.key", work / "tiny.bin"
        with open(src, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(1 << 20))
        tiny.write_bytes(b"x")
        subprocess.run([*ENVELOPE, "keygen", str(key)], check=True, env=env,
                       stderr=subprocess.DEVNULL)
        subprocess.run([*ENVELOPE, "encrypt", str(src), str(work / "o.env"),
                        "--key-file", str(key)], check=True, env=env)  # (decrypt's input)
        size = src.stat().st_size
        best: dict[str, float] = {}
        rss: dict[str, float] = {}

        def keep(name: str, seconds: float, mib: float | None = None) -> None:
            rate = size / seconds / 1e6
            best[name] = max(best.get(name, 0.0), rate)
            if mib is not None:
                rss[name] = mib

        def fresh(name: str) -> str:
            """A path for a command's new output, its previous one removed just now."""
            (work / name).unlink(missing_ok=True)
            return str(work / name)

        def run_cp() -> None:
            keep("cp_mbps", timed(["cp", str(src), fresh("cp.bin")], env)[0])

        def run_encrypt() -> None:
            # (o.env is also decrypt's input: the latest encrypt's, this round's or the last)
            dt, _ = timed([*ENVELOPE, "encrypt", str(src), fresh("o.env"),
                           "--key-file", str(key)], env)
            keep("cli_encrypt_mbps", dt)

        def run_decrypt() -> None:
            dt, _ = timed([*ENVELOPE, "decrypt", str(work / "o.env"), fresh("o.bin"),
                           "--key-file", str(key)], env)
            keep("cli_decrypt_mbps", dt)

        commands = [run_cp, run_encrypt, run_decrypt]
        startup: list[float] = []
        for r in range(args.rounds):
            for command in commands[r % 3 :] + commands[: r % 3]:
                command()
            # start-up: a 1-byte file, its own process (RSS measured alone via time -f)
            t0 = time.perf_counter()
            out = subprocess.run(
                ["/usr/bin/time", "-f", "%M", *ENVELOPE, "encrypt", str(tiny),
                 fresh("tiny.env"), "--key-file", str(key)],
                check=True, env=env, capture_output=True, text=True,
            ) if shutil.which("/usr/bin/time") else None
            startup.append(time.perf_counter() - t0)
            if out is not None:
                rss["startup"] = min(rss.get("startup", 1e9),
                                     int(out.stderr.strip().splitlines()[-1]) / 1024)
        result: dict[str, object] = {k: round(v) for k, v in best.items()}
        result["startup_s"] = round(min(startup), 3)
        if "startup" in rss:
            result["startup_rss_mib"] = round(rss["startup"], 1)
        cp = best["cp_mbps"]
        result["ratios"] = {
            "encrypt_to_cp": round(best["cli_encrypt_mbps"] / cp, 3),
            "decrypt_to_cp": round(best["cli_decrypt_mbps"] / cp, 3),
        }
        result["size_mib"] = args.size_mib
        result["cores"] = os.cpu_count()
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            for k, v in result.items():
                print(f"{k}: {v}")
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
