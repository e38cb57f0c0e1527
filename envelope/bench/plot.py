"""Plots of benchmark results (matplotlib, the `bench` extra: pip install 'envelope-kms[bench]').

`encrypt`: throughput against segment size, workers and object size, each with the machine's
limit as a line; `peers`: encrypt and decrypt throughput as bars, one pair per tool;
`machine`: the limits as bars; `kms`: latency percentiles against concurrent callers;
`lake`: the estimated duration's parts, and KMS calls with and without the cache.
matplotlib is imported only here, with the Agg backend (no display needed).
"""

from __future__ import annotations

import importlib.util
from typing import Any

from ..errors import ConfigurationError

__all__ = ("draw", "require_matplotlib")


def require_matplotlib() -> None:
    if importlib.util.find_spec("matplotlib") is None:
        raise ConfigurationError("--plot needs matplotlib: pip install 'envelope-kms[bench]'")


def _bars(ax: Any, labels: list[str], series: dict[str, list[float]], ylabel: str) -> None:
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        xs = [x + i * width for x in range(len(labels))]
        ax.bar(xs, values, width=width, label=name)
    ax.set_xticks([x + width * (len(series) - 1) / 2 for x in range(len(labels))])
    ax.set_xticklabels(labels, rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    ax.legend()


def _sweep(ax: Any, rows: list[dict[str, Any]], x: str, xlabel: str, *, log: bool) -> None:
    xs = [r[x] for r in rows]
    ax.plot(xs, [r["encrypt_mbps"] for r in rows], "o-", label="encrypt")
    ax.plot(xs, [r["decrypt_mbps"] for r in rows], "s-", label="decrypt")
    ax.plot(xs, [r["limit_mbps"] for r in rows], "k--", label="machine limit (AES-GCM)")
    if log:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("MB/s")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize="small")


def draw(kind: str, result: dict[str, Any], path: str) -> None:
    """Draw `result` of benchmark `kind` into the PNG file `path`."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if kind == "encrypt":
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
        _sweep(axes[0], result["segments"], "segment_size", "segment size (bytes)", log=True)
        axes[0].set_title("by segment size (every core)")
        _sweep(axes[1], result["workers"], "workers", "workers", log=False)
        axes[1].set_title("by workers")
        _sweep(axes[2], result["objects"], "object_size", "object size (bytes)", log=True)
        axes[2].set_title("whole objects (one thread)")
    elif kind == "peers":
        fig, ax = plt.subplots(figsize=(10, 5))
        rows = [r for r in result["rows"] if not r["skipped"]]
        _bars(
            ax,
            [r["name"] for r in rows],
            {
                "encrypt": [r["encrypt_mbps"] for r in rows],
                "decrypt": [r["decrypt_mbps"] for r in rows],
            },
            "MB/s (file to file, whole process)",
        )
        limit = result.get("machine", {}).get("file_copy_mbps")
        if limit:
            ax.axhline(limit, color="k", linestyle="--", label="user-space file copy")
            ax.legend()
        ax.set_title(f"peers, {result['size_mib']:g} MiB file")
    elif kind == "machine":
        fig, ax = plt.subplots(figsize=(9, 4.5))
        names = [
            "aes_gcm_1t_mbps",
            "aes_gcm_all_mbps",
            "memcpy_mbps",
            "file_copy_mbps",
            "file_copy_fsync_mbps",
        ]
        _bars(
            ax,
            [n.removesuffix("_mbps") for n in names],
            {"MB/s": [result[n] for n in names]},
            "MB/s",
        )
        ax.set_title(str(result["cpu"]["model"]))
    elif kind == "kms":
        fig, ax = plt.subplots(figsize=(9, 4.5))
        for op in ("generate_data_key", "decrypt"):
            rows = [r for r in result["latency"] if r["operation"] == op]
            xs = [r["concurrency"] for r in rows]
            for q in ("p50_ms", "p99_ms"):
                ax.plot(xs, [r[q] for r in rows], "o-", label=f"{op} {q.removesuffix('_ms')}")
        ax.set_xlabel("concurrent callers")
        ax.set_ylabel("latency (ms)")
        ax.set_ylim(bottom=0)
        ax.legend()
        ax.set_title("KMS latency")
    elif kind == "lake":
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
        est = result["estimate"]
        parts = {
            "job start": result["sample"]["job_start_seconds"],
            "small objects": est["small_s"],
            "large objects": est["large_s"],
        }
        bottom = 0.0
        for name, seconds in parts.items():
            left.bar(["estimated duration"], [seconds], bottom=bottom, label=name)
            bottom += seconds
        left.set_ylabel("seconds")
        left.legend()
        left.set_title(f"{result['objects']:,} objects, {result['bytes'] / 1e9:.3g} GB")
        calls = [est["kms_calls_without_cache"], est["kms_calls"]]
        right.bar(["without cache", "with cache"], calls, color=["tab:red", "tab:green"])
        right.set_yscale("log")
        right.set_ylabel("GenerateDataKey calls")
        right.set_title(
            f"KMS cost USD {est['cost_without_cache_usd']:.4g} -> {est['cost_usd']:.4g}"
        )
    else:
        raise ConfigurationError(f"no plot for {kind!r}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
