"""The service core: validate a request, pick its provider, run it. Surfaces call only this."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, replace

from llmservice.kernel.embedding import Embeddings, EmbedRequest, Vector, validate_embed
from llmservice.kernel.errors import LLMServiceError, NotFound, Unavailable
from llmservice.kernel.provider import Provider
from llmservice.kernel.types import ChatRequest, Completion, ModelInfo, StreamEvent, Usage
from llmservice.service.auth import LOCAL, Principal
from llmservice.service.embed_cache import EmbeddingCache, cache_key
from llmservice.service.limits import Limits
from llmservice.service.registry import ProviderRegistry
from llmservice.service.validation import validate


@dataclass(frozen=True, slots=True)
class Stream:
    """A started generation: who serves it, and its events."""

    provider: str
    model: str
    events: AsyncGenerator[StreamEvent]


class LLMCore:
    def __init__(
        self,
        registry: ProviderRegistry,
        embed_cache: EmbeddingCache | None = None,
        max_inputs: int = 2048,
        limits: Limits | None = None,
    ) -> None:
        self._registry = registry
        self.embed_cache = embed_cache
        self._max_inputs = max_inputs
        self.limits = limits or Limits.unlimited()  # usage, budgets, rate limits

    async def complete(self, request: ChatRequest, principal: Principal = LOCAL) -> Completion:
        provider, model = self._route(request, principal)
        request = _as(request, principal)
        try:
            async with self.limits.chat(principal, provider.name, model, request) as ticket:
                completion = await provider.complete(model, request)
                ticket.used(completion.usage, completion.provider)
        except LLMServiceError as exc:
            exc.provider = exc.provider or provider.name
            raise
        return completion

    def stream(self, request: ChatRequest, principal: Principal = LOCAL) -> Stream:
        """Check and route before anything runs, so errors come before the first event."""
        provider, model = self._route(request, principal)
        request = _as(request, principal)
        events = provider.stream(model, request)
        events = self.limits.metered(principal, provider.name, model, request, events)
        return Stream(provider.name, model, events)

    async def embed(self, request: EmbedRequest, principal: Principal = LOCAL) -> Embeddings:
        """One vector per input: from the cache where it has them, from the provider for the rest."""
        validate_embed(request, self._max_inputs)
        provider, model = self._resolve(request.provider, request.model, principal)
        async with self.limits.embedding(principal, provider.name, model, request.input) as ticket:
            embeddings = await self._embed(provider, model, request)
            ticket.used(Usage(embeddings.prompt_tokens, 0))
        return embeddings

    async def _embed(self, provider: Provider, model: str, request: EmbedRequest) -> Embeddings:
        cache = self.embed_cache
        keys = [cache_key(provider.name, model, request.dimensions, t) for t in request.input]
        found: dict[bytes, Vector] = await cache.get(keys) if cache else {}
        missing = [i for i, key in enumerate(keys) if key not in found]
        tokens = 0
        if missing:
            texts = tuple(request.input[i] for i in missing)
            subset = replace(request, input=texts, positions=tuple(missing))
            result = await provider.embed(model, subset)
            if len(result.vectors) != len(missing):
                raise Unavailable(
                    f"provider {provider.name} returned {len(result.vectors)} embeddings "
                    f"for {len(missing)} inputs"
                )
            fresh = {keys[i]: v for i, v in zip(missing, result.vectors, strict=True)}
            if cache:
                await cache.put(fresh)
            found = {**found, **fresh}
            tokens = result.prompt_tokens
        vectors = tuple(found[key] for key in keys)
        return Embeddings(vectors, model, provider.name, tokens, cached=len(keys) - len(missing))

    def _route(self, request: ChatRequest, principal: Principal) -> tuple[Provider, str]:
        validate(request)
        return self._resolve(request.provider, request.model, principal, lambda p, m: p.validate(m, request))

    def _resolve(
        self,
        provider_name: str,
        model_name: str,
        principal: Principal,
        check: Callable[[Provider, str], None] | None = None,
    ) -> tuple[Provider, str]:
        try:
            provider, model = self._registry.resolve(provider_name, model_name)
            if not principal.may_use(provider.name, model):
                raise NotFound("hidden")
            if check is not None:
                check(provider, model)
        except NotFound:
            if principal is LOCAL:
                raise
            # A model the caller may not use looks exactly like one that does not exist.
            raise NotFound(f"model {model_name or 'default'!r} not found") from None
        return provider, model

    async def list_models(self, principal: Principal = LOCAL) -> list[ModelInfo]:
        return [m for m in await self._registry.list_models() if principal.may_use(m.provider, m.id)]


def _as(request: ChatRequest, principal: Principal) -> ChatRequest:
    """The request as the authenticated principal's, whatever a surface put in `principal`:
    providers partition their prompt caches by it, so only the core may say who asks."""
    return replace(request, principal=principal.name)
