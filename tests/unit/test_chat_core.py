"""LLMCore.complete and .stream tell the provider who asks: the authenticated principal,
whatever the request said (providers partition their prompt caches by it)."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from llmservice.kernel.types import ChatRequest, Message, StreamEvent
from llmservice.service.auth import LOCAL, Principal
from llmservice.service.core import LLMCore
from llmservice.service.registry import ProviderRegistry

from ..fakes.words_provider import Words


class Recording(Words):
    """Words that keeps every request it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[ChatRequest] = []

    async def stream(self, model: str, request: ChatRequest) -> AsyncGenerator[StreamEvent]:
        self.requests.append(request)
        async for event in super().stream(model, request):
            yield event


# A caller cannot name the principal: whatever a surface put there is replaced.
FORGED = ChatRequest((Message("user", "hi"),), cache_salt="team-a", principal="someone-else")


def _core(provider: Recording) -> LLMCore:
    return LLMCore(ProviderRegistry({provider.name: provider}, provider.name))


async def test_a_whole_reply_is_asked_for_as_the_authenticated_principal() -> None:
    provider = Recording()
    await _core(provider).complete(FORGED, Principal("ada"))
    await _core(provider).complete(FORGED)  # auth off: the local operator
    assert [(r.principal, r.cache_salt) for r in provider.requests] == [
        ("ada", "team-a"),
        (LOCAL.name, "team-a"),
    ]


async def test_a_stream_is_asked_for_as_the_authenticated_principal() -> None:
    provider = Recording()
    stream = _core(provider).stream(FORGED, Principal("ada"))
    assert [event async for event in stream.events]
    assert [(r.principal, r.cache_salt) for r in provider.requests] == [("ada", "team-a")]
