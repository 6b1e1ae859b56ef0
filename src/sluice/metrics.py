"""Metrics in the Prometheus text format: requests, tokens and cost by alias, provider and feature;
upstream latency, time to first token, and the time spent in Sluice itself.

Counting is plain integer arithmetic in dictionaries on the hot path (a prometheus-client update takes a
lock per value: four to eight of them per request cost more than the rest of the accounting); the values
become prometheus-client metric families only when ``/metrics`` is scraped, rendered by the library.

Label sets are bounded: aliases and providers come from the config, and at most ``MAX_FEATURES``
distinct feature names get their own label (later ones are counted as ``other``). With several workers,
``sluice serve`` names a shared directory: every worker writes its totals there each second (and on
shutdown), and whichever worker answers a scrape reports the sum over all of them.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric

from sluice.aio import cancel_and_wait
from sluice.ledger.entry import REFUSED, Entry

log = logging.getLogger("sluice.metrics")
MAX_FEATURES = 100
SHARED_ENV = "SLUICE_METRICS_DIR"
SHARE_EVERY_S = 1.0
CONTENT_TYPE = CONTENT_TYPE_LATEST.encode()
_LATENCY = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_OVERHEAD = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
_TOKEN_CLASSES = ("input", "cache_read", "cache_write", "output", "reasoning")
# Per (alias, provider, feature, status): requests, the token classes above, then cost in nano-dollars.
_WIDTH = 2 + len(_TOKEN_CLASSES)
# Histograms: name → (help, label name, bucket bounds in µs).
_HISTOGRAMS: dict[str, tuple[str, str | None, tuple[int, ...]]] = {
    "sluice_upstream_latency_seconds": (
        "Time waiting for the provider's answer (streams: until the first content).",
        "provider",
        tuple(int(b * 1_000_000) for b in _LATENCY),
    ),
    "sluice_time_to_first_token_seconds": (
        "Streams: from the request's arrival to its first content sent to the client.",
        "alias",
        tuple(int(b * 1_000_000) for b in _LATENCY),
    ),
    "sluice_gateway_overhead_seconds": (
        (
            "Time spent in Sluice itself: the answer's latency (streams: time to first token) minus the "
            "time waiting for the provider."
        ),
        None,
        tuple(int(b * 1_000_000) for b in _OVERHEAD),
    ),
}
_BOUNDS = {name: bounds for name, (_, _, bounds) in _HISTOGRAMS.items()}
Totals = dict[str, Any]  # the JSON-ready form shared between workers
# Routing counters: the short name the gateway counts under → (metric, help, label names).
ROUTING: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "attempt": (
        "sluice_upstream_attempts",
        "Upstream calls, by outcome: ok, failed (the provider's failure) or client_error (not retried).",
        ("provider", "model", "outcome"),
    ),
    "fallback": (
        "sluice_fallbacks",
        "Requests moved to another deployment after a failure, by the deployment that took over.",
        ("alias", "provider"),
    ),
    "ejected": (
        "sluice_ejections",
        "Deployments ejected after consecutive failures (or a failed half-open probe).",
        ("provider", "model"),
    ),
    "budget_exhausted": (
        "sluice_retry_budget_exhausted",
        "Failed requests not retried because the retry budget was spent.",
        ("alias",),
    ),
    "skipped": (
        "sluice_fallbacks_skipped",
        (
            "Deployments left out of a request's plan: unpriced, price (above the alias's price ratio) "
            "or provider_limit (its account's limits were full)."
        ),
        ("alias", "provider", "reason"),
    ),
    "cache": (
        "sluice_cache_lookups",
        "Response-cache lookups and stores by alias and result: hit, miss, stored.",
        ("alias", "result"),
    ),
    "cache_saved": (
        "sluice_cache_saved_nanodollars",
        "What the answers served from the response cache cost when they were made, in nano-dollars.",
        ("alias",),
    ),
    "alert": ("sluice_alerts", "Alerts fired (logged once across instances), by rule.", ("rule",)),
    "alert_delivery": (
        "sluice_alert_deliveries",
        "Alert delivery attempts by channel and outcome: sent, retry (failed, tried again) or failed.",
        ("channel", "outcome"),
    ),
}


class Metrics:
    """The gateway's counters and histograms; one per process."""

    def __init__(self, shared_dir: str | None = None) -> None:
        self._counts: dict[tuple[str, str, str, str], list[int]] = {}
        # histogram name → label value → [count per bucket…, +Inf count, sum in µs]
        self._hists: dict[str, dict[str, list[int]]] = {name: {} for name in _HISTOGRAMS}
        self._features: set[str] = set()
        self._refusals: dict[str, int] = {}  # refused before any provider, by error code
        self._routing: dict[tuple[str, ...], int] = {}  # (ROUTING name, *labels) → count
        self._shared = Path(shared_dir) if shared_dir else None
        self._task: asyncio.Task[None] | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Families(self))

    # --- the hot path ---------------------------------------------------------------------------------

    def _feature(self, feature: str | None) -> str:
        if feature is None:
            return ""
        if feature in self._features:
            return feature
        if len(self._features) < MAX_FEATURES:
            self._features.add(feature)
            return feature
        return "other"

    def _observe(self, name: str, label: str, micros: int) -> None:
        hist = self._hists[name]
        series = hist.get(label)
        bounds = _BOUNDS[name]
        if series is None:
            series = hist[label] = [0] * (len(bounds) + 2)
        series[bisect.bisect_left(bounds, micros)] += 1
        series[-1] += micros

    def observe(self, entry: Entry) -> None:
        """Count one settled request."""
        key = (entry.alias, entry.provider, self._feature(entry.feature), entry.status)
        row = self._counts.get(key)
        if row is None:
            row = self._counts[key] = [0] * _WIDTH
        if entry.status == REFUSED:
            code = entry.error_code or "refused"
            self._refusals[code] = self._refusals.get(code, 0) + 1
        u = entry.usage
        row[0] += 1
        row[1] += u.input_tokens
        row[2] += u.cache_read_tokens
        row[3] += u.cache_write_tokens
        row[4] += u.output_tokens
        row[5] += u.output_reasoning_tokens
        row[6] += entry.cost_nanos
        upstream = entry.upstream_us
        if upstream and entry.provider:
            self._observe("sluice_upstream_latency_seconds", entry.provider, upstream)
        ttft = entry.ttft_us
        if ttft is not None:
            self._observe("sluice_time_to_first_token_seconds", entry.alias, ttft)
        answered = ttft if entry.stream else entry.latency_us
        if answered is not None and entry.upstream_status == 200:
            overhead = answered - upstream if answered > upstream else 0
            self._observe("sluice_gateway_overhead_seconds", "", overhead)

    def count(self, name: str, *labels: str, n: int = 1) -> None:
        """Count a routing event (``name`` from ``ROUTING``, with its labels), ``n`` times."""
        key = (name, *labels)
        self._routing[key] = self._routing.get(key, 0) + n

    # --- sharing between workers ------------------------------------------------------------------------

    def totals(self) -> Totals:
        """This process's values, JSON-ready."""
        return {
            "counts": [[*key, *row] for key, row in self._counts.items()],
            "hists": {name: dict(series) for name, series in self._hists.items()},
            "refusals": dict(self._refusals),
            "routing": [[*key, count] for key, count in self._routing.items()],
        }

    def _write_share(self) -> None:
        if self._shared is None:
            return
        path = self._shared / f"{os.getpid()}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(self.totals()))
        tmp.replace(path)  # a reader sees the old totals or the new ones, never half

    def all_totals(self) -> list[Totals]:
        """Every worker's totals (this one's fresh), or just this process's."""
        if self._shared is None:
            return [self.totals()]
        self._write_share()
        out: list[Totals] = []
        for path in self._shared.glob("*.json"):
            with contextlib.suppress(OSError, orjson.JSONDecodeError):
                out.append(orjson.loads(path.read_bytes()))
        return out

    async def start(self) -> None:
        """With a shared directory: write this worker's totals every second."""
        if self._shared is not None and self._task is None:
            self._task = asyncio.create_task(self._share_loop(), name="sluice-metrics")

    async def _share_loop(self) -> None:
        while True:
            await asyncio.sleep(SHARE_EVERY_S)
            try:
                self._write_share()
            except OSError:
                log.warning("could not write this worker's metrics", exc_info=True)

    async def close(self) -> None:
        """Write the final totals and stop."""
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        with contextlib.suppress(OSError):
            self._write_share()

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)


class _Families:
    """A prometheus-client collector that turns the totals into metric families at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        counts: dict[tuple[str, ...], list[int]] = {}
        hists: dict[str, dict[str, list[int]]] = {name: {} for name in _HISTOGRAMS}
        refusals: dict[str, int] = {}
        routing: dict[tuple[str, ...], int] = {}
        for totals in self._metrics.all_totals():
            for record in totals["counts"]:
                _add(counts.setdefault(tuple(record[:4]), [0] * _WIDTH), record[4:])
            for name, series in totals["hists"].items():
                for label, values in series.items():
                    _add(hists[name].setdefault(label, [0] * len(values)), values)
            for code, count in totals.get("refusals", {}).items():
                refusals[code] = refusals.get(code, 0) + count
            for *key, count in totals.get("routing", []):
                routing[tuple(key)] = routing.get(tuple(key), 0) + count
        yield from _counter_families(counts)
        refused = CounterMetricFamily(
            "sluice_refusals",
            "Requests refused before reaching a provider, by code (budget_exceeded, user_quota_exceeded, "
            "rate_limit_exceeded, concurrency_limit_exceeded, counters_unavailable, model_unpriced).",
            labels=["code"],
        )
        for code, count in sorted(refusals.items()):
            refused.add_metric([code], count)
        yield refused
        for name, (metric, help_text, labels) in ROUTING.items():
            counter = CounterMetricFamily(metric, help_text, labels=list(labels))
            for key, count in sorted(routing.items()):
                if key[0] == name:
                    counter.add_metric(list(key[1:]), count)
            yield counter
        for name, (help_text, label, bounds) in _HISTOGRAMS.items():
            family = HistogramMetricFamily(name, help_text, labels=[label] if label else [])
            for value, series in sorted(hists[name].items()):
                cumulative, buckets = 0, []
                for bound, count in zip((*bounds, None), series[:-1], strict=True):
                    cumulative += count
                    buckets.append(("+Inf" if bound is None else str(bound / 1_000_000), cumulative))
                family.add_metric([value] if label else [], buckets, series[-1] / 1_000_000)
            yield family


def _add(into: list[int], values: list[int]) -> None:
    for i, v in enumerate(values):
        into[i] += v


def _counter_families(counts: dict[tuple[str, ...], list[int]]) -> Iterator[Metric]:
    labels = ["alias", "provider", "feature"]
    requests = CounterMetricFamily("sluice_requests", "Requests settled.", labels=[*labels, "status"])
    tokens = CounterMetricFamily("sluice_tokens", "Tokens used, by class.", labels=[*labels, "class"])
    cost = CounterMetricFamily(
        "sluice_cost_nanodollars", "Cost charged, in nano-dollars (1e-9 USD).", labels=labels
    )
    by_scope: dict[tuple[str, ...], list[int]] = {}
    for key, row in sorted(counts.items()):
        requests.add_metric(list(key), row[0])
        _add(by_scope.setdefault(key[:3], [0] * _WIDTH), row)
    for scope, row in by_scope.items():
        for i, name in enumerate(_TOKEN_CLASSES, start=1):
            if row[i]:
                tokens.add_metric([*scope, name], row[i])
        if row[-1]:
            cost.add_metric(list(scope), row[-1])
    yield from (requests, tokens, cost)


def share_between_workers(directory: Path) -> None:
    """Before starting several workers: an empty directory where each writes its totals."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    os.environ[SHARED_ENV] = str(directory)
