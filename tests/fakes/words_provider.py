"""A provider that answers at once with scripted words and exact usage: for tests about
what happens around a request (limits, usage), not about generation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from llmservice.kernel.types import ChatRequest, FinishReason, StreamEnd, StreamEvent, TokenDelta, Usage

from .one_model import OneModel


class Words(OneModel):
    """Streams `words` (one token each), then ends with usage (prompt_tokens, words streamed).

    With `hold` set, it waits for the event after the first word: a test can leave mid-stream.
    """

    def __init__(
        self, name: str = "fake", words: tuple[str, ...] = ("one", "two", "three"), prompt_tokens: int = 10
    ) -> None:
        self.name = name
        self.words = words
        self.prompt_tokens = prompt_tokens
        self.hold: asyncio.Event | None = None
        self.calls = 0

    async def stream(self, model: str, request: ChatRequest) -> AsyncGenerator[StreamEvent]:
        self.calls += 1
        limit = request.sampling.max_tokens or len(self.words)
        words = self.words[:limit]
        for i, word in enumerate(words):
            yield TokenDelta(word if i == 0 else " " + word)
            if i == 0 and self.hold is not None:
                await self.hold.wait()
        yield StreamEnd(FinishReason.STOP, Usage(self.prompt_tokens, len(words)))
