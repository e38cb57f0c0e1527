"""Custom key stores: GenerateDataKey per second through an HSM store and an external store,
against the default store, in one run.

    python bench/keystores.py [--seconds 6] [--xks-seconds 8] [--proxy-workers 1] [--no-xks]
                              [--json]

Everything runs in this process against one embedded `KeyService` (one store file, WAL,
``synchronous=NORMAL``; every call is a committed transaction with its audit record):

- the default store: a key whose material is sealed in the store;
- an HSM store: a key in a private SoftHSM2 token made by the bench in a temp dir
  (`tests.softhsm.make_token`), its AES-GCM run inside the token;
- an external store: a key behind ``envelope xks serve`` (a subprocess: TLS on loopback with a
  certificate made here, the proxy's keys in another SoftHSM2 token), double encryption.

Default and HSM are measured with 1 and 8 threads in short interleaved rounds (the order
alternates; this 2-core machine is shared and its speed drifts within seconds), each figure the
median of its rounds and each ratio the median of the per-round ratios. XKS is measured after,
with 1 and 8 threads, interleaved with default-store rounds (8 threads) and with XksClient
calls straight to the proxy from 8 threads (`xks_client_only_encrypt_per_s_8`: the ceiling
the client and the proxy leave the KMS on this machine); then one more 8-thread run splits the
CPU per call between this process and the proxy (`xks_*_cpu_us_per_call`, from /proc).

`hsm_to_default_ratio` is the single-thread ratio (the issue's "in one process"; with 8 threads
both are bound by the store's commit path and the figure is `hsm_to_default_ratio_8`).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from statistics import median
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from envelope.service import KeyService, open_service  # noqa: E402
from tests.xks.running import XksProxy  # noqa: E402

ANCHOR = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
CTX = {"bench": "keystores"}


def _rate(svc: KeyService, kid: str, n_threads: int, seconds: float) -> float:
    """GenerateDataKey calls per second from `n_threads` threads for about `seconds`."""
    counts = [0] * n_threads
    errors: list[BaseException] = []
    stop = time.perf_counter() + seconds

    def work(i: int) -> None:
        try:
            while time.perf_counter() < stop:
                for _ in range(10):
                    svc.generate_data_key(key_id=kid, key_spec="AES_256", encryption_context=CTX)
                counts[i] += 10
        except BaseException as e:  # reported after the round
            errors.append(e)

    start = time.perf_counter()
    threads = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"GenerateDataKey failed during the bench: {errors[0]!r}")
    return sum(counts) / (time.perf_counter() - start)


def _hsm_key(svc: KeyService, folder: Path) -> str:
    """A connected HSM store on a fresh SoftHSM2 token, and a key in it."""
    from tests.softhsm import make_token

    label = "bench-" + secrets.token_hex(4)
    config = make_token(folder, label=label, pin="12345678")
    cluster = svc.register_hsm_cluster(module=config.module, token_label=label)
    store = svc.create_custom_key_store(
        custom_key_store_name="bench-hsm",
        cloud_hsm_cluster_id=cluster["CloudHsmClusterId"],
        key_store_password=config.pin,
        trust_anchor_certificate=ANCHOR,
    )["CustomKeyStoreId"]
    svc.connect_custom_key_store(custom_key_store_id=store)
    meta = svc.create_key(origin="AWS_CLOUDHSM", custom_key_store_id=store)["KeyMetadata"]
    return str(meta["KeyId"])


def _interleaved(
    rounds: int, seconds: float, cases: dict[str, Callable[[float], float]]
) -> dict[str, list[float]]:
    """Each case once per round, the order reversed every other round."""
    out: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for i in range(rounds):
        for name in names if i % 2 == 0 else names[::-1]:
            out[name].append(cases[name](seconds / (rounds * len(cases))))
    return out


# -- the XKS proxy ------------------------------------------------------------------------

XKS_ACCESS_KEY = "BENCHXKSACCESSKEY234"
XKS_KEY_LABEL = "bench-xks-key"
XKS_PREFIX = "/bench"


def _xks_key(svc: KeyService, proxy: XksProxy) -> str:
    """A connected external key store through `proxy`, and a key in it."""
    os.environ["ENVELOPE_XKS_CA_FILE"] = str(proxy.ca.cert_file)
    return str(proxy.connect(svc, "bench-xks")[1]["KeyId"])


def _cpu_split(svc: KeyService, kid: str, proxy: XksProxy, seconds: float) -> dict[str, float]:
    """Where an XKS GenerateDataKey's time goes, from an 8-thread run: CPU of this process (the
    KMS and the XKS client) and of the proxy processes per call; the proxy round trip as the
    KMS timed it (the audit record's ``keystore_calls``), and the sum of the round trips over
    the run's wall time: about 1 or less when the round trips are serialised (each made inside
    the store's write transaction, under its process lock, so the calls of a group commit
    wait for each other's proxy answers), up to 8 when all eight threads' round trips overlap
    (the proxy call made before the lock)."""
    c0, p0, t0 = time.process_time(), proxy.cpu_seconds(), time.perf_counter()
    counts = [0] * 8
    stop = t0 + seconds

    def work(i: int) -> None:
        while time.perf_counter() < stop:
            svc.generate_data_key(key_id=kid, key_spec="AES_256", encryption_context=CTX)
            counts[i] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    n = sum(counts)
    wall = time.perf_counter() - t0
    trips = [
        float(c["Milliseconds"])
        for r in svc.audit_tail(n)
        if r.get("operation") == "GenerateDataKey"
        for c in r.get("keystore_calls") or ()  # type: ignore[attr-defined]
        if c.get("Call") == "Encrypt"
    ]
    return {
        "xks_kms_process_cpu_us_per_call": round((time.process_time() - c0) / n * 1e6, 1),
        "xks_proxy_cpu_us_per_call": round((proxy.cpu_seconds() - p0) / n * 1e6, 1),
        "xks_wall_us_per_call_8": round(wall / n * 1e6, 1),
        "xks_round_trip_ms_median": round(median(trips), 3),
        "xks_round_trip_share_of_wall_8": round(sum(trips) / 1000 / wall, 3),
    }


def _client_ceiling(proxy: XksProxy, kid_arn: str, n_threads: int, seconds: float) -> float:
    """XksClient.encrypt per second straight to the proxy from `n_threads` threads, no KMS:
    what the client and proxy pair allow without the KMS's store lock around each call."""
    from envelope.xks.client import RequestMetadata, XksClient

    client = XksClient(
        proxy.endpoint,
        proxy.uri_path,
        XKS_ACCESS_KEY,
        proxy.secret,
        ca_file=str(proxy.ca.cert_file),
        timeout=10.0,
    )
    md = RequestMetadata(
        "arn:aws:iam::000000000000:root", kid_arn, "GenerateDataKey", str(uuid.uuid4())
    )
    counts = [0] * n_threads
    stop = time.perf_counter() + seconds

    def work(i: int) -> None:
        while time.perf_counter() < stop:
            client.encrypt(XKS_KEY_LABEL, os.urandom(32), b"a" * 64, md)
            counts[i] += 1

    start = time.perf_counter()
    threads = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    client.close()
    return sum(counts) / (time.perf_counter() - start)


def _measure(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    svc = open_service(folder / "home")
    try:  # closed before the folder goes: a service closed at exit writes its digests there
        return _measure_with(args, folder, svc)
    finally:
        svc.close()


def _measure_with(args: argparse.Namespace, folder: Path, svc: KeyService) -> dict[str, Any]:
    results: dict[str, Any] = {"cpus": os.cpu_count(), "rounds": args.rounds}
    default_kid = str(svc.create_key(description="bench-default")["KeyMetadata"]["KeyId"])
    hsm_kid: str | None = None
    if args.no_hsm:
        results["hsm_skipped"] = "--no-hsm"
    else:
        try:
            hsm_kid = _hsm_key(svc, folder)
        except Exception as e:  # no SoftHSM2 here: the default store is still measured
            results["hsm_skipped"] = f"{type(e).__name__}: {e}"
    for kid in (default_kid, hsm_kid):
        if kid is not None:
            _rate(svc, kid, 8, 0.3)  # warm: caches, the token's session pool

    results["loadavg_1m_start"] = round(os.getloadavg()[0], 2)
    cases: dict[str, Callable[[float], float]] = {
        "default_1": lambda dt: _rate(svc, default_kid, 1, dt),
        "default_8": lambda dt: _rate(svc, default_kid, 8, dt),
    }
    if hsm_kid is not None:
        kid = hsm_kid
        cases["hsm_1"] = lambda dt: _rate(svc, kid, 1, dt)
        cases["hsm_8"] = lambda dt: _rate(svc, kid, 8, dt)
    r = _interleaved(args.rounds, args.seconds, cases)
    for name, rates in r.items():
        store, threads = name.split("_")
        results[f"{store}_generate_data_key_per_s_{threads}"] = round(median(rates), 1)
    results["default_generate_data_key_per_s"] = results["default_generate_data_key_per_s_1"]
    if hsm_kid is not None:
        results["hsm_generate_data_key_per_s"] = results["hsm_generate_data_key_per_s_1"]
        for threads in ("1", "8"):
            ratio = median(
                h / d for h, d in zip(r[f"hsm_{threads}"], r[f"default_{threads}"], strict=True)
            )
            results[f"hsm_to_default_ratio_{threads}"] = round(ratio, 3)
        results["hsm_to_default_ratio"] = results["hsm_to_default_ratio_1"]

    if args.no_xks:
        results["xks_skipped"] = "--no-xks"
    elif hsm_kid is None:  # the proxy keeps its keys in a SoftHSM2 token too
        results["xks_skipped"] = f"the proxy needs SoftHSM2: {results['hsm_skipped']}"
    else:
        proxy = XksProxy(
            folder / "xks",
            key_label=XKS_KEY_LABEL,
            prefix=XKS_PREFIX,
            access_key_id=XKS_ACCESS_KEY,
            workers=args.proxy_workers,
        )
        try:
            xks_kid = _xks_key(svc, proxy)
            _rate(svc, xks_kid, 8, 0.5)
            arn = str(svc.describe_key(key_id=xks_kid)["KeyMetadata"]["Arn"])
            x = _interleaved(
                args.rounds,
                args.xks_seconds,
                {
                    "xks_1": lambda dt: _rate(svc, xks_kid, 1, dt),
                    "xks_8": lambda dt: _rate(svc, xks_kid, 8, dt),
                    "default_8": lambda dt: _rate(svc, default_kid, 8, dt),
                    "client_8": lambda dt: _client_ceiling(proxy, arn, 8, dt),
                },
            )
            results["xks_generate_data_key_per_s_1"] = round(median(x["xks_1"]), 1)
            results["xks_generate_data_key_per_s_8"] = round(median(x["xks_8"]), 1)
            results["xks_to_default_ratio_8"] = round(
                median(a / b for a, b in zip(x["xks_8"], x["default_8"], strict=True)), 3
            )
            results["xks_client_only_encrypt_per_s_8"] = round(median(x["client_8"]), 1)
            results["xks_proxy_workers"] = args.proxy_workers
            results.update(_cpu_split(svc, xks_kid, proxy, 2.0))
        finally:
            proxy.stop()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=6.0, help="default vs HSM, all rounds")
    ap.add_argument("--xks-seconds", type=float, default=8.0, help="XKS vs default, all rounds")
    ap.add_argument("--rounds", type=int, default=6, help="interleaved rounds; medians (6)")
    ap.add_argument("--proxy-workers", type=int, default=1, help="envelope xks serve workers (1)")
    ap.add_argument("--no-hsm", action="store_true", help="skip the HSM store (and XKS)")
    ap.add_argument("--no-xks", action="store_true", help="skip the external key store")
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = ap.parse_args()
    if args.rounds < 1 or args.seconds <= 0 or args.xks_seconds <= 0 or args.proxy_workers < 1:
        ap.error("--rounds, --seconds, --xks-seconds and --proxy-workers must be positive")

    folder = Path(tempfile.mkdtemp(prefix="envelope-bench-keystores-"))
    try:
        results = _measure(args, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    results["loadavg_1m"] = round(os.getloadavg()[0], 2)
    if args.json:
        print(json.dumps(results))
    else:
        for k, v in results.items():
            print(f"{k:45s} {v}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
