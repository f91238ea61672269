"""A provider whose start fails still closes what it opened (else an HTTP session is left to GC)."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import pytest

from llmservice.errors import Unavailable
from llmservice.types import ChatRequest, ModelInfo, StreamEvent
from providers.base import Provider


class FailsToStart(Provider):
    name = "fails"

    def __init__(self) -> None:
        self.closed = False

    def default_model(self) -> str:
        return "m"

    async def list_models(self) -> list[ModelInfo]:
        return []

    def validate(self, model: str, request: ChatRequest) -> None:
        return None

    async def stream(self, model: str, request: ChatRequest) -> AsyncGenerator[StreamEvent]:
        raise NotImplementedError
        yield  # pragma: no cover

    async def start(self) -> None:
        raise Unavailable("upstream refused the model list")

    async def aclose(self) -> None:
        self.closed = True


async def test_a_failed_start_closes_the_provider() -> None:
    provider = FailsToStart()
    with pytest.raises(Unavailable):
        async with provider:
            pass
    assert provider.closed
