"""The service core: validate a request, pick its provider, run it. Surfaces call only this."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass

from providers import Provider

from .registry import ProviderRegistry
from .types import ChatRequest, Completion, ModelInfo, StreamEvent
from .validation import validate


@dataclass(frozen=True, slots=True)
class Stream:
    """A started generation: who serves it, and its events."""

    provider: str
    model: str
    events: AsyncGenerator[StreamEvent]


class LLMCore:
    def __init__(self, registry: ProviderRegistry) -> None:
        self._registry = registry

    async def complete(self, request: ChatRequest) -> Completion:
        provider, model = self._route(request)
        return await provider.complete(model, request)

    def stream(self, request: ChatRequest) -> Stream:
        """Check and route before anything runs, so errors come before the first event."""
        provider, model = self._route(request)
        return Stream(provider.name, model, provider.stream(model, request))

    def _route(self, request: ChatRequest) -> tuple[Provider, str]:
        validate(request)
        provider, model = self._registry.resolve(request.provider, request.model)
        provider.validate(model, request)
        return provider, model

    async def list_models(self) -> list[ModelInfo]:
        return await self._registry.list_models()
