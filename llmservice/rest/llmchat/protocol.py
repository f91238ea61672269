"""The /llmchat wire format, as pydantic models: the documented bodies (MCP Context Forge's
LLM Chat API), with this service's extra detail beside them. Unknown fields are refused
by name. Errors are `{"detail": "..."}` (`DetailError`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class McpServer(_Strict):
    url: str = Field(description="http(s) URL, or for stdio the name of a configured command")
    transport: Literal["streamable_http", "sse", "stdio"] = "streamable_http"
    auth_token: str | None = Field(
        None, description="sent as a Bearer token to this server only; never returned"
    )


_INT32 = 2**31 - 1


class LLMSettings(_Strict):
    """The sampling of every provider, then settings of the session's own for its provider
    (each refused by name by a provider that has no such setting). Unset: the provider's
    environment variable on the server, else an error naming both."""

    model: str = ""
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1, le=_INT32)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    system_prompt: str = ""
    api_key: str = Field(
        "",
        validation_alias=AliasChoices("api_key", "apikey"),
        description="openai, azure_openai, anthropic, watsonx (or apikey): kept encrypted, never returned",
    )
    base_url: str = Field("", description="openai, anthropic, ollama; must pass llmchat.allowed_hosts")
    azure_endpoint: str = ""
    azure_deployment: str = ""
    api_version: str = Field("", description="azure_openai, anthropic, watsonx")
    url: str = Field("", description="watsonx's endpoint")
    project_id: str = Field("", validation_alias=AliasChoices("project_id", "projectid"))
    model_id: str = Field("", description="aws_bedrock, watsonx: the model")
    region_name: str = ""
    aws_access_key_id: str = ""
    aws_secret_access_key: str = ""
    aws_session_token: str = ""
    endpoint_url: str = Field("", description="aws_bedrock")
    iam_url: str = Field("", description="watsonx: where the key becomes a token")
    num_ctx: int | None = Field(None, ge=1, le=_INT32, description="ollama")
    timeout: float | None = Field(None, gt=0, description="seconds, one upstream call")
    max_retries: int | None = Field(None, ge=0, le=100)


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


class ToolCall(BaseModel):
    """One tool call of a turn, named as the stream's tool events name it."""

    id: str
    tool: str
    input: dict[str, Any] | str = Field(description="the arguments")
    output: str = Field(description="the result, or what went wrong when is_error")
    is_error: bool
    elapsed_ms: float
    start: str = Field(description="RFC 3339")
    end: str


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
    tool_invocations: int = Field(description="how many tool calls the turn made")
    elapsed_ms: int
    tool_calls: list[ToolCall]
    usage: TurnUsage


class DisconnectRequest(_Strict):
    user_id: str


class DisconnectResponse(BaseModel):
    status: Literal["disconnected", "no_active_session"]
    user_id: str
    message: str = Field(description='"Successfully disconnected" or "No active session to disconnect"')
    was_connected: bool


class ConfigServer(BaseModel):
    url: str
    transport: str
    auth_token: str = Field(description="masked")


class ConfigLLM(BaseModel):
    provider: str
    config: dict[str, Any] = Field(description="the session's settings, secrets masked")


class ConfigResponse(BaseModel):
    user_id: str
    mcp_server: ConfigServer
    llm: ConfigLLM
    enable_streaming: bool
    tools: list[str]


class DetailError(BaseModel):
    detail: str
    param: str | None = Field(None, description="the request field at fault, when one is")


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
