"""The gRPC edge: protobuf messages to domain types and back. Nothing else touches _pb types."""

from __future__ import annotations

from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice.kernel.embedding import Embeddings, EmbedRequest
from llmservice.kernel.errors import InvalidRequest
from llmservice.kernel.types import (
    DEFAULT_SIGNAL_TOP_K,
    NO_PARAMETERS,
    ROLES,
    Attachment,
    Candidate,
    ChatRequest,
    Completion,
    Constraint,
    FinishReason,
    Message,
    ModelInfo,
    Role,
    Sampling,
    SignalOptions,
    StreamEnd,
    TokenDelta,
    TokenSignal,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
)

_FINISH = {
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.TOOL_CALLS: pb.FINISH_REASON_TOOL_CALLS,
    FinishReason.CONTENT_FILTER: pb.FINISH_REASON_CONTENT_FILTER,
}


_SOURCES = {
    "engine": pb.SIGNAL_SOURCE_ENGINE,
    "upstream_logprobs": pb.SIGNAL_SOURCE_UPSTREAM_LOGPROBS,
}


def decode_chat_request(
    msg: pb.LLMChatRequest, deadline: float | None = None, principal: str = ""
) -> ChatRequest:
    """The domain request; `deadline` (monotonic) and `principal` are the call's, not the message's."""
    return ChatRequest(
        messages=_messages(msg),
        model=msg.model,
        provider=msg.provider,
        sampling=Sampling(
            temperature=msg.temperature if msg.HasField("temperature") else None,
            top_p=msg.top_p if msg.HasField("top_p") else None,
            max_tokens=msg.max_tokens or None,
            stop=tuple(msg.stop),
            seed=msg.seed if msg.HasField("seed") else None,
            top_k=msg.top_k or None,
            min_p=msg.min_p if msg.HasField("min_p") else None,
            repetition_penalty=msg.repetition_penalty if msg.HasField("repetition_penalty") else None,
            frequency_penalty=msg.frequency_penalty if msg.HasField("frequency_penalty") else None,
            presence_penalty=msg.presence_penalty if msg.HasField("presence_penalty") else None,
        ),
        attachments=tuple(Attachment(a.mime_type, a.data, a.filename) for a in msg.attachments)
        if msg.attachments
        else (),
        priority=msg.priority,
        signals=_signal_options(msg),
        constraint=_constraint(msg),
        tools=tuple(
            Tool(t.name, t.description, t.parameters_json or NO_PARAMETERS, t.strict) for t in msg.tools
        )
        if msg.tools
        else (),
        tool_choice=_tool_choice(msg),
        user=msg.user,
        cache_salt=msg.cache_salt,
        parallel_tool_calls=msg.parallel_tool_calls if msg.HasField("parallel_tool_calls") else None,
        raw_prompt=msg.raw_prompt or None,
        deadline=deadline,
        principal=principal,
    )


_TOOL_MODES = {
    pb.ToolChoice.MODE_UNSPECIFIED: "auto",
    pb.ToolChoice.MODE_AUTO: "auto",
    pb.ToolChoice.MODE_NONE: "none",
    pb.ToolChoice.MODE_REQUIRED: "required",
    pb.ToolChoice.MODE_FUNCTION: "function",
}


def _tool_choice(msg: pb.LLMChatRequest) -> ToolChoice | None:
    if not msg.HasField("tool_choice"):
        return None
    mode = _TOOL_MODES.get(msg.tool_choice.mode)
    if mode is None:
        raise InvalidRequest("tool_choice.mode", f"unknown mode {msg.tool_choice.mode}")
    return ToolChoice(mode, msg.tool_choice.name)  # type: ignore[arg-type]


def _signal_options(msg: pb.LLMChatRequest) -> SignalOptions | None:
    if not msg.HasField("signal_options"):
        return None
    o = msg.signal_options
    return SignalOptions(o.top_k or DEFAULT_SIGNAL_TOP_K, o.sampler_stages, o.full_distribution)


def _constraint(msg: pb.LLMChatRequest) -> Constraint | None:
    if not msg.HasField("response_format"):
        return None
    f = msg.response_format
    match f.WhichOneof("format"):
        case "json_schema":
            return Constraint("json_schema", f.json_schema)
        case "grammar":
            return Constraint("grammar", f.grammar)
        case "json_object" if f.json_object:
            return Constraint("json_object")
    raise InvalidRequest("response_format", "set one of json_schema, json_object (true) or grammar")


def _messages(msg: pb.LLMChatRequest) -> tuple[Message, ...]:
    """`messages` when set; otherwise the deprecated system_prompt and user_prompt."""
    if msg.messages:
        return tuple(
            Message(
                _role(i, m.role),
                m.content,
                tuple(ToolCall(c.id, c.name, c.arguments_json) for c in m.tool_calls) if m.tool_calls else (),
                m.tool_call_id,
                m.name,
            )
            for i, m in enumerate(msg.messages)
        )
    legacy: list[Message] = []
    if msg.system_prompt:
        legacy.append(Message("system", msg.system_prompt))
    if msg.user_prompt:
        legacy.append(Message("user", msg.user_prompt))
    return tuple(legacy)


def _role(index: int, role: str) -> Role:
    for known in ROLES:
        if role == known:
            return known
    raise InvalidRequest(
        f"messages[{index}].role", f"unknown role {role!r}; expected one of {', '.join(ROLES)}"
    )


def encode_completion(completion: Completion) -> pb.LLMChatResponse:
    usage = completion.usage
    return pb.LLMChatResponse(
        content=completion.text,
        model=completion.model,
        provider=completion.provider,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        cached_prompt_tokens=usage.cached_tokens,
        max_tokens_capped_to=usage.max_tokens_capped_to,
        finish_reason=_FINISH[completion.finish_reason],
        tool_calls=[
            pb.ToolCall(id=c.id, name=c.name, arguments_json=c.arguments) for c in completion.tool_calls
        ],
    )


def encode_tool_call(delta: ToolCallDelta, model: str) -> pb.LLMChatChunk:
    return pb.LLMChatChunk(
        model=model,
        tool_call=pb.ToolCallDelta(
            index=delta.index, id=delta.id, name=delta.name, arguments_json=delta.arguments
        ),
    )


def encode_token(delta: TokenDelta, model: str) -> pb.LLMChatChunk:
    token_id = delta.token_id if delta.token_id >= 0 else None
    if delta.signal is None:
        return pb.LLMChatChunk(token=delta.text, model=model, token_id=token_id)
    return pb.LLMChatChunk(token=delta.text, model=model, token_id=token_id, signal=_signal(delta.signal))


def _signal(s: TokenSignal) -> pb.TokenSignalProto:
    msg = pb.TokenSignalProto(
        confidence=s.confidence,
        entropy=s.entropy,
        top_gap=s.top_gap,
        source=_SOURCES[s.source],
        top_k=[_candidate(c) for c in s.top_k],
        sampler_stages=[
            pb.SamplerStageProto(
                name=st.name,
                active_count=st.active_count,
                top1_prob=st.top1_prob,
                entropy=st.entropy,
                top_k=[_candidate(c) for c in st.top],
            )
            for st in s.stages
        ],
    )
    if s.full_distribution is not None:
        msg.full_distribution.extend(s.full_distribution.tolist())
    return msg


def _candidate(c: Candidate) -> pb.TokenCandidateProto:
    return pb.TokenCandidateProto(id=c.id, text=c.text, prob=c.prob)


def encode_end(end: StreamEnd, model: str, provider: str) -> pb.LLMChatChunk:
    usage = end.usage
    return pb.LLMChatChunk(
        done=True,
        model=model,
        provider=end.provider or provider,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        cached_prompt_tokens=usage.cached_tokens,
        max_tokens_capped_to=usage.max_tokens_capped_to,
        finish_reason=_FINISH[end.finish_reason],
    )


def encode_models(models: list[ModelInfo]) -> pb.ListModelsResponse:
    return pb.ListModelsResponse(
        models=[
            pb.ModelInfo(
                id=m.id,
                provider=m.provider,
                context_length=m.context_length,
                is_default=m.is_default,
                loaded=m.loaded,
                capabilities=pb.ModelCapabilities(
                    streaming=m.capabilities.streaming,
                    tools=m.capabilities.tools,
                    vision=m.capabilities.vision,
                    embeddings=m.capabilities.embeddings,
                    signals=m.capabilities.signals,
                    completion_only=m.capabilities.completion_only,
                ),
                quantization=m.quantization,
                size_bytes=m.size_bytes,
                device=m.device,
                gpu_layers=m.gpu_layers,
                layers=m.layers,
                batch_invariant=m.batch_invariant,
            )
            for m in models
        ]
    )


def decode_embed_request(msg: pb.EmbedRequest) -> EmbedRequest:
    return EmbedRequest(
        input=tuple(msg.input),
        model=msg.model,
        provider=msg.provider,
        dimensions=msg.dimensions if msg.HasField("dimensions") else None,
        user=msg.user,
    )


def encode_embeddings(e: Embeddings) -> pb.EmbedResponse:
    return pb.EmbedResponse(
        embeddings=[pb.Embedding(values=v.tolist()) for v in e.vectors],
        model=e.model,
        provider=e.provider,
        prompt_tokens=e.prompt_tokens,
        total_tokens=e.prompt_tokens,
        cached=e.cached,
    )
