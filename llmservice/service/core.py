"""The service core: validate a request, pick its provider, run it. Surfaces call only this."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, replace

from llmservice.kernel.embedding import Embeddings, EmbedRequest, Vector, validate_embed
from llmservice.kernel.errors import InvalidRequest, LLMServiceError, NotFound, Unavailable
from llmservice.kernel.provider import Provider
from llmservice.kernel.types import (
    ChatRequest,
    Completion,
    ModelInfo,
    StreamEvent,
    ToolCallDelta,
    Usage,
)
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

    @property
    def default_provider(self) -> str:
        """The provider a request naming none goes to."""
        return self._registry.default

    def serves(self, provider: str) -> bool:
        """Whether a provider of that name is configured here (whoever may use it)."""
        return self._registry.has(provider)

    def using(self, provider: Provider) -> LLMCore:
        """This core serving from `provider` alone (a chat session's own), its limits shared:
        the same checks, routing by principal, usage and budgets as every other request."""
        registry = ProviderRegistry({provider.name: provider}, provider.name)
        return LLMCore(registry, None, self._max_inputs, self.limits)

    async def complete(self, request: ChatRequest, principal: Principal = LOCAL) -> Completion:
        provider, model = self._route(request, principal)
        request = _as(request, principal)
        try:
            async with self.limits.chat(principal, provider.name, model, request) as ticket:
                completion = await provider.complete(model, request)
                ticket.used(completion.usage, completion.provider)
            if request.parallel_tool_calls is False and len(completion.tool_calls) > 1:
                completion = replace(completion, tool_calls=completion.tool_calls[:1])
        except LLMServiceError as exc:
            exc.provider = exc.provider or provider.name
            raise
        return completion

    def stream(self, request: ChatRequest, principal: Principal = LOCAL) -> Stream:
        """Check and route before anything runs, so errors come before the first event."""
        provider, model = self._route(request, principal)
        request = _as(request, principal)
        events = provider.stream(model, request)
        if request.parallel_tool_calls is False:
            events = _one_tool_call(events)
        events = self.limits.metered(principal, provider.name, model, request, events)
        return Stream(provider.name, model, events)

    async def count_tokens(self, request: ChatRequest, principal: Principal = LOCAL) -> tuple[str, str, int]:
        """(provider, model, the prompt's size in tokens), checked and routed as a chat is."""
        provider, model = self._route(request, principal)
        try:
            return provider.name, model, await provider.count_tokens(model, _as(request, principal))
        except LLMServiceError as exc:
            exc.provider = exc.provider or provider.name
            raise

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

        def check(provider: Provider, model: str) -> None:
            _supported(provider, request)
            provider.validate(model, request)

        return self._resolve(request.provider, request.model, principal, check)

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

    def providers_for(self, principal: Principal) -> list[str]:
        """The configured providers whose default model the caller may use, the default
        provider first; asks none of them."""
        return [name for name in self._registry.names() if self.may_use(principal, name, "")]

    def may_use(self, principal: Principal, provider: str, model: str) -> bool:
        """Whether the caller may use `model` (empty: its default) of configured `provider`."""
        found, model = self._registry.resolve(provider, model)
        return principal.may_use(found.name, model)

    async def lists(self, provider: str, model: str) -> bool | None:
        """Whether configured `provider` lists `model`; None when it did not answer in time
        (listing.timeout_s). Asks that provider only, as ListModels would (cached alike)."""
        return await self._registry.lists(provider, model)


def _supported(provider: Provider, request: ChatRequest) -> None:
    """Refuse what the provider cannot honour of the requests only some providers take."""
    if request.raw_prompt is not None and not provider.raw_prompts:
        raise InvalidRequest(
            "prompt", f"provider {provider.name} has no raw completion (no chat template); use chat"
        )
    if not provider.strict_tools:
        for i, tool in enumerate(request.tools):
            if tool.strict:
                raise InvalidRequest(
                    f"tools[{i}].strict", f"provider {provider.name} cannot hold tool calls to their schema"
                )


async def _one_tool_call(events: AsyncGenerator[StreamEvent]) -> AsyncGenerator[StreamEvent]:
    """parallel_tool_calls false, whatever the provider did: the first call only."""
    async with contextlib.aclosing(events) as running:
        async for event in running:
            if not (isinstance(event, ToolCallDelta) and event.index > 0):
                yield event


def _as(request: ChatRequest, principal: Principal) -> ChatRequest:
    """The request as the authenticated principal's, whatever a surface put in `principal`:
    providers partition their prompt caches by it, so only the core may say who asks."""
    return request if request.principal == principal.name else replace(request, principal=principal.name)
