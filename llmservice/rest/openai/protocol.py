"""OpenAI's chat completions wire format, as pydantic models (requests checked, replies built).

Unknown top-level request fields are kept (`extra="allow"`) so that the shim can refuse
them by name with a 400; nested objects forbid unknown keys, which is a 400 naming their
path (messages[0].foo). Nothing is dropped silently.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

INT32_MAX = 2**31 - 1  # the wire's int32 fields (max_tokens, top_k, priority)
INT32_MIN = -(2**31)
MAX_CHOICES = 16  # n: each choice is a generation of its own


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImageURL(_Strict):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


class FunctionCall(_Strict):
    name: str
    arguments: str = "{}"


class ToolCall(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Strict):
    # "function": the legacy functions API's result turn (it answers the last function_call)
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart | ImagePart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    function_call: FunctionCall | None = None  # the legacy functions API's call
    refusal: None = None  # a reply sent back as history carries refusal: null


class FunctionDefinition(_Strict):
    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None


class ToolDefinition(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: dict[str, str]


class JSONSchemaFormat(_Strict):
    name: str = "response"
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    messages: list[ChatMessage] = Field(min_length=1)
    model: str = ""
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = Field(None, le=INT32_MAX)
    max_completion_tokens: int | None = Field(None, le=INT32_MAX)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    tools: list[ToolDefinition] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # The legacy functions API: tools by another name; the reply's call is `function_call`.
    functions: list[FunctionDefinition] | None = None
    function_call: Literal["none", "auto"] | FunctionName | None = None
    store: bool | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    user: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(None, ge=1, le=MAX_CHOICES)
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    # Extensions: the service's own parameters.
    priority: int | None = Field(
        None,
        ge=INT32_MIN,  # the service itself says what 0 .. 10 means; past int32 nothing goes on the wire
        le=INT32_MAX,
        description="0 interactive ... 10 background (or the x-priority header)",
    )
    top_k: int | None = Field(None, ge=0, le=INT32_MAX)
    min_p: float | None = None
    repetition_penalty: float | None = None
    cache_salt: str | None = Field(
        None,
        description="partitions prompt-cache reuse (vLLM's field; at most 256 characters)",
    )


# Replies. Names and nullability follow the openai SDK's types (openai.types.chat,
# openai.types.model); field order is wire order. A field without a default is on the
# wire in every reply, null included where it is nullable (refusal, logprobs,
# system_fingerprint); one with a default is there only where its builder set it (usage
# on a stream's last chunk only; a delta's parts that changed), since `dump` writes
# what was set and nothing else.

FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class Logprobs(BaseModel):
    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None


class PromptTokensDetails(BaseModel):
    cached_tokens: int  # of prompt_tokens, those served from a prompt cache


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class ChatCompletionMessage(BaseModel):
    role: Literal["assistant"]
    content: str | None
    refusal: str | None
    tool_calls: list[ToolCall] | None = None
    function_call: FunctionCall | None = None  # instead of tool_calls, for a `functions` request


class ChatCompletionChoice(BaseModel):
    index: int
    message: ChatCompletionMessage
    finish_reason: FinishReason
    logprobs: Logprobs | None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: Usage
    system_fingerprint: str | None


class FunctionDelta(BaseModel):
    arguments: str
    name: str | None = None


class ToolCallDelta(BaseModel):
    index: int
    function: FunctionDelta
    id: str | None = None
    type: Literal["function"] | None = None


class ChoiceDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None
    function_call: FunctionDelta | None = None  # instead of tool_calls, for a `functions` request


class ChunkChoice(BaseModel):
    index: int
    delta: ChoiceDelta
    logprobs: Logprobs | None
    finish_reason: FinishReason | None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    system_fingerprint: str | None
    choices: list[ChunkChoice]
    usage: Usage | None = None


class Model(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[Model]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


def dump(reply: BaseModel) -> bytes:
    """The reply's JSON: every field its builder set, null included, and no other."""
    return reply.__pydantic_serializer__.to_json(reply, exclude_unset=True)
