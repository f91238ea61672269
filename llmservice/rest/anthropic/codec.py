"""Anthropic wire models to LLMService messages and back: the one conversion of this surface.

A request's turns become the service's: `system` (and system turns) a system message;
text blocks of one turn one message's text, joined by blank lines; images attachments
(data: URLs, as the OpenAI surface sends them); an assistant's tool_use blocks its tool
calls; each tool_result block a "tool" turn of its own answering its tool_use_id, in
place, a failed one (is_error) saying so in its text.

A reply's stop reason says what the service's finish reason does. The service does not
tell a stop sequence that ended the reply from the model's own end of turn, so a reply a
stop sequence ended reads end_turn, with stop_sequence null.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable

from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice.rest.anthropic import protocol as an
from llmservice.rest.errors import APIError, invalid

STOP: dict[int, an.StopReason] = {
    pb.FINISH_REASON_STOP: "end_turn",
    pb.FINISH_REASON_LENGTH: "max_tokens",
    pb.FINISH_REASON_TOOL_CALLS: "tool_use",
    pb.FINISH_REASON_CONTENT_FILTER: "refusal",
}
# Anthropic's parameters the service does not honour, refused by name with what they are.
_UNSUPPORTED = {
    "thinking": "extended thinking is not supported",
    "mcp_servers": "the service connects to no MCP servers for a message",
    "container": "the service runs no code containers",
    "context_management": "is not supported",
    "output_config": "is not supported",
    "output_format": "is not supported",
    "service_tier": "the service has one tier",
}
_SAMPLING = ("temperature", "top_p", "top_k")
_CREATE_ONLY = set(an.MessageCreateRequest.model_fields) - set(an.CountTokensRequest.model_fields)
_TOOL_CHOICES = {
    "auto": pb.ToolChoice.MODE_AUTO,
    "any": pb.ToolChoice.MODE_REQUIRED,
    "tool": pb.ToolChoice.MODE_FUNCTION,
    "none": pb.ToolChoice.MODE_NONE,
}


def to_grpc(req: an.MessageCreateRequest) -> pb.LLMChatRequest:
    """The service request for a message; anything the service would not honour is a 400 naming it."""
    msg = prompt(req)
    msg.max_tokens = req.max_tokens
    for field in _SAMPLING:
        value = getattr(req, field)
        if value is not None:
            setattr(msg, field, value)
    msg.stop.extend(req.stop_sequences or ())
    if req.metadata is not None and req.metadata.user_id:
        msg.user = req.metadata.user_id
    return msg


def prompt(req: an.CountTokensRequest) -> pb.LLMChatRequest:
    """The service request with what makes the prompt: model, turns, tools (count_tokens' all)."""
    _refuse_unsupported(req)
    msg = pb.LLMChatRequest(model=req.model)
    if req.system:
        msg.messages.append(pb.ChatMessage(role="system", content=_text(req.system)))
    for i, m in enumerate(req.messages):
        msg.messages.extend(_turn(f"messages[{i}]", m, msg))
    msg.tools.extend(
        pb.Tool(
            name=t.name,
            description=t.description,
            parameters_json=json.dumps(t.input_schema),
            strict=bool(t.strict),
        )
        for t in req.tools or ()
    )
    choice = req.tool_choice
    if choice is not None and choice.type != "none" and not req.tools:
        raise invalid("tool_choice", f"{choice.type} needs tools, and the request has none")
    if choice is not None:
        name = choice.name if isinstance(choice, an.ToolChoiceToolParam) else ""
        msg.tool_choice.CopyFrom(pb.ToolChoice(mode=_TOOL_CHOICES[choice.type], name=name))
        if getattr(choice, "disable_parallel_tool_use", False):
            msg.parallel_tool_calls = False
    return msg


def _refuse_unsupported(req: an.CountTokensRequest) -> None:
    unknown = sorted(req.model_extra or {})
    for field in unknown:
        if field in _UNSUPPORTED:
            raise invalid(field, _UNSUPPORTED[field])
        if field in _CREATE_ONLY:
            raise invalid(field, "is a parameter of messages, not of count_tokens")
    if unknown:
        raise invalid(unknown[0], "is not a parameter this service supports")


def _text(content: str | list[an.TextBlockParam]) -> str:
    return content if isinstance(content, str) else "\n\n".join(b.text for b in content)


def _turn(where: str, m: an.MessageParam, request: pb.LLMChatRequest) -> list[pb.ChatMessage]:
    """One Anthropic turn as the service's: a user turn's tool results are turns of their own."""
    if isinstance(m.content, str):
        return [pb.ChatMessage(role=m.role, content=m.content)]
    out: list[pb.ChatMessage] = []
    texts: list[str] = []
    calls: list[pb.ToolCall] = []
    for j, block in enumerate(m.content):
        at = f"{where}.content[{j}]"
        if isinstance(block, an.TextBlockParam):
            texts.append(block.text)
        elif m.role == "system":
            raise invalid(at, "a system turn carries text blocks only")
        elif isinstance(block, an.ToolUseBlockParam) and m.role == "assistant":
            calls.append(pb.ToolCall(id=block.id, name=block.name, arguments_json=json.dumps(block.input)))
        elif isinstance(block, an.ImageBlockParam) and m.role == "user":
            request.attachments.append(_image(at, block))
        elif isinstance(block, an.ToolResultBlockParam) and m.role == "user":
            if texts:  # text before a result stays before it
                out.append(pb.ChatMessage(role="user", content="\n\n".join(texts)))
                texts = []
            out.append(_tool_result(block))
        else:
            raise invalid(at, f"{block.type} blocks cannot be in {m.role} turns")
    if texts or calls or not out:
        out.append(pb.ChatMessage(role=m.role, content="\n\n".join(texts), tool_calls=calls))
    return out


def _tool_result(block: an.ToolResultBlockParam) -> pb.ChatMessage:
    text = _text(block.content)
    if block.is_error:
        text = f"Error: {text}" if text else "Error"
    return pb.ChatMessage(role="tool", tool_call_id=block.tool_use_id, content=text)


def _image(where: str, block: an.ImageBlockParam) -> pb.Attachment:
    source = block.source
    if not isinstance(source, an.Base64ImageSourceParam):
        raise invalid(f"{where}.source", "images must be base64 sources; the service fetches nothing")
    return pb.Attachment(mime_type=source.media_type, data=f"data:{source.media_type};base64,{source.data}")


def message(reply: pb.LLMChatResponse) -> an.Message:
    """The whole reply as Anthropic's message."""
    content: list[an.TextBlock | an.ToolUseBlock] = []
    if reply.content:
        content.append(an.TextBlock(type="text", text=reply.content))
    content.extend(tool_uses(reply.tool_calls))
    return an.Message(
        id=message_id(),
        type="message",
        role="assistant",
        content=content,
        model=reply.model,
        stop_reason=STOP.get(reply.finish_reason, "end_turn"),
        stop_sequence=None,
        usage=usage(reply),
    )


def tool_uses(calls: Iterable[pb.ToolCall]) -> list[an.ToolUseBlock]:
    return [
        an.ToolUseBlock(type="tool_use", id=c.id or tool_use_id(), name=c.name, input=_input(c))
        for c in calls
    ]


def _input(call: pb.ToolCall) -> dict[str, object]:
    """A call's arguments as the object Anthropic's `input` is; any other JSON is the model's
    (or its provider's) failure, not the request's."""
    try:
        value = json.loads(call.arguments_json or "{}")
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise APIError(
            500, f"the model called {call.name} with arguments that are not a JSON object", "api_error"
        )
    return value


def usage(reply: pb.LLMChatResponse | pb.LLMChatChunk) -> an.MessageUsage:
    """Anthropic's usage, from a whole reply or a stream's final chunk: its input_tokens leave
    out the tokens read from the prompt cache, which it counts apart."""
    cached = reply.cached_prompt_tokens
    return an.MessageUsage(
        input_tokens=reply.prompt_tokens - cached,
        output_tokens=reply.completion_tokens,
        cache_creation_input_tokens=0,
        cache_read_input_tokens=cached,
    )


def message_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def tool_use_id() -> str:
    """An id for a call the service gave none."""
    return f"toolu_{uuid.uuid4().hex}"
