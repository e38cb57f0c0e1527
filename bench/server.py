"""`envelope serve` against moto's KMS server: requests per second and latency over HTTP.

    python bench/server.py [--seconds 4] [--rounds 2] [--clients 1,8,32] [--workers 2] [--json]

Both servers run on this machine as subprocesses on loopback: `envelope serve --workers N` on a
fresh store, with a real access key made by ``envelope iam create-access-key`` (every request is
checked by SigV4, authorized and audited, each call committed before its answer), and
``moto_server`` (moto's Flask KMS; it checks no signature and keeps keys in memory). The
clients are boto3 clients, one per thread, each with its own keep-alive connection, retries off;
they call GenerateDataKey (AES_256) and Decrypt (of a data key that server made) in a closed
loop for ``--seconds``. Cells are interleaved (each round runs every client count and
operation against envelope and moto back to back, alternating which goes first) so that a
change in the machine's load hits both servers alike; a cell's figures pool its rounds.

Per cell: requests per second, p50 and p99 latency (ms) as the clients see it, errors, the
client processes' CPU per call (the boto3 side of the cost; clients and servers share the
machine's cores) and, for envelope, the server's own p50/p99 from its /metrics histogram (the
upper bound of the bucket: the time from the request's body to its response, which excludes
the client's queueing). With all clients as threads of one process, a boto3 call's ~2 ms of
client CPU under one interpreter lock bounds the throughput at about 400 calls/s and puts
8 x 2 ms of queueing into every latency at 8 clients: the figure would then be boto3's, not
the server's. So by default a cell's clients are spread over one process per core (each a
``spawn``ed interpreter with its share of the threads), as clients of a real server are
separate processes; ``--client-processes 1`` gives the one-interpreter figure.
`ratio_vs_moto_8` is envelope's GenerateDataKey/s over moto's with 8 clients. ``loadavg``
(/proc/loadavg before and after) says how busy the machine was.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import multiprocessing as mp
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import botocore.config

REPO = Path(__file__).resolve().parents[1]
REGION = "us-east-1"
OPERATIONS = ("GenerateDataKey", "Decrypt")


@dataclass
class Target:
    """One server under test: where it listens and the credentials its clients use."""

    name: str
    endpoint: str
    access_key: str
    secret: str
    key_id: str = ""
    proc: subprocess.Popen[bytes] | None = None

    def client(self) -> Any:
        return boto3.client(
            "kms",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret,
            config=botocore.config.Config(
                retries={"total_max_attempts": 1}, max_pool_connections=1
            ),
        )


@dataclass
class Cell:
    """Pooled figures of one (server, operation, clients) cell over its rounds."""

    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    client_cpu: float = 0.0
    latencies: list[float] = field(default_factory=list)
    #: the server's own latency histogram over this cell (bucket upper bound -> count)
    server_buckets: dict[float, float] = field(default_factory=dict)

    def server_pct(self, p: float) -> float | None:
        """The `p` quantile of the server's own time per request, as the upper bound (ms) of
        the histogram bucket it falls in (envelope's /metrics; None for moto)."""
        total = sum(self.server_buckets.values())
        if not total:
            return None
        seen = 0.0
        for bound in sorted(self.server_buckets):
            seen += self.server_buckets[bound]
            if seen >= p * total:
                return round(bound * 1000, 3)
        return None

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)

        def pct(p: float) -> float | None:
            if not lat:
                return None
            return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 2)

        done = self.requests
        return {
            "requests_per_s": round(done / self.seconds, 1) if self.seconds else 0.0,
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
            "requests": done,
            "errors": self.errors,
            "client_cpu_ms_per_call": round(self.client_cpu / done * 1000, 3) if done else None,
            **(
                {
                    "server_p50_ms_at_most": self.server_pct(0.50),
                    "server_p99_ms_at_most": self.server_pct(0.99),
                }
                if self.server_buckets
                else {}
            ),
        }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"server at {url} did not start:\n{log.read_text()[-4000:]}")
        time.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _envelope_cli() -> list[str]:
    return [sys.executable, "-m", "envelope.cli.main"]


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENVELOPE_", "AWS_"))}
    env["ENVELOPE_HOME"] = str(home)
    env["PYTHONPATH"] = str(REPO)
    return env


@contextmanager
def envelope_server(base: Path, workers: int, log_level: str) -> Iterator[Target]:
    home = base / "envelope-home"
    env = _env(home)
    out = subprocess.run(
        [*_envelope_cli(), "iam", "create-access-key", "--home", str(home), "--json"],
        env=env,
        check=True,
        capture_output=True,
        cwd=REPO,
    )
    key = json.loads(out.stdout)["AccessKey"]
    port = _free_port()
    log = base / "envelope.log"
    with log.open("wb") as f:
        proc = subprocess.Popen(
            [
                *_envelope_cli(),
                "serve",
                "--home",
                str(home),
                "--port",
                str(port),
                "--workers",
                str(workers),
                "--log-level",
                log_level,
            ],
            env=env,
            cwd=REPO,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    target = Target(
        "envelope", f"http://127.0.0.1:{port}", key["AccessKeyId"], key["SecretAccessKey"]
    )
    target.proc = proc
    try:
        _wait_http(target.endpoint + "/healthz", proc, log)
        yield target
    finally:
        _stop(proc)


def moto_version() -> str | None:
    """The moto of this interpreter (the one the project's test extra pins), or None."""
    try:
        return importlib.metadata.version("moto")
    except importlib.metadata.PackageNotFoundError:
        return None


@contextmanager
def moto_server(base: Path) -> Iterator[Target]:
    """moto's server from this interpreter (`python -m moto.server`), never another moto
    that happens to be first on PATH."""
    port = _free_port()
    log = base / "moto.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    with log.open("wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    target = Target("moto", f"http://127.0.0.1:{port}", "AKIAMOTOBENCH0000000", "moto-secret")
    target.proc = proc
    try:
        _wait_http(target.endpoint + "/moto-api/", proc, log)
        yield target
    finally:
        _stop(proc)


def run_cell(
    target: Target,
    operation: str,
    clients: int,
    seconds: float,
    gate: Callable[[], object] | None = None,
) -> Cell:
    """`clients` threads, each with its own boto3 client, calling `operation` for `seconds`
    (`gate`: called once every client is ready, before the clock starts)."""
    ready = threading.Barrier(clients + 1)
    start = threading.Event()
    results: list[tuple[list[float], int]] = []
    lock = threading.Lock()
    stop_at = [0.0]

    def worker() -> None:
        kms = target.client()
        call: Callable[[], Any]
        if operation == "GenerateDataKey":

            def call() -> Any:
                return kms.generate_data_key(KeyId=target.key_id, KeySpec="AES_256")
        else:
            blob = kms.generate_data_key(KeyId=target.key_id, KeySpec="AES_256")["CiphertextBlob"]

            def call() -> Any:
                return kms.decrypt(CiphertextBlob=blob)

        call()  # warm: connection open, models loaded
        lat: list[float] = []
        errors = 0
        ready.wait()
        start.wait()
        end = stop_at[0]
        clock = time.perf_counter
        while True:
            t0 = clock()
            if t0 >= end:
                break
            try:
                call()
            except Exception:
                errors += 1
                continue
            lat.append(clock() - t0)
        with lock:
            results.append((lat, errors))

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    ready.wait()
    if gate is not None:
        gate()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    stop_at[0] = t0 + seconds
    start.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cell = Cell(seconds=elapsed)
    cell.client_cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    for lat, errors in results:
        cell.latencies.extend(lat)
        cell.requests += len(lat)
        cell.errors += errors
    return cell


def _child_cell(
    target: Target, operation: str, clients: int, seconds: float, gate: Any, out: Any
) -> None:
    out.put(run_cell(target, operation, clients, seconds, gate.wait))


def run_cell_procs(
    target: Target, operation: str, clients: int, seconds: float, procs: int
) -> Cell:
    """`run_cell` with the client threads spread over `procs` processes (so that the clients
    are not bound by one interpreter's lock); figures summed, latencies pooled."""
    procs = max(1, min(procs, clients))
    if procs == 1:
        return run_cell(target, operation, clients, seconds)
    # spawn, not fork: a forked child can inherit a lock that boto3 held in another thread
    ctx = mp.get_context("spawn")
    target = dataclasses.replace(target, proc=None)  # a Popen does not cross processes
    gate = ctx.Barrier(procs)
    out = ctx.Queue()
    shares = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    children = [
        ctx.Process(target=_child_cell, args=(target, operation, n, seconds, gate, out))
        for n in shares
    ]
    for c in children:
        c.start()
    got = [out.get(timeout=seconds + 300) for _ in children]
    for c in children:
        c.join()
    cell = Cell(seconds=max(g.seconds for g in got))
    for g in got:
        cell.requests += g.requests
        cell.errors += g.errors
        cell.client_cpu += g.client_cpu
        cell.latencies.extend(g.latencies)
    return cell


def _server_histogram(target: Target, operation: str) -> dict[float, float]:
    """envelope's per-bucket request counts for `operation` (non-cumulative), from /metrics."""
    if target.name != "envelope":
        return {}
    import urllib.request

    with urllib.request.urlopen(target.endpoint + "/metrics", timeout=30) as r:
        text = r.read().decode()
    cumulative: dict[float, float] = {}
    for line in text.splitlines():
        if not line.startswith("envelope_server_request_seconds_bucket{"):
            continue
        labels, _, value = line.rpartition(" ")
        if f'operation="{operation}"' not in labels:
            continue
        le = labels.split('le="', 1)[1].split('"', 1)[0]
        bound = float("inf") if le == "+Inf" else float(le)
        cumulative[bound] = cumulative.get(bound, 0.0) + float(value)
    out: dict[float, float] = {}
    previous = 0.0
    for bound in sorted(cumulative):
        out[bound] = cumulative[bound] - previous
        previous = cumulative[bound]
    return out


def _loadavg() -> list[float] | None:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", type=float, default=4.0, help="per cell and round")
    ap.add_argument(
        "--rounds", type=int, default=2, help="rounds over every cell, alternating server order (2)"
    )
    ap.add_argument("--clients", default="1,8,32", help="comma-separated client counts")
    ap.add_argument("--workers", type=int, default=2, help="envelope serve --workers")
    ap.add_argument("--log-level", default="info", help="envelope serve --log-level")
    ap.add_argument(
        "--client-processes",
        type=int,
        default=os.cpu_count() or 1,
        help="spread each cell's client threads over this many processes (default: one per "
        "core, as real clients are separate processes; 1 puts every client under one "
        "interpreter lock, which caps them at about 900 calls/s whatever the server does)",
    )
    ap.add_argument("--only", choices=("envelope", "moto"), help="measure one server only")
    ap.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    args = ap.parse_args()
    try:
        counts = [int(c) for c in args.clients.split(",") if c]
    except ValueError:
        ap.error(f"--clients must be comma-separated whole numbers, not {args.clients!r}")
    if not counts or min(counts) < 1 or args.rounds < 1 or args.seconds <= 0:
        ap.error("--clients, --rounds and --seconds must be positive")
    names = ("envelope", "moto") if args.only is None else (args.only,)
    if "moto" in names and moto_version() is None:
        ap.error("moto is not installed here: pip install 'moto[server]', or pass --only envelope")
    # SIGTERM (a CI cancel, a supervisor) unwinds like Ctrl-C: the servers are stopped and the
    # scratch folder removed by the context managers below, not left running
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    cells: dict[tuple[str, str, int], Cell] = {}
    load_before = _loadavg()
    with tempfile.TemporaryDirectory(prefix="bench-server-") as tmp:
        base = Path(tmp)
        with ExitStack() as servers_up:
            targets: dict[str, Target] = {}
            if "envelope" in names:
                targets["envelope"] = servers_up.enter_context(
                    envelope_server(base, args.workers, args.log_level)
                )
            if "moto" in names:
                targets["moto"] = servers_up.enter_context(moto_server(base))
            for t in targets.values():
                t.key_id = t.client().create_key(Description="bench")["KeyMetadata"]["Arn"]
            for r in range(args.rounds):
                for n in counts:
                    for op in OPERATIONS:
                        order = names if (r + n) % 2 == 0 else tuple(reversed(names))
                        for name in order:
                            before = _server_histogram(targets[name], op)
                            got = run_cell_procs(
                                targets[name], op, n, args.seconds, args.client_processes
                            )
                            after = _server_histogram(targets[name], op)
                            cell = cells.setdefault((name, op, n), Cell())
                            cell.requests += got.requests
                            cell.errors += got.errors
                            cell.seconds += got.seconds
                            cell.client_cpu += got.client_cpu
                            cell.latencies.extend(got.latencies)
                            for bound, count in after.items():
                                cell.server_buckets[bound] = (
                                    cell.server_buckets.get(bound, 0.0)
                                    + count
                                    - before.get(bound, 0.0)
                                )
                            if not args.json:
                                s = got.summary()
                                print(
                                    f"round {r + 1} {name:8s} {op:15s} {n:3d} clients: "
                                    f"{s['requests_per_s']:8.1f}/s p50 {s['p50_ms']} ms "
                                    f"p99 {s['p99_ms']} ms errors {s['errors']}",
                                    file=sys.stderr,
                                )
    load_after = _loadavg()

    servers: dict[str, Any] = {}
    for (name, op, n), cell in sorted(cells.items()):
        servers.setdefault(name, {}).setdefault(op, {})[str(n)] = cell.summary()

    def rate(name: str) -> float:
        c = cells.get((name, "GenerateDataKey", 8))
        return c.requests / c.seconds if c is not None and c.seconds else 0.0

    ratio = round(rate("envelope") / rate("moto"), 2) if rate("moto") else None
    result = {
        "ratio_vs_moto_8": ratio,
        "servers": servers,
        "settings": {
            "seconds_per_cell_round": args.seconds,
            "rounds": args.rounds,
            "clients": counts,
            "envelope_workers": args.workers,
            "envelope_log_level": args.log_level,
            "client_processes": args.client_processes,
            "cpus": os.cpu_count(),
            "moto_version": moto_version() if "moto" in names else None,
        },
        "loadavg_before": load_before,
        "loadavg_after": load_after,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # the servers were stopped on the way out
        sys.exit(130)
