"""The base of the small fake providers: one model, "m", every request accepted, nothing
generated. Each fake overrides only what its tests are about."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from llmservice.kernel.provider import Provider
from llmservice.kernel.types import ChatRequest, ModelInfo, StreamEvent


class OneModel(Provider):
    @property
    def default_model(self) -> str:
        return "m"

    async def list_models(self) -> list[ModelInfo]:
        return [ModelInfo("m", self.name)]

    def validate(self, model: str, request: ChatRequest) -> None:
        pass

    async def stream(self, model: str, request: ChatRequest) -> AsyncGenerator[StreamEvent]:
        raise NotImplementedError
        yield
