"""One /metrics for every worker: the supervisor reads each worker's own (on a loopback port
of its own) at scrape time and serves them together, each series labelled `worker`.

prometheus_client's multiprocess mode was the alternative; it cannot carry the collectors
that read live state at scrape time (schedulers, providers, sessions), which are most of
what the service reports.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

SCRAPE_TIMEOUT_S = 2.0


class WorkerMetrics:
    """A collector over the workers' /metrics: `workers` is (index, URL) for each."""

    def __init__(self, workers: Sequence[tuple[int, str]]) -> None:
        self._workers = list(workers)

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        up = GaugeMetricFamily(
            "llmservice_worker_up", "Whether a worker answered this scrape", labels=["worker"]
        )
        for index, url in self._workers:
            try:
                with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as reply:  # a loopback URL
                    text = reply.read().decode()
            except OSError:
                up.add_metric([str(index)], 0)
                continue
            up.add_metric([str(index)], 1)
            for family in text_string_to_metric_families(text):
                into = merged.setdefault(
                    family.name, Metric(family.name, family.documentation, family.type, family.unit)
                )
                into.samples += [
                    Sample(s.name, {**s.labels, "worker": str(index)}, s.value, s.timestamp, s.exemplar)
                    for s in family.samples
                ]
        yield up
        yield from merged.values()


def registry_of(metrics: WorkerMetrics) -> CollectorRegistry:
    """A registry holding only `metrics` (observability.metrics.served serves it)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    return registry
