"""Ollama's settings: section `[ollama]`."""

from __future__ import annotations

from pydantic import Field

from llmservice.providers.remote.settings import RemoteSettings


class OllamaSettings(RemoteSettings):
    """An Ollama server's native API (not its OpenAI-compatible one)."""

    base_url: str = "http://127.0.0.1:11434"
    model: str = Field("", description="default model; Ollama has none of its own")
    temperature: float | None = Field(None, ge=0, le=2)
    keep_alive: str = Field("5m", description="how long Ollama keeps a model loaded after a request")
    num_ctx: int | None = Field(None, ge=1, description="the context window Ollama loads the model with")

    def missing(self) -> list[str]:
        return [] if self.model else ["model"]
