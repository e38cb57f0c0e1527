"""Reading this process's Prometheus histograms back in tests."""

from __future__ import annotations

from prometheus_client import REGISTRY


def bucket_bounds(metric: str, **labels: str) -> list[float]:
    """The upper bounds of `metric`'s buckets for the series with `labels`."""
    return [
        float(s.labels["le"])
        for family in REGISTRY.collect()
        if family.name == metric
        for s in family.samples
        if s.name.endswith("_bucket") and all(s.labels.get(k) == v for k, v in labels.items())
    ]
