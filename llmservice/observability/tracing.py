"""OpenTelemetry tracing (the `tracing` extra): imported only when tracing is on.

One `Tracing` per application instance: its own TracerProvider (never the global one,
so several services in one process keep their spans apart), exporting as the standard
OTEL_* variables say (read by llmservice.service.settings, passed here explicitly). Trace
context travels as W3C `traceparent`: extracted from the caller (HTTP headers, gRPC
metadata), put into `context.OUTGOING` for the next hop (the shim's gRPC metadata, the
remote backends' HTTP requests), and, because each request's span is the current
OpenTelemetry context, into MCP tool calls' `_meta` by the MCP SDK itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import unquote

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio
from opentelemetry.trace import Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from llmservice.kernel.context import OUTGOING, Headers
from llmservice.observability.settings import TracingSettings

_PROPAGATOR = TraceContextTextMapPropagator()  # stateless: one for every instance is fine


class Tracing:
    """Spans for this application instance."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self._tracer = provider.get_tracer("llmservice")

    @classmethod
    def create(cls, settings: TracingSettings, exporter: SpanExporter | None = None) -> Tracing:
        """From the settings; `exporter` (tests: an in-memory one) replaces the configured one."""
        resource = Resource({"service.name": settings.service_name, **_pairs(settings.resource_attributes)})
        provider = TracerProvider(resource=resource, sampler=ParentBasedTraceIdRatio(settings.sample_ratio))
        if exporter is not None:
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        elif settings.exporter == "console":
            provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        else:
            provider.add_span_processor(BatchSpanProcessor(_otlp(settings)))
        return cls(provider)

    @contextlib.contextmanager
    def span(
        self, name: str, carrier: Mapping[str, str], attributes: Mapping[str, Any], kind: SpanKind
    ) -> Iterator[Span]:
        """A span for the block, child of the caller's `traceparent` in `carrier`, made current."""
        parent = _PROPAGATOR.extract(carrier)
        with self._tracer.start_as_current_span(name, parent, kind, dict(attributes)) as span:
            yield span

    @contextlib.contextmanager
    def child(self, name: str, attributes: Mapping[str, Any]) -> Iterator[Span]:
        """A span for the block, child of the current one (a step inside a call), made current;
        the next hop's headers carry it for the block."""
        with self._tracer.start_as_current_span(name, attributes=dict(attributes)) as span:
            kept = tuple((k, v) for k, v in OUTGOING.get() if k not in ("traceparent", "tracestate"))
            token = OUTGOING.set((*kept, *self.traceparent()))
            try:
                yield span
            finally:
                with contextlib.suppress(ValueError):  # closed from another context: nothing to undo
                    OUTGOING.reset(token)

    def traceparent(self) -> Headers:
        """The current span's context as headers for the next hop."""
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier)
        return tuple(carrier.items())

    def shutdown(self) -> None:
        """Export what is pending and stop."""
        self.provider.shutdown()


def _otlp(settings: TracingSettings) -> SpanExporter:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    endpoint = settings.traces_endpoint or (
        settings.endpoint.rstrip("/") + "/v1/traces"
        if settings.endpoint
        else "http://localhost:4318/v1/traces"
    )
    headers = {
        **_pairs(settings.headers.get_secret_value() if settings.headers else ""),
        **_pairs(settings.traces_headers.get_secret_value() if settings.traces_headers else ""),
    }
    return OTLPSpanExporter(endpoint=endpoint, headers=headers, timeout=settings.timeout_ms / 1000)


def _pairs(text: str) -> dict[str, str]:
    """`k=v,k2=v2` (the OTEL_* list format, values URL-encoded) as a dict."""
    pairs = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            pairs[key.strip()] = unquote(value.strip())
    return pairs


def from_settings(settings: TracingSettings) -> Tracing | None:
    return Tracing.create(settings) if settings.enabled else None
