"""The /llmchat wire format, as pydantic models. Unknown fields are refused by name."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class McpServer(_Strict):
    url: str = Field(description="http(s) URL, or for stdio the name of a configured command")
    transport: Literal["streamable_http", "sse", "stdio"] = "streamable_http"
    auth_token: str | None = Field(
        None, description="sent as a Bearer token to this server only; never returned"
    )


class LLMSettings(_Strict):
    model: str = ""
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1, le=2**31 - 1)  # the wire's int32
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    system_prompt: str = ""


class LLMChoice(_Strict):
    provider: str = Field(
        "", description="a provider as listed by /llmchat/gateway/models; empty: the default"
    )
    config: LLMSettings = LLMSettings()


class ConnectRequest(_Strict):
    user_id: str
    server: McpServer
    llm: LLMChoice = LLMChoice()
    streaming: bool = Field(False, description="how this session's turns answer when a chat does not say")


class ConnectResponse(BaseModel):
    status: Literal["connected"]
    user_id: str
    provider: str
    tool_count: int
    tools: list[str]


class ChatRequest(_Strict):
    user_id: str
    message: str
    streaming: bool | None = Field(None, description="unset: as the session was connected")


class ToolInvocation(BaseModel):
    id: str
    name: str
    arguments: dict[str, Any] | str
    result: str
    is_error: bool
    elapsed_ms: float


class TurnUsage(BaseModel):
    """Tokens over every model call of the turn (each tool step is one more call)."""

    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int = Field(description="of prompt_tokens, those served from a prompt cache")
    model_calls: int


class ChatResponse(BaseModel):
    user_id: str
    response: str
    tool_used: bool
    tools: list[str]
    tool_invocations: list[ToolInvocation]
    elapsed_ms: float
    usage: TurnUsage


class DisconnectRequest(_Strict):
    user_id: str


class DisconnectResponse(BaseModel):
    user_id: str
    status: Literal["disconnected"]
    was_connected: bool


class StatusResponse(BaseModel):
    user_id: str
    connected: bool


class ModelInfo(BaseModel):
    id: str
    provider: str
    capabilities: list[str]


class ModelsResponse(BaseModel):
    models: list[ModelInfo]


class CatalogueServer(BaseModel):
    name: str
    description: str
    url: str = Field(description="what /connect takes as server.url")
    transport: Literal["streamable_http", "sse", "stdio"]
    requires_token: bool
    status: Literal["active", "needs_token", "unreachable"]
    tool_count: int
    tools: list[str]
    error: str = Field(description="why it is unreachable, or what it said when refusing; empty otherwise")


class ServersResponse(BaseModel):
    servers: list[CatalogueServer]
