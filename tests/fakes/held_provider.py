"""A provider whose start waits for the test: health stays NOT_SERVING until it is released."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from llmservice.types import ChatRequest, ModelInfo, StreamEvent
from providers import Provider


class HeldAtStart(Provider):
    name = "held"

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def start(self) -> None:
        await self.release.wait()

    @property
    def default_model(self) -> str:
        return "m"

    async def list_models(self) -> list[ModelInfo]:
        return [ModelInfo("m", self.name)]

    def validate(self, model: str, request: ChatRequest) -> None:
        pass

    async def stream(self, model: str, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        raise NotImplementedError
        yield
