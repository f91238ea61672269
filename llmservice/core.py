"""The service core: validate a request, pick its provider, run it. Surfaces call only this."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass

from providers import Provider

from .auth import LOCAL, Principal
from .errors import NotFound
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

    async def complete(self, request: ChatRequest, principal: Principal = LOCAL) -> Completion:
        provider, model = self._route(request, principal)
        return await provider.complete(model, request)

    def stream(self, request: ChatRequest, principal: Principal = LOCAL) -> Stream:
        """Check and route before anything runs, so errors come before the first event."""
        provider, model = self._route(request, principal)
        return Stream(provider.name, model, provider.stream(model, request))

    def _route(self, request: ChatRequest, principal: Principal) -> tuple[Provider, str]:
        validate(request)
        try:
            provider, model = self._registry.resolve(request.provider, request.model)
            if not principal.may_use(provider.name, model):
                raise NotFound("hidden")
            provider.validate(model, request)
        except NotFound:
            if principal is LOCAL:
                raise
            # A model the caller may not use looks exactly like one that does not exist.
            raise NotFound(f"model {request.model or 'default'!r} not found") from None
        return provider, model

    async def list_models(self, principal: Principal = LOCAL) -> list[ModelInfo]:
        return [m for m in await self._registry.list_models() if principal.may_use(m.provider, m.id)]
