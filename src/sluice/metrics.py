"""Prometheus metrics (prometheus-client): requests, tokens and cost by alias, provider and feature;
upstream latency, time to first token, and the time spent in Sluice itself.

Label sets are bounded: aliases and providers come from the config, and at most ``MAX_FEATURES``
distinct feature names get their own label (later ones are counted as ``other``). With several workers,
``sluice serve`` sets prometheus-client's multiprocess directory before the workers start, and every
worker's ``/metrics`` answers with the sum over all of them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

from sluice.ledger.entry import Entry

MAX_FEATURES = 100
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST.encode()
_LATENCY = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_OVERHEAD = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
_TOKEN_CLASSES = (
    ("input", "input_tokens"),
    ("cache_read", "cache_read_tokens"),
    ("cache_write", "cache_write_tokens"),
    ("output", "output_tokens"),
    ("reasoning", "output_reasoning_tokens"),
)


class Metrics:
    """The gateway's metrics, in a registry of its own."""

    def __init__(self) -> None:
        # `_created` series double the output and say nothing we need (the library leaves it untyped)
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("alias", "provider", "feature")
        self._requests = Counter(
            "sluice_requests", "Requests settled.", (*labels, "status"), registry=self.registry
        )
        self._tokens = Counter(
            "sluice_tokens", "Tokens used, by class.", (*labels, "class"), registry=self.registry
        )
        self._cost = Counter(
            "sluice_cost_nanodollars",
            "Cost charged, in nano-dollars (1e-9 USD).",
            labels,
            registry=self.registry,
        )
        self._upstream = Histogram(
            "sluice_upstream_latency_seconds",
            "Time waiting for the provider's answer (streams: until the first content).",
            ("provider",),
            buckets=_LATENCY,
            registry=self.registry,
        )
        self._ttft = Histogram(
            "sluice_time_to_first_token_seconds",
            "Streams: from the request's arrival to its first content sent to the client.",
            ("alias",),
            buckets=_LATENCY,
            registry=self.registry,
        )
        self._overhead = Histogram(
            "sluice_gateway_overhead_seconds",
            "Time spent in Sluice itself: the answer's latency (streams: time to first token) minus the "
            "time waiting for the provider.",
            buckets=_OVERHEAD,
            registry=self.registry,
        )
        self._features: set[str] = set()
        self._children: dict[tuple[Any, ...], Any] = {}

    def _feature(self, feature: str | None) -> str:
        if feature is None:
            return ""
        if feature in self._features:
            return feature
        if len(self._features) < MAX_FEATURES:
            self._features.add(feature)
            return feature
        return "other"

    def _child(self, metric: Any, *values: str) -> Any:
        key = (id(metric), *values)  # children cached: .labels() costs a lock and a dict build
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def observe(self, entry: Entry) -> None:
        """Count one settled request."""
        feature = self._feature(entry.feature)
        where = (entry.alias, entry.provider or "", feature)
        self._child(self._requests, *where, entry.status).inc()
        usage = entry.usage
        for name, attr in _TOKEN_CLASSES:
            count = getattr(usage, attr)
            if count:
                self._child(self._tokens, *where, name).inc(count)
        if entry.cost_nanos:
            self._child(self._cost, *where).inc(entry.cost_nanos)
        if entry.upstream_us and entry.provider:
            self._child(self._upstream, entry.provider).observe(entry.upstream_us / 1e6)
        answered = entry.ttft_us if entry.stream else entry.latency_us
        if entry.ttft_us is not None:
            self._child(self._ttft, entry.alias).observe(entry.ttft_us / 1e6)
        if answered is not None and entry.upstream_status == 200:
            self._overhead.observe(max(answered - entry.upstream_us, 0) / 1e6)

    def render(self) -> bytes:
        """The text exposition format (summed over every worker in multiprocess mode)."""
        shared = os.environ.get(MULTIPROC_ENV)
        if shared:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=shared)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)


def share_between_workers(directory: Path) -> None:
    """Before starting several workers: an empty directory where each writes its metrics (the workers
    are new processes, so prometheus-client sees the variable when they import it)."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(directory)
