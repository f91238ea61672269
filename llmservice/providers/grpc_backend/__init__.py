"""The `grpc` provider: another LLMService (a second llmservice, or a plugin) as a backend."""

from __future__ import annotations

from typing import Any

from llmservice.kernel.provider import Provider, ProviderEntry
from llmservice.providers.grpc_backend.settings import GrpcBackendSettings

__all__ = ["ENTRIES", "GrpcBackendSettings", "build"]


def build(settings: Any, name: str) -> Provider:
    from llmservice.providers.grpc_backend.provider import GrpcBackend

    return GrpcBackend(settings, name)


ENTRIES = (
    ProviderEntry(
        kind="grpc",
        title="another LLMService over gRPC: a replica or a plugin (llmservice.v1 or protocol)",
        settings=GrpcBackendSettings,
        factory=build,
        env={"LLM_GRPC_TARGET": "target", "LLM_GRPC_API_KEY": "api_key", "LLM_GRPC_MODEL": "model"},
    ),
)
