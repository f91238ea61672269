"""Logs and traces: one request id per request, structured log lines with secrets redacted,
and OpenTelemetry spans when the `tracing` extra is installed and tracing is on.

`context` holds what a request carries across layers (its id, the headers for the next
hop); `logs` formats and redacts; `grpc_context` sets both up for each gRPC call;
`tracing` is imported only when tracing is on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmservice.kernel.settings import SettingsError
from llmservice.observability.settings import TracingSettings

if TYPE_CHECKING:
    from llmservice.observability.tracing import Tracing


def tracing_for(settings: TracingSettings) -> Tracing | None:
    """The instance's tracing when it is on (importing OpenTelemetry only then), else None."""
    if not settings.enabled:
        return None
    try:
        from llmservice.observability.tracing import Tracing
    except ImportError as exc:
        raise SettingsError(
            f"tracing.exporter={settings.exporter} [env OTEL_TRACES_EXPORTER] needs the tracing extra: "
            f"pip install 'llmservice[tracing]' ({exc})"
        ) from None
    return Tracing.create(settings)
