"""Prometheus metrics of one service: a registry of its own, served on the metrics port.

Counters and histograms move where a call ends (the servicer); what the service already
counts elsewhere (scheduler queues, engine preemptions, embedding cache, chat sessions)
is read when Prometheus scrapes, by collectors, so nothing extra runs per token.

Labels carry no secrets and no user text: provider and model are the ones a call was
routed to (configured names; "" when a call failed before routing), never the model
string a caller sent; surface is grpc or http (the shim says so in its metadata).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from llmservice.kernel.provider import Provider
from llmservice.kernel.scheduler import Scheduler

SURFACE_KEY = "llm-surface"  # gRPC metadata: which surface a call came through
SURFACES = frozenset({"grpc", "http"})
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)  # seconds
_RATES = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


class ServiceMetrics:
    """Every metric of one service instance, in `registry`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "llmservice_requests",
            "LLM calls ended, by method, surface, provider, model and gRPC status code",
            ["method", "surface", "provider", "model", "code"],
            registry=r,
        )
        self.duration = Histogram(
            "llmservice_request_duration_seconds",
            "Time from a call's start to its end (a stream's last chunk)",
            ["method", "provider", "model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.first_token = Histogram(
            "llmservice_time_to_first_token_seconds",
            "Time from a stream's start to its first token",
            ["provider", "model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "llmservice_generated_tokens",
            "Tokens generated (completion tokens)",
            ["provider", "model"],
            registry=r,
        )
        self.token_rate = Histogram(
            "llmservice_stream_tokens_per_second",
            "A finished stream's tokens per second, from its first token to its last",
            ["provider", "model"],
            buckets=_RATES,
            registry=r,
        )

    def watch(self, collector: Collector) -> None:
        """Add a collector read at scrape time."""
        self.registry.register(collector)


def surface_of(metadata: Iterable[tuple[str, str | bytes]]) -> str:
    for key, value in metadata:
        if key == SURFACE_KEY and value in SURFACES:
            return str(value)
    return "grpc"


class SchedulerCollector(Collector):
    """Queue depth and waits per priority of every scheduler, read at scrape time."""

    def __init__(self, schedulers: Callable[[], Iterable[tuple[str, Scheduler]]]) -> None:
        self._schedulers = schedulers  # (provider, scheduler), asked again at each scrape

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "llmservice_queue_depth", "Calls waiting for a slot, by priority", labels=["provider", "priority"]
        )
        waited = CounterMetricFamily(
            "llmservice_queue_wait_seconds",
            "Time calls waited for a slot, by priority (sum over all calls admitted)",
            labels=["provider", "priority"],
        )
        admitted = CounterMetricFamily(
            "llmservice_queue_admitted", "Calls given a slot, by priority", labels=["provider", "priority"]
        )
        shed = CounterMetricFamily(
            "llmservice_queue_shed",
            "Calls refused or dropped because the queue was full",
            labels=["provider", "priority"],
        )
        expired = CounterMetricFamily(
            "llmservice_queue_expired",
            "Calls whose deadline passed while they waited",
            labels=["provider", "priority"],
        )
        for provider, scheduler in self._schedulers():
            for priority, stats in sorted(scheduler.queue.stats.items()):
                labels = [provider, str(priority)]
                depth.add_metric(labels, stats.depth)
                waited.add_metric(labels, stats.wait_total_s)
                admitted.add_metric(labels, stats.admitted)
                shed.add_metric(labels, stats.shed)
                expired.add_metric(labels, stats.expired)
        yield from (depth, waited, admitted, shed, expired)


# What providers count by themselves (Provider.counters), by name: (metric, help). A name not
# listed here is exported as llmservice_provider_NAME_total.
PROVIDER_COUNTERS: dict[str, tuple[str, str]] = {
    "preemptions": ("llmservice_engine_preemptions_total", "Running sequences paused for a more urgent one"),
    "evictions": ("llmservice_engine_evictions_total", "Paused sequences whose cache was dropped"),
    "interruptions": ("llmservice_engine_interruptions_total", "Decode steps stopped for a more urgent job"),
    "fallbacks": ("llmservice_route_fallbacks_total", "Requests a route moved on to its next deployment"),
    "prompt_tokens_computed": ("llmservice_prompt_tokens_computed_total", "Prompt tokens the engine decoded"),
    "prompt_tokens_reused": ("llmservice_prompt_tokens_reused_total", "Prompt tokens served from cache"),
    "prompt_cache_hits": ("llmservice_prompt_cache_hits_total", "Requests that reused a cached prefix"),
    "prompt_cache_misses": ("llmservice_prompt_cache_misses_total", "Requests that reused no cached prefix"),
    "prompt_cache_evictions": (
        "llmservice_prompt_cache_evictions_total",
        "Finished caches that left the context (to host memory, or dropped)",
    ),
    "prompt_cache_host_evictions": (
        "llmservice_prompt_cache_host_evictions_total",
        "Caches dropped from host memory to stay in llamacpp.prompt_cache_mb",
    ),
    "warm_tokens_computed": (
        "llmservice_prompt_tokens_warmed_total",
        "Tokens prefilled while idle so that a conversation's next turn finds them cached",
    ),
    "prompt_cache_host_bytes": ("llmservice_prompt_cache_host_bytes", "Host memory held by prompt caches"),
    "retries": ("llmservice_provider_retries_total", "Upstream calls retried after a retryable failure"),
}


def provider_readings(
    providers: Iterable[tuple[str, Provider]],
) -> Iterator[tuple[str, str, dict[str, str], float]]:
    """What each provider counts by itself (engine preemptions, route fallbacks, retries), what
    it measures (where the local engine's models run) and, for one that watches its
    connection, whether it is up."""
    for name, provider in providers:
        for counter, value in provider.counters().items():
            metric, doc = PROVIDER_COUNTERS.get(counter) or (f"llmservice_provider_{counter}_total", counter)
            yield metric, doc, {"provider": name}, value
        for gauge, gauge_doc, labels, reading in provider.gauges():
            yield gauge, gauge_doc, {"provider": name, **labels}, reading
        up = provider.health()
        if up is not None:
            doc = "1 while the provider's connection is up, 0 while it cannot be reached (grpc backends)"
            yield "llmservice_provider_up", doc, {"provider": name}, float(up)


class CountersCollector(Collector):
    """Counters other parts keep as plain numbers (engine, cache, sessions), read at scrape time."""

    def __init__(self, read: Callable[[], Iterable[tuple[str, str, dict[str, str], float]]]) -> None:
        """`read()` yields (name, help, labels, value); a name ending in _total is a counter."""
        self._read = read

    def collect(self) -> Iterator[Metric]:
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
        for name, doc, labels, value in self._read():
            family = families.get(name)
            if family is None:
                if name.endswith("_total"):
                    family = CounterMetricFamily(name.removesuffix("_total"), doc, labels=list(labels))
                else:
                    family = GaugeMetricFamily(name, doc, labels=list(labels))
                families[name] = family
            family.add_metric(list(labels.values()), value)
        yield from families.values()


@contextlib.contextmanager
def served(registry: CollectorRegistry, host: str, port: int) -> Iterator[int]:
    """Prometheus's /metrics of `registry` on host:port (0: a free port) for the block; yields
    the port (-1, serving nothing, when `port` is negative)."""
    if port < 0:
        yield -1
        return
    http, thread = start_http_server(port, host, registry=registry)
    try:
        yield http.server_port
    finally:
        http.shutdown()
        http.server_close()
        thread.join(5)
