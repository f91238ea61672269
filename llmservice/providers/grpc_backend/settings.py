"""The `grpc` provider's settings: section `[grpc]` (or a deployment of kind `grpc`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr

from llmservice.providers.remote.settings import RemoteSettings


class GrpcBackendSettings(RemoteSettings):
    """Another service speaking `llmservice.v1.LLMService` or the published
    `protocol.LLMService`: a second llmservice (a GPU replica), or a plugin."""

    target: str = Field("", description="host:port of the backend's gRPC server")
    tls: bool = Field(False, description="TLS to the backend (the system's roots, or ca_file)")
    ca_file: Path | None = Field(None, description="PEM roots to trust for the backend's certificate")
    api_key: SecretStr | None = Field(None, description="sent as `authorization: Bearer ...` on each call")
    service: Literal["auto", "llmservice.v1", "protocol"] = Field(
        "auto", description="the service it speaks; auto asks its reflection"
    )
    model: str = Field("", description="default model; unset: the first of `models`, else the first listed")
    models: list[str] = Field(
        default_factory=list,
        description="the models it serves (protocol.LLMService has no ListModels); unset: as listed",
    )
    start_when_down: bool = Field(
        True, description="start while the backend cannot be reached (its model set); off: fail to start"
    )
    backend_provider: str = Field("", description="the backend's provider to ask; unset: its default")

    def missing(self) -> list[str]:
        return [] if self.target else ["target"]
