from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_STOP: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
    FINISH_REASON_TOOL_CALLS: _ClassVar[FinishReason]
    FINISH_REASON_CONTENT_FILTER: _ClassVar[FinishReason]
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_STOP: FinishReason
FINISH_REASON_LENGTH: FinishReason
FINISH_REASON_TOOL_CALLS: FinishReason
FINISH_REASON_CONTENT_FILTER: FinishReason

class ChatMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class Attachment(_message.Message):
    __slots__ = ("mime_type", "data", "filename")
    MIME_TYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    mime_type: str
    data: str
    filename: str
    def __init__(self, mime_type: _Optional[str] = ..., data: _Optional[str] = ..., filename: _Optional[str] = ...) -> None: ...

class LLMChatRequest(_message.Message):
    __slots__ = ("system_prompt", "user_prompt", "model", "temperature", "max_tokens", "provider", "attachments", "messages", "priority", "top_p", "stop", "seed")
    SYSTEM_PROMPT_FIELD_NUMBER: _ClassVar[int]
    USER_PROMPT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    ATTACHMENTS_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    system_prompt: str
    user_prompt: str
    model: str
    temperature: float
    max_tokens: int
    provider: str
    attachments: _containers.RepeatedCompositeFieldContainer[Attachment]
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    priority: int
    top_p: float
    stop: _containers.RepeatedScalarFieldContainer[str]
    seed: int
    def __init__(self, system_prompt: _Optional[str] = ..., user_prompt: _Optional[str] = ..., model: _Optional[str] = ..., temperature: _Optional[float] = ..., max_tokens: _Optional[int] = ..., provider: _Optional[str] = ..., attachments: _Optional[_Iterable[_Union[Attachment, _Mapping]]] = ..., messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., priority: _Optional[int] = ..., top_p: _Optional[float] = ..., stop: _Optional[_Iterable[str]] = ..., seed: _Optional[int] = ...) -> None: ...

class LLMChatResponse(_message.Message):
    __slots__ = ("content", "model", "prompt_tokens", "completion_tokens", "total_tokens", "finish_reason", "provider")
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    content: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    finish_reason: FinishReason
    provider: str
    def __init__(self, content: _Optional[str] = ..., model: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., total_tokens: _Optional[int] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., provider: _Optional[str] = ...) -> None: ...

class LLMChatChunk(_message.Message):
    __slots__ = ("token", "done", "model", "prompt_tokens", "completion_tokens", "total_tokens", "signal", "finish_reason", "provider")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    token: str
    done: bool
    model: str
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    signal: TokenSignalProto
    finish_reason: FinishReason
    provider: str
    def __init__(self, token: _Optional[str] = ..., done: _Optional[bool] = ..., model: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., total_tokens: _Optional[int] = ..., signal: _Optional[_Union[TokenSignalProto, _Mapping]] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., provider: _Optional[str] = ...) -> None: ...

class TokenSignalProto(_message.Message):
    __slots__ = ("confidence", "entropy", "top_gap", "top_k", "full_distribution", "sampler_stages")
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    ENTROPY_FIELD_NUMBER: _ClassVar[int]
    TOP_GAP_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    FULL_DISTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    SAMPLER_STAGES_FIELD_NUMBER: _ClassVar[int]
    confidence: float
    entropy: float
    top_gap: float
    top_k: _containers.RepeatedCompositeFieldContainer[TokenCandidateProto]
    full_distribution: _containers.RepeatedScalarFieldContainer[float]
    sampler_stages: _containers.RepeatedCompositeFieldContainer[SamplerStageProto]
    def __init__(self, confidence: _Optional[float] = ..., entropy: _Optional[float] = ..., top_gap: _Optional[float] = ..., top_k: _Optional[_Iterable[_Union[TokenCandidateProto, _Mapping]]] = ..., full_distribution: _Optional[_Iterable[float]] = ..., sampler_stages: _Optional[_Iterable[_Union[SamplerStageProto, _Mapping]]] = ...) -> None: ...

class TokenCandidateProto(_message.Message):
    __slots__ = ("id", "text", "prob")
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    PROB_FIELD_NUMBER: _ClassVar[int]
    id: int
    text: str
    prob: float
    def __init__(self, id: _Optional[int] = ..., text: _Optional[str] = ..., prob: _Optional[float] = ...) -> None: ...

class SamplerStageProto(_message.Message):
    __slots__ = ("name", "active_count", "top1_prob", "entropy", "top_k")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_COUNT_FIELD_NUMBER: _ClassVar[int]
    TOP1_PROB_FIELD_NUMBER: _ClassVar[int]
    ENTROPY_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    name: str
    active_count: int
    top1_prob: float
    entropy: float
    top_k: _containers.RepeatedCompositeFieldContainer[TokenCandidateProto]
    def __init__(self, name: _Optional[str] = ..., active_count: _Optional[int] = ..., top1_prob: _Optional[float] = ..., entropy: _Optional[float] = ..., top_k: _Optional[_Iterable[_Union[TokenCandidateProto, _Mapping]]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("id", "provider", "context_length", "is_default", "loaded", "capabilities")
    ID_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    id: str
    provider: str
    context_length: int
    is_default: bool
    loaded: bool
    capabilities: ModelCapabilities
    def __init__(self, id: _Optional[str] = ..., provider: _Optional[str] = ..., context_length: _Optional[int] = ..., is_default: _Optional[bool] = ..., loaded: _Optional[bool] = ..., capabilities: _Optional[_Union[ModelCapabilities, _Mapping]] = ...) -> None: ...

class ModelCapabilities(_message.Message):
    __slots__ = ("streaming", "tools", "vision", "embeddings", "signals")
    STREAMING_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    VISION_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    SIGNALS_FIELD_NUMBER: _ClassVar[int]
    streaming: bool
    tools: bool
    vision: bool
    embeddings: bool
    signals: bool
    def __init__(self, streaming: _Optional[bool] = ..., tools: _Optional[bool] = ..., vision: _Optional[bool] = ..., embeddings: _Optional[bool] = ..., signals: _Optional[bool] = ...) -> None: ...
