"""OpenAI wire models to LLMService messages and back: the one conversion of this surface."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice.rest.errors import invalid
from llmservice.rest.openai import protocol as oa
from llmservice.rest.params import refuse_unknown

FINISH: dict[int, oa.FinishReason] = {
    pb.FINISH_REASON_STOP: "stop",
    pb.FINISH_REASON_LENGTH: "length",
    pb.FINISH_REASON_TOOL_CALLS: "tool_calls",
    pb.FINISH_REASON_CONTENT_FILTER: "content_filter",
}
MAX_TOP_LOGPROBS = 20
SAMPLING = (  # request fields that go on the wire as they are
    "temperature",
    "top_p",
    "seed",
    "top_k",
    "min_p",
    "repetition_penalty",
    "frequency_penalty",
    "presence_penalty",
)


def to_grpc(req: oa.ChatCompletionRequest, priority_header: str | None) -> pb.LLMChatRequest:
    """The service request; anything the service would not honour is a 400 naming it."""
    _refuse_unsupported(req)
    msg = pb.LLMChatRequest(
        model=req.model,
        priority=priority(req.priority, priority_header),
        user=req.user or "",
        cache_salt=req.cache_salt or "",
    )
    legacy_call = ""  # the id given to the last legacy function_call, which a function turn answers
    for i, m in enumerate(req.messages):
        out = _message(i, m, msg)
        if m.function_call is not None:
            legacy_call, fn = f"call_legacy_{i}", m.function_call
            out.tool_calls.append(pb.ToolCall(id=legacy_call, name=fn.name, arguments_json=fn.arguments))
        if m.role == "function":
            if not legacy_call:
                raise invalid(f"messages[{i}]", "a function turn must follow an assistant's function_call")
            out.role, out.tool_call_id = "tool", legacy_call
        msg.messages.append(out)
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    if max_tokens is not None:
        if max_tokens < 1:
            raise invalid("max_tokens", f"{max_tokens} is not a positive count")
        msg.max_tokens = max_tokens
    for field in SAMPLING:
        value = getattr(req, field)
        if value is not None:
            setattr(msg, field, value)
    if req.stop is not None:
        msg.stop.extend([req.stop] if isinstance(req.stop, str) else req.stop)
    if req.functions is not None:  # the legacy functions API: one call per reply
        if req.tools is not None:
            raise invalid("functions", "give tools or the legacy functions, not both")
        msg.parallel_tool_calls = False
        msg.tools.extend(_tool(fn) for fn in req.functions)
        if req.function_call is not None:
            fc = req.function_call
            msg.tool_choice.CopyFrom(
                _tool_choice(
                    fc if isinstance(fc, str) else oa.NamedToolChoice(type="function", function=dict(fc))
                )
            )
    elif req.function_call is not None:
        raise invalid("function_call", "needs functions")
    msg.tools.extend(_tool(tool.function) for tool in req.tools or ())
    if req.tool_choice is not None:
        msg.tool_choice.CopyFrom(_tool_choice(req.tool_choice))
    if req.parallel_tool_calls is not None:
        msg.parallel_tool_calls = req.parallel_tool_calls
    if req.response_format is not None and req.response_format.type != "text":
        msg.response_format.CopyFrom(_response_format(req.response_format))
    if req.logprobs:
        top = req.top_logprobs or 0
        if not 0 <= top <= MAX_TOP_LOGPROBS:
            raise invalid("top_logprobs", f"{top} is outside 0 .. {MAX_TOP_LOGPROBS}")
        msg.signal_options.top_k = max(top, 1)
    elif req.top_logprobs:
        raise invalid("top_logprobs", "needs logprobs: true")
    return msg


def _tool(fn: oa.FunctionDefinition) -> pb.Tool:
    return pb.Tool(
        name=fn.name,
        description=fn.description,
        parameters_json=json.dumps(fn.parameters),
        strict=bool(fn.strict),
    )


def _refuse_unsupported(req: oa.ChatCompletionRequest) -> None:
    refuse_unknown(req)
    if req.logit_bias:
        raise invalid("logit_bias", "is not supported")
    if req.store:
        raise invalid("store", "chat completions are not stored here; the Responses API stores replies")


def choices(msg: pb.LLMChatRequest, n: int) -> list[pb.LLMChatRequest]:
    """The request once per choice; with a seed, choice i samples with seed + i (wrapping in
    int64), so the choices differ and the same request gives the same choices again."""
    out = [msg]
    for i in range(1, n):
        copy = pb.LLMChatRequest()
        copy.CopyFrom(msg)
        if msg.HasField("seed"):
            copy.seed = (msg.seed + i + 2**63) % 2**64 - 2**63
        out.append(copy)
    return out


# The x-priority header that priority() reads, as the OpenAPI document of a route names it.
PRIORITY_HEADER_DOC: dict[str, Any] = {
    "name": "x-priority",
    "in": "header",
    "required": False,
    "schema": {"anyOf": [{"type": "string"}, {"type": "null"}], "title": "X-Priority"},
}


def priority(body: int | None, header: str | None) -> int:
    if body is not None:
        return body
    if header is None:
        return 0
    try:
        value = int(header)
    except ValueError:
        value = None
    if value is None or not oa.INT32_MIN <= value <= oa.INT32_MAX:  # past int32 it cannot go on the wire
        raise invalid("x-priority", f"{header!r} is not an integer 0 .. 10")
    return value


def _message(index: int, m: oa.ChatMessage, request: pb.LLMChatRequest) -> pb.ChatMessage:
    role = "system" if m.role == "developer" else m.role
    out = pb.ChatMessage(role=role, tool_call_id=m.tool_call_id or "", name=m.name or "")
    if isinstance(m.content, str) or m.content is None:
        out.content = m.content or ""
    else:
        texts = []
        for j, part in enumerate(m.content):
            if isinstance(part, oa.TextPart):
                texts.append(part.text)
            else:
                request.attachments.append(_image(f"messages[{index}].content[{j}]", part))
        out.content = "".join(texts)
    for call in m.tool_calls or ():
        out.tool_calls.append(
            pb.ToolCall(id=call.id, name=call.function.name, arguments_json=call.function.arguments)
        )
    return out


def _image(where: str, part: oa.ImagePart) -> pb.Attachment:
    url = part.image_url.url
    if not url.startswith("data:") or ";base64," not in url:
        raise invalid(
            f"{where}.image_url.url", "images must be data: URLs (base64); the service fetches nothing"
        )
    if part.image_url.detail not in (None, "auto"):
        raise invalid(f"{where}.image_url.detail", "only auto is supported")
    mime = url[5:].split(";", 1)[0]
    return pb.Attachment(mime_type=mime, data=url)


def _tool_choice(choice: str | oa.NamedToolChoice) -> pb.ToolChoice:
    if isinstance(choice, oa.NamedToolChoice):
        return pb.ToolChoice(mode=pb.ToolChoice.MODE_FUNCTION, name=choice.function.get("name", ""))
    modes = {
        "auto": pb.ToolChoice.MODE_AUTO,
        "none": pb.ToolChoice.MODE_NONE,
        "required": pb.ToolChoice.MODE_REQUIRED,
    }
    return pb.ToolChoice(mode=modes[choice])


def _response_format(fmt: oa.ResponseFormat) -> pb.ResponseFormat:
    if fmt.type == "json_object":
        return pb.ResponseFormat(json_object=True)
    if fmt.json_schema is None:
        raise invalid("response_format.json_schema", "is required with type json_schema")
    return pb.ResponseFormat(json_schema=json.dumps(fmt.json_schema.schema_))


def tool_calls(calls: Iterable[pb.ToolCall]) -> list[oa.ToolCall]:
    return [
        oa.ToolCall(
            id=c.id, type="function", function=oa.FunctionCall(name=c.name, arguments=c.arguments_json)
        )
        for c in calls
    ]


def delta(chunk: pb.LLMChatChunk, top_logprobs: int | None) -> tuple[oa.ChoiceDelta, oa.Logprobs | None]:
    """What one chunk adds to a streamed reply (an empty delta: nothing), and its token's
    logprobs where they were asked for (top_logprobs not None) and the chunk has a signal."""
    out = oa.ChoiceDelta()
    logprobs = None
    if chunk.token:
        out.content = chunk.token
        if top_logprobs is not None and chunk.HasField("signal"):
            logprobs = oa.Logprobs(content=[logprob(chunk, top_logprobs)], refusal=None)
    if chunk.HasField("tool_call"):
        out.tool_calls = [_tool_call_delta(chunk.tool_call)]
    return out, logprobs


def _tool_call_delta(d: pb.ToolCallDelta) -> oa.ToolCallDelta:
    """A piece of a streamed tool call: its id and name come with its first piece only."""
    function = oa.FunctionDelta(arguments=d.arguments_json)
    if d.name:
        function.name = d.name
    out = oa.ToolCallDelta(index=d.index, function=function)
    if d.id:
        out.id, out.type = d.id, "function"
    return out


def logprob(chunk: pb.LLMChatChunk, top: int) -> oa.TokenLogprob:
    """OpenAI's logprob entry for one token, from its signal, with its `top` likeliest tokens."""
    signal = chunk.signal
    return oa.TokenLogprob(
        token=chunk.token,
        logprob=_ln(signal.confidence),
        bytes=list(chunk.token.encode()),
        top_logprobs=[
            oa.TopLogprob(token=c.text, logprob=_ln(c.prob), bytes=list(c.text.encode()))
            for c in signal.top_k[:top]
        ],
    )


def _ln(p: float) -> float:
    return math.log(p) if p > 0 else -9999.0


def usage(reply: pb.LLMChatResponse | pb.LLMChatChunk, completion_tokens: int | None = None) -> oa.Usage:
    """OpenAI's usage object, from a whole reply or a stream's final chunk. Cached tokens go
    where OpenAI puts them, always present (0: none), and are part of prompt_tokens. With n
    choices, the prompt is counted once and `completion_tokens` are all of theirs."""
    completion = reply.completion_tokens if completion_tokens is None else completion_tokens
    return oa.Usage(
        prompt_tokens=reply.prompt_tokens,
        completion_tokens=completion,
        total_tokens=reply.prompt_tokens + completion,
        prompt_tokens_details=oa.PromptTokensDetails(cached_tokens=reply.cached_prompt_tokens),
    )
