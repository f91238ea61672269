"""Anthropic's Messages API wire format, as pydantic models (requests checked, replies built).

Names follow the anthropic SDK's types (anthropic.types): requests' parts end in Param,
as the SDK names them, which also keeps them apart from the OpenAI surface's models in
the OpenAPI document. Unknown top-level request fields are kept (`extra="allow"`) so that
the shim can refuse them by name with a 400; nested objects forbid unknown keys, which is
a 400 naming their path (messages[0].content[1].foo). Nothing is dropped silently, but
for `cache_control`: a prompt-caching hint that changes no reply, taken and ignored (the
service caches prompt prefixes by itself).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

INT32_MAX = 2**31 - 1  # the wire's int32 fields (max_tokens, top_k)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CacheControlParam(_Strict):
    type: Literal["ephemeral"]
    ttl: Literal["5m", "1h"] | None = None


class TextBlockParam(_Strict):
    type: Literal["text"]
    text: str
    cache_control: CacheControlParam | None = None
    citations: None = None  # a reply's text block sent back as history may carry citations: null


class Base64ImageSourceParam(_Strict):
    type: Literal["base64"]
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"]
    data: str


class URLImageSourceParam(_Strict):
    type: Literal["url"]
    url: str


class ImageBlockParam(_Strict):
    type: Literal["image"]
    source: Annotated[Base64ImageSourceParam | URLImageSourceParam, Field(discriminator="type")]
    cache_control: CacheControlParam | None = None


class ToolUseBlockParam(_Strict):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]
    cache_control: CacheControlParam | None = None


class ToolResultBlockParam(_Strict):
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[TextBlockParam] = ""
    is_error: bool = False
    cache_control: CacheControlParam | None = None


ContentBlockParam = Annotated[
    TextBlockParam | ImageBlockParam | ToolUseBlockParam | ToolResultBlockParam, Field(discriminator="type")
]


class MessageParam(_Strict):
    role: Literal["user", "assistant", "system"]
    content: str | list[ContentBlockParam]


class ToolParam(_Strict):
    name: str = Field(min_length=1)
    input_schema: dict[str, Any]
    description: str = ""
    type: Literal["custom"] | None = None  # Anthropic's server tools (web search, ...) are not here
    strict: bool | None = None
    cache_control: CacheControlParam | None = None


class ToolChoiceAutoParam(_Strict):
    type: Literal["auto"]
    disable_parallel_tool_use: bool = False


class ToolChoiceAnyParam(_Strict):
    type: Literal["any"]
    disable_parallel_tool_use: bool = False


class ToolChoiceToolParam(_Strict):
    type: Literal["tool"]
    name: str
    disable_parallel_tool_use: bool = False


class ToolChoiceNoneParam(_Strict):
    type: Literal["none"]


ToolChoiceParam = Annotated[
    ToolChoiceAutoParam | ToolChoiceAnyParam | ToolChoiceToolParam | ToolChoiceNoneParam,
    Field(discriminator="type"),
]


class MetadataParam(_Strict):
    user_id: str | None = None


class CountTokensRequest(BaseModel):
    """POST /v1/messages/count_tokens: what would be the prompt of a message."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[MessageParam] = Field(min_length=1)
    system: str | list[TextBlockParam] | None = None
    tools: list[ToolParam] | None = None
    tool_choice: ToolChoiceParam | None = None
    cache_control: CacheControlParam | None = None


class MessageCreateRequest(CountTokensRequest):
    """POST /v1/messages."""

    max_tokens: int = Field(ge=1, le=INT32_MAX)
    stop_sequences: list[str] | None = None
    stream: bool = False
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = Field(None, ge=0, le=INT32_MAX)
    metadata: MetadataParam | None = None


# Replies. Every field is on the wire in every reply, null included where it is nullable
# (stop_reason and stop_sequence of the message in message_start), as Anthropic sends them.

StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal"]


class TextBlock(BaseModel):
    type: Literal["text"]
    text: str


class ToolUseBlock(BaseModel):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


ContentBlock = Annotated[TextBlock | ToolUseBlock, Field(discriminator="type")]


class MessageUsage(BaseModel):
    """input_tokens leave out the cached ones: the prompt is all three input counts together."""

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int


class Message(BaseModel):
    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    content: list[ContentBlock]
    model: str
    stop_reason: StopReason | None
    stop_sequence: str | None
    usage: MessageUsage


class MessageTokensCount(BaseModel):
    input_tokens: int


class MessageStartEvent(BaseModel):
    type: Literal["message_start"]
    message: Message


class ContentBlockStartEvent(BaseModel):
    type: Literal["content_block_start"]
    index: int
    content_block: ContentBlock


class TextDelta(BaseModel):
    type: Literal["text_delta"]
    text: str


class InputJSONDelta(BaseModel):
    type: Literal["input_json_delta"]
    partial_json: str


class ContentBlockDeltaEvent(BaseModel):
    type: Literal["content_block_delta"]
    index: int
    delta: Annotated[TextDelta | InputJSONDelta, Field(discriminator="type")]


class ContentBlockStopEvent(BaseModel):
    type: Literal["content_block_stop"]
    index: int


class MessageDelta(BaseModel):
    stop_reason: StopReason
    stop_sequence: str | None


class MessageDeltaEvent(BaseModel):
    """The counts are totals for the whole message (message_start's are only an opening)."""

    type: Literal["message_delta"]
    delta: MessageDelta
    usage: MessageUsage


class MessageStopEvent(BaseModel):
    type: Literal["message_stop"]


StreamEvent = (
    MessageStartEvent
    | ContentBlockStartEvent
    | ContentBlockDeltaEvent
    | ContentBlockStopEvent
    | MessageDeltaEvent
    | MessageStopEvent
)

ErrorType = Literal[
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "api_error",
    "timeout_error",
    "overloaded_error",
]


class ErrorObject(BaseModel):
    type: ErrorType
    message: str


class AnthropicErrorResponse(BaseModel):
    type: Literal["error"]
    error: ErrorObject
    request_id: str | None = None


def dump(reply: BaseModel) -> bytes:
    """The reply's JSON, every field included."""
    return reply.__pydantic_serializer__.to_json(reply)
