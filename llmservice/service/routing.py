"""Fallback routes: one model name served by an ordered list of deployments.

A request for the route's model goes to the first deployment that is not cooling
down. If it fails before its first event with an error another deployment might not
have (down, rate-limited, timed out, credentials rejected), that deployment cools
down for a while and the next one is tried. A bad request is not retried elsewhere,
and once an event has reached the caller nothing is: the caller sees the failure.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import replace

from llmservice.kernel.errors import (
    DeadlineExceeded,
    LLMServiceError,
    ProviderAuthFailed,
    ResourceExhausted,
    Unavailable,
)
from llmservice.kernel.provider import Provider
from llmservice.kernel.types import Capabilities, ChatRequest, Completion, ModelInfo, StreamEnd, StreamEvent

log = logging.getLogger(__name__)

# Failures that say something about the deployment, not about the request.
FALLBACK_ON: tuple[type[LLMServiceError], ...] = (
    Unavailable,
    ResourceExhausted,
    DeadlineExceeded,
    ProviderAuthFailed,
)


class FallbackRoute(Provider):
    def __init__(
        self,
        model: str,
        members: Sequence[Provider],
        *,
        cooldown_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = f"route {model}"
        self._model = model
        self.members = list(members)
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._cool_until: dict[str, float] = {}
        self.fallbacks = 0  # times a request moved on to the next deployment
        # Whichever deployment answers must honour the request: what all of them can.
        self.raw_prompts = all(m.raw_prompts for m in self.members)
        self.strict_tools = all(m.strict_tools for m in self.members)

    @property
    def default_model(self) -> str:
        return self._model

    def counters(self) -> Mapping[str, int]:
        return {"fallbacks": self.fallbacks}

    def health(self) -> bool | None:
        """Up while any deployment that watches its connection is (None: none does)."""
        known = [h for h in (m.health() for m in self.members) if h is not None]
        return any(known) if known else None

    async def list_models(self) -> list[ModelInfo]:
        """The route as one model, its deployments asked at once. ListModels does not call
        this: it describes the route from the answers the registry got of its deployments
        in the same listing (bounded, see service/listing.py), asking none of them twice."""
        return [self.describe(await asyncio.gather(*(m.list_models() for m in self.members)))]

    def describe(self, listings: Sequence[Sequence[ModelInfo]]) -> ModelInfo:
        """The route as one model, from each deployment's models (in route order): able to
        do what every one of them can with the model it serves the route with."""
        capabilities = [_capabilities(m, listed) for m, listed in zip(self.members, listings, strict=True)]
        both = Capabilities(
            *(all(getattr(c, f) for c in capabilities) for f in Capabilities.__dataclass_fields__)
        )
        return ModelInfo(self._model, "route", capabilities=both)

    def validate(self, model: str, request: ChatRequest) -> None:
        """Refuse what any deployment would refuse: whichever answers must honour the request."""
        for member in self.members:
            member.validate(member.default_model, request)

    async def stream(self, model: str, request: ChatRequest) -> AsyncGenerator[StreamEvent]:
        failures: list[LLMServiceError] = []
        for member in self._in_order():
            events = member.stream(member.default_model, request)
            try:
                first = await anext(events)
            except StopAsyncIteration:
                return
            except FALLBACK_ON as exc:
                await events.aclose()
                failures.append(self._failed(member, exc))
                continue
            try:
                yield _served_by(first, member)
                async for event in events:
                    yield _served_by(event, member)
            finally:
                await events.aclose()
            return
        raise self._exhausted(failures)

    async def complete(self, model: str, request: ChatRequest) -> Completion:
        failures: list[LLMServiceError] = []
        for member in self._in_order():
            try:
                completion = await member.complete(member.default_model, request)
            except FALLBACK_ON as exc:
                failures.append(self._failed(member, exc))
                continue
            return replace(completion, model=self._model)
        raise self._exhausted(failures)

    async def count_tokens(self, model: str, request: ChatRequest) -> int:
        """As the deployment a chat would go to now counts them."""
        member = self._in_order()[0]
        return await member.count_tokens(member.default_model, request)

    def _in_order(self) -> list[Provider]:
        """Deployments not cooling down, in route order; all of them if every one is."""
        now = self._clock()
        ready = [m for m in self.members if self._cool_until.get(m.name, 0.0) <= now]
        return ready or list(self.members)

    def _failed(self, member: Provider, exc: LLMServiceError) -> LLMServiceError:
        log.warning(
            "route %s: %s failed (%s); cooling it down for %gs",
            self._model,
            member.name,
            exc.message,
            self._cooldown_s,
        )
        self._cool_until[member.name] = self._clock() + self._cooldown_s
        self.fallbacks += 1
        return exc

    def _exhausted(self, failures: Sequence[LLMServiceError]) -> LLMServiceError:
        """One error for a route whose every deployment failed: of the kind they all share
        (all timed out: DEADLINE_EXCEEDED; all rate limited: RESOURCE_EXHAUSTED, the soonest
        hint; all rejected the credentials: FAILED_PRECONDITION), else UNAVAILABLE."""
        detail = f"; the last said: {failures[-1].message}" if failures else ""
        message = f"every deployment of {self._model} failed{detail}"
        hints = [f.retry_after_s for f in failures if f.retry_after_s is not None]
        retry = min(hints) if hints else None
        kinds = {type(f) for f in failures}
        shared = kinds.pop() if len(kinds) == 1 else None  # e.g. BudgetExhausted: its kind trailer kept
        for kind in (DeadlineExceeded, ResourceExhausted, ProviderAuthFailed):
            if failures and all(isinstance(f, kind) for f in failures):
                error = (shared or kind)(message)
                error.retry_after_s = None if kind is ProviderAuthFailed else retry
                return error
        return Unavailable(message, retry_after_s=retry)


def _served_by(event: StreamEvent, member: Provider) -> StreamEvent:
    return replace(event, provider=member.name) if isinstance(event, StreamEnd) else event


def _capabilities(member: Provider, listed: Sequence[ModelInfo]) -> Capabilities:
    for info in listed:
        if info.id == member.default_model:
            return info.capabilities
    return Capabilities()
