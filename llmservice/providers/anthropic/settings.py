"""Anthropic's settings: section `[anthropic]`."""

from __future__ import annotations

from pydantic import Field, SecretStr

from llmservice.providers.remote.settings import RemoteSettings


class AnthropicSettings(RemoteSettings):
    api_key: SecretStr | None = None
    model: str = "claude-sonnet-4-5"
    base_url: str = "https://api.anthropic.com"
    temperature: float | None = Field(None, ge=0, le=1)
    max_tokens: int = Field(4096, ge=1, description="Anthropic requires one; used when a request sets none")
    api_version: str = Field("2023-06-01", description="the anthropic-version header")

    def missing(self) -> list[str]:
        return [] if self.api_key else ["api_key"]
