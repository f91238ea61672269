"""The settings of logs and traces (sections `logs` and `tracing` of the settings tree)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

from llmservice.kernel.settings import Section


class LogSettings(Section):
    format: Literal["text", "json", "kv"] = Field("text", description="json: JSON lines; kv: key=value")
    payloads: bool = Field(
        False, description="debug: log request and reply payloads (secrets are redacted even then)"
    )


class TracingSettings(Section):
    """OpenTelemetry tracing (the `tracing` extra), from the standard OTEL_* variables."""

    exporter: Literal["none", "otlp", "console"] = Field(
        "none", description="OTEL_TRACES_EXPORTER; none: tracing off, nothing of it is imported"
    )
    sdk_disabled: bool = False
    service_name: str = "llmservice"
    resource_attributes: str = Field("", description="key=value,key=value")
    endpoint: str = Field("", description="the collector's base URL; /v1/traces is added")
    traces_endpoint: str = Field("", description="the full traces URL; wins over endpoint")
    headers: SecretStr | None = Field(None, description="key=value,key=value sent with each export")
    traces_headers: SecretStr | None = None
    timeout_ms: int = Field(10000, gt=0)
    sample_ratio: float = Field(1.0, ge=0, le=1, description="of new traces; a caller's decision is kept")

    @property
    def enabled(self) -> bool:
        return self.exporter != "none" and not self.sdk_disabled
