"""The `grpc` provider's edge: domain requests to the backend's protobuf, its answers back.

The reverse of `llmservice.grpc_api.codec` (and of `grpc_api.status` for errors), so that a
request forwarded to another llmservice reads there as the caller's own did here. It may not
import `grpc_api` (the layers point one way): the trailer keys are repeated below, and a
unit test holds them to that module's.

What the wire cannot carry, or this side keeps to itself: the deadline (it travels as the
call's gRPC timeout), the principal (folded into the cache salt, see `_cache_salt`), an
embed request's `positions` (this service's bookkeeping), and on the way back the backend's
own provider names (each answer names this provider: metering and routing here know only
their own names), a chunk's model (the request's), total_tokens (a sum of the two counts),
and an embedding's model, provider and cache hits (the core counts its own).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import grpc
import numpy as np

from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice.kernel import errors
from llmservice.kernel.embedding import EmbedRequest, EmbedResult, as_vector
from llmservice.kernel.types import (
    Candidate,
    Capabilities,
    ChatRequest,
    Completion,
    Constraint,
    FinishReason,
    ModelInfo,
    SamplerStage,
    StreamEnd,
    StreamEvent,
    TokenDelta,
    TokenSignal,
    ToolCall,
    ToolCallDelta,
    Usage,
)

# The trailers grpc_api.status sends its structured facts in.
RETRY_AFTER_KEY = "retry-after"
PARAM_KEY = "llm-error-param"
KIND_KEY = "llm-error-kind"

Trailers = Iterable[tuple[str, str | bytes]]

# An unspecified reason (a plugin's) reads as a stop.
_FINISH = {
    pb.FINISH_REASON_STOP: FinishReason.STOP,
    pb.FINISH_REASON_LENGTH: FinishReason.LENGTH,
    pb.FINISH_REASON_TOOL_CALLS: FinishReason.TOOL_CALLS,
    pb.FINISH_REASON_CONTENT_FILTER: FinishReason.CONTENT_FILTER,
}

_TOOL_MODES = {
    "auto": pb.ToolChoice.MODE_AUTO,
    "none": pb.ToolChoice.MODE_NONE,
    "required": pb.ToolChoice.MODE_REQUIRED,
    "function": pb.ToolChoice.MODE_FUNCTION,
}


def encode_chat_request(model: str, request: ChatRequest, provider: str = "") -> pb.LLMChatRequest:
    """The request as the backend's `LLMChatRequest`, for `model` at its `provider` (empty:
    the backend's default). The deadline is not in it: it goes as the call's timeout."""
    s = request.sampling
    msg = pb.LLMChatRequest(
        model=model,
        provider=provider,
        messages=[
            pb.ChatMessage(
                role=m.role,
                content=m.content,
                tool_calls=[_tool_call(c) for c in m.tool_calls],
                tool_call_id=m.tool_call_id,
                name=m.name,
            )
            for m in request.messages
        ],
        temperature=s.temperature,
        top_p=s.top_p,
        max_tokens=s.max_tokens or 0,
        stop=s.stop,
        seed=s.seed,
        top_k=s.top_k,
        min_p=s.min_p,
        repetition_penalty=s.repetition_penalty,
        frequency_penalty=s.frequency_penalty,
        presence_penalty=s.presence_penalty,
        attachments=[
            pb.Attachment(mime_type=a.mime_type, data=a.data, filename=a.filename)
            for a in request.attachments
        ],
        priority=request.priority,
        tools=[
            pb.Tool(name=t.name, description=t.description, parameters_json=t.parameters, strict=t.strict)
            for t in request.tools
        ],
        user=request.user,
        cache_salt=_cache_salt(request),
        parallel_tool_calls=request.parallel_tool_calls,
        raw_prompt=request.raw_prompt or "",
    )
    if request.signals is not None:
        o = request.signals
        msg.signal_options.CopyFrom(
            pb.SignalOptions(
                top_k=o.top_k,
                sampler_stages=o.sampler_stages,
                full_distribution=o.full_distribution,
            )
        )
    if request.constraint is not None:
        msg.response_format.CopyFrom(_response_format(request.constraint))
    if request.tool_choice is not None:
        msg.tool_choice.CopyFrom(
            pb.ToolChoice(mode=_TOOL_MODES[request.tool_choice.mode], name=request.tool_choice.name)
        )
    return msg


def _cache_salt(request: ChatRequest) -> str:
    """The salt the backend partitions its prompt caches by. The backend knows every caller
    of this service as one principal (this service's key), so the caller's principal goes
    into the salt: one principal's prompts cannot be probed through another's cache hits
    there either. A request no core routed (no principal) keeps its salt as it is."""
    if not request.principal:
        return request.cache_salt
    return hashlib.sha256(f"{request.principal}\x1f{request.cache_salt}".encode()).hexdigest()


def _response_format(c: Constraint) -> pb.ResponseFormat:
    match c.kind:
        case "json_schema":
            return pb.ResponseFormat(json_schema=c.text)
        case "grammar":
            return pb.ResponseFormat(grammar=c.text)
        case "json_object":
            return pb.ResponseFormat(json_object=True)


def _tool_call(c: ToolCall) -> pb.ToolCall:
    return pb.ToolCall(id=c.id, name=c.name, arguments_json=c.arguments)


def decode_chunk(chunk: pb.LLMChatChunk, provider: str) -> list[StreamEvent]:
    """The events one chunk of the backend's stream holds: a token, a piece of a tool call,
    or the end (served by `provider`, this one). A plugin's final chunk may carry the last
    token too: then both, the token first."""
    events: list[StreamEvent] = []
    tokened = bool(chunk.token) or chunk.HasField("signal") or chunk.HasField("token_id")
    if tokened or not (chunk.done or chunk.HasField("tool_call")):
        events.append(
            TokenDelta(
                chunk.token,
                chunk.token_id if chunk.HasField("token_id") else -1,
                _signal(chunk.signal) if chunk.HasField("signal") else None,
            )
        )
    if chunk.HasField("tool_call"):
        d = chunk.tool_call
        events.append(ToolCallDelta(d.index, d.id, d.name, d.arguments_json))
    if chunk.done:
        events.append(
            StreamEnd(
                _FINISH.get(chunk.finish_reason, FinishReason.STOP),
                Usage(
                    chunk.prompt_tokens,
                    chunk.completion_tokens,
                    chunk.cached_prompt_tokens,
                    chunk.max_tokens_capped_to,
                ),
                provider,
            )
        )
    return events


def _signal(s: pb.TokenSignalProto) -> TokenSignal:
    return TokenSignal(
        confidence=s.confidence,
        entropy=s.entropy,
        top_gap=s.top_gap,
        top_k=_candidates(s.top_k),
        full_distribution=np.array(s.full_distribution, dtype=np.float32) if s.full_distribution else None,
        stages=tuple(
            SamplerStage(st.name, st.active_count, st.top1_prob, st.entropy, _candidates(st.top_k))
            for st in s.sampler_stages
        ),
        # unspecified: a backend from before sources, whose signals were all the engine's
        source="upstream_logprobs" if s.source == pb.SIGNAL_SOURCE_UPSTREAM_LOGPROBS else "engine",
    )


def _candidates(cs: Iterable[pb.TokenCandidateProto]) -> tuple[Candidate, ...]:
    return tuple(Candidate(c.id, c.text, c.prob) for c in cs)


def decode_chat_response(resp: pb.LLMChatResponse, provider: str) -> Completion:
    """The backend's whole answer, as served by `provider` (this one)."""
    calls = tuple(ToolCall(c.id, c.name, c.arguments_json) for c in resp.tool_calls)
    finish = _FINISH.get(resp.finish_reason, FinishReason.STOP.with_tool_calls(bool(calls)))
    return Completion(
        text=resp.content,
        model=resp.model,
        provider=provider,
        finish_reason=finish,
        usage=Usage(
            resp.prompt_tokens, resp.completion_tokens, resp.cached_prompt_tokens, resp.max_tokens_capped_to
        ),
        tool_calls=calls,
    )


def decode_models(resp: pb.ListModelsResponse, provider: str, only: str = "") -> list[ModelInfo]:
    """The backend's models as this provider's (`provider`); with `only`, just those of that
    provider of the backend's (the one requests are sent to)."""
    return [
        ModelInfo(
            id=m.id,
            provider=provider,
            context_length=m.context_length,
            is_default=m.is_default,
            loaded=m.loaded,
            capabilities=Capabilities(
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
        for m in resp.models
        if not only or m.provider == only
    ]


def encode_embed_request(model: str, request: EmbedRequest, provider: str = "") -> pb.EmbedRequest:
    """The request as the backend's `EmbedRequest`, for `model` at its `provider` (empty: its default)."""
    return pb.EmbedRequest(
        input=request.input, model=model, provider=provider, dimensions=request.dimensions, user=request.user
    )


def decode_embed_response(resp: pb.EmbedResponse) -> EmbedResult:
    return EmbedResult(tuple(as_vector(e.values) for e in resp.embeddings), resp.prompt_tokens)


def error_from_status(
    provider: str, code: grpc.StatusCode, details: str, trailers: Trailers = ()
) -> errors.LLMServiceError:
    """The domain error for the backend's status: grpc_api.status's mapping reversed, with its
    facts from the trailers (the field at fault, retry-after, which limit). The backend refusing
    this service's credentials (UNAUTHENTICATED, PERMISSION_DENIED) is, for our caller, this
    provider's credentials failing; a code with no domain error reads as the backend failing."""
    facts = {k.lower(): v for k, v in trailers if isinstance(v, str)}
    message = f"provider {provider}: {details}"
    kind = facts.get(KIND_KEY, "")
    error: errors.LLMServiceError
    match code:
        case grpc.StatusCode.INVALID_ARGUMENT:
            invalid = errors.ContentFiltered if kind == errors.ContentFiltered.kind else errors.InvalidRequest
            error = invalid(facts.get(PARAM_KEY, ""), details, message=message)
        case grpc.StatusCode.NOT_FOUND:
            error = errors.NotFound(message)
        case grpc.StatusCode.RESOURCE_EXHAUSTED:
            limit = {c.kind: c for c in (errors.RateLimited, errors.BudgetExhausted)}
            error = limit.get(kind, errors.ResourceExhausted)(message)
            if isinstance(error, errors.BudgetExhausted):
                error.should_retry = False  # spent for the period: no retry refills it
        case (
            grpc.StatusCode.FAILED_PRECONDITION
            | grpc.StatusCode.UNAUTHENTICATED
            | grpc.StatusCode.PERMISSION_DENIED
        ):
            error = errors.ProviderAuthFailed(message)
        case grpc.StatusCode.DEADLINE_EXCEEDED:
            error = errors.DeadlineExceeded(message)
        case grpc.StatusCode.CANCELLED:
            error = errors.Cancelled(message)
        case _:  # UNAVAILABLE, and INTERNAL, UNKNOWN, UNIMPLEMENTED ...: the backend failed
            error = errors.Unavailable(message)
    error.retry_after_s = _seconds(facts.get(RETRY_AFTER_KEY))
    return error


def _seconds(value: str | None) -> float | None:
    """A retry-after trailer's seconds; None when absent or not a number of seconds."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None  # NaN too is no wait
