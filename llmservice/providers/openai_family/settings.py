"""The OpenAI family's settings: sections `[openai]`, `[azure_openai]` and `[openai_compatible]`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

from llmservice.providers.remote.settings import RemoteSettings


class OpenAISettings(RemoteSettings):
    api_key: SecretStr | None = None
    model: str = "gpt-4o-mini"
    base_url: str = "https://api.openai.com/v1"
    temperature: float | None = Field(None, ge=0, le=2)

    def missing(self) -> list[str]:
        return [] if self.api_key else ["api_key"]


class AzureOpenAISettings(RemoteSettings):
    api_key: SecretStr | None = None
    endpoint: str = Field("", description="https://NAME.openai.azure.com")
    deployment: str = Field("", description="the deployment name, used as the model id")
    api_version: str = "2024-10-21"
    temperature: float | None = Field(None, ge=0, le=2)

    def missing(self) -> list[str]:
        return [name for name in ("api_key", "endpoint", "deployment") if not getattr(self, name)]


class OpenAICompatibleSettings(RemoteSettings):
    """Any server that speaks the OpenAI API: vLLM, LM Studio, HF TGI, OpenRouter, llama.cpp."""

    base_url: str = Field("", description="e.g. http://127.0.0.1:8000/v1")
    api_key: SecretStr | None = Field(None, description="sent as a Bearer token when set")
    model: str = Field("", description="default model; empty asks the server for its first model")
    temperature: float | None = Field(None, ge=0, le=2)
    flavour: Literal["generic", "llamacpp", "vllm", "lmstudio", "openrouter", "tgi"] = Field(
        "generic",
        description=(
            "which server it is: decides the names top_k, min_p and the repetition penalty go by; "
            "generic refuses them, since an unknown server may drop them silently"
        ),
    )

    def missing(self) -> list[str]:
        return [] if self.base_url else ["base_url"]
