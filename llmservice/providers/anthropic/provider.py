"""The `anthropic` backend: Anthropic's Messages API.

Spoken with httpx and httpx-sse rather than the official SDK: the Messages API is a
handful of JSON shapes and named SSE events, both small libraries are already here
(httpx for the OpenAI client, httpx-sse for the MCP client), and plain HTTP keeps
retries, errors and redaction the same as for every other backend.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx_sse

from llmservice.kernel.errors import InvalidRequest, LLMServiceError, Unavailable
from llmservice.kernel.types import (
    Capabilities,
    ChatRequest,
    Completion,
    FinishReason,
    Message,
    ModelInfo,
    StreamEnd,
    StreamEvent,
    TokenDelta,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    Usage,
)
from llmservice.providers.anthropic import wire
from llmservice.providers.anthropic.settings import AnthropicSettings
from llmservice.providers.anthropic.wire import finish_reason
from llmservice.providers.remote.base import HttpProvider, attachment_text, base64_data, history_tools
from llmservice.providers.remote.http import raise_for_status, transport_errors, unreadable
from llmservice.providers.remote.http_errors import failed_midway, from_status

log = logging.getLogger(__name__)

_IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")


class AnthropicProvider(HttpProvider):
    one_call_switch = True  # tool_choice.disable_parallel_tool_use

    def __init__(self, settings: AnthropicSettings, name: str = "anthropic") -> None:
        key = settings.api_key.get_secret_value() if settings.api_key else ""
        headers = {"x-api-key": key, "anthropic-version": settings.api_version}
        super().__init__(name, settings, base_url=settings.base_url, headers=headers)
        self._settings = settings
        self._key = key

    @property
    def default_model(self) -> str:
        return self._settings.model

    def secrets(self) -> list[str]:
        return [self._key]

    async def list_models(self) -> list[ModelInfo]:
        ids = [self.default_model]
        try:
            async with transport_errors(self.name, [self._key]):
                response = await self._ready().get("/v1/models", params={"limit": 100})
            await raise_for_status(response, self.name, model="", secrets=[self._key])
            with unreadable(self.name, "a model list"):
                ids += [m["id"] for m in response.json().get("data", []) if m["id"] != self.default_model]
        except LLMServiceError as exc:
            log.warning("%s: cannot list upstream models: %s", self.name, exc.message)
        capabilities = Capabilities(streaming=True, tools=True, vision=True)
        return [ModelInfo(i, self.name, capabilities=capabilities) for i in ids]

    def validate(self, model: str, request: ChatRequest) -> None:
        s = request.sampling
        self.refuse(
            seed=s.seed,
            min_p=s.min_p,
            repetition_penalty=s.repetition_penalty,
            frequency_penalty=s.frequency_penalty,
            presence_penalty=s.presence_penalty,
            signal_options=request.signals,
            response_format=request.constraint,
        )
        if s.temperature is not None and s.temperature > 1:
            raise InvalidRequest("temperature", f"provider {self.name} takes temperatures up to 1")
        self.check_attachments(request, images=_IMAGE_TYPES)

    def _stream_body(self, model: str, request: ChatRequest) -> dict[str, Any]:
        return {**self._body(model, request), "stream": True}

    def _complete_body(self, model: str, request: ChatRequest) -> dict[str, Any]:
        return self._body(model, request)

    async def _call(self, body: dict[str, Any], model: str) -> Completion:
        async with transport_errors(self.name, [self._key]):
            response = await self._ready().post("/v1/messages", json=body)
        await raise_for_status(response, self.name, model=model, secrets=[self._key])
        with unreadable(self.name):
            return self._completion(response.json(), model)

    def _completion(self, data: dict[str, Any], model: str) -> Completion:
        blocks = data.get("content") or []
        text = "".join(b.get("text", "") for b in blocks if b.get("type") == "text")
        calls = tuple(
            ToolCall(b["id"], b["name"], json.dumps(b.get("input") or {}))
            for b in blocks
            if b.get("type") == "tool_use"
        )
        usage = data.get("usage") or {}
        return Completion(
            text, model, self.name, finish_reason(data.get("stop_reason")), _usage(usage), calls
        )

    async def _open_stream(self, body: dict[str, Any], model: str) -> AsyncIterator[StreamEvent]:
        client = self._ready()
        finish: FinishReason | None = None
        counts: dict[str, Any] = {}  # the usage so far: message_start's, then message_delta's
        tool_index: dict[int, int] = {}  # content block index -> tool call index
        async with (
            transport_errors(self.name, [self._key]),
            httpx_sse.aconnect_sse(client, "POST", "/v1/messages", json=body) as source,
        ):
            await raise_for_status(source.response, self.name, model=model, secrets=[self._key])
            with unreadable(self.name, "a stream"):
                async for sse in source.aiter_sse():
                    if sse.event == "ping" or not sse.data:
                        continue
                    data = sse.json()
                    match sse.event:
                        case "message_start":
                            counts = dict(data["message"].get("usage") or {})
                        case "content_block_start":
                            block = data["content_block"]
                            if block.get("type") == "tool_use":
                                index = tool_index[data["index"]] = len(tool_index)
                                yield ToolCallDelta(index, block["id"], block["name"])
                            elif block.get("text"):
                                yield TokenDelta(block["text"])
                        case "content_block_delta":
                            delta = data["delta"]
                            if delta.get("type") == "text_delta":
                                yield TokenDelta(delta["text"])
                            elif delta.get("type") == "input_json_delta" and data["index"] in tool_index:
                                yield ToolCallDelta(
                                    tool_index[data["index"]], arguments=delta["partial_json"]
                                )
                        case "message_delta":
                            reason = data.get("delta", {}).get("stop_reason")
                            finish = finish_reason(reason) if reason else finish
                            counts.update(_cumulative(data.get("usage") or {}))
                        case "message_stop":
                            break
                        case "error":  # e.g. overloaded_error; its message is the upstream's own words
                            raise self._stream_error(data.get("error") or {}, model)
        if finish is None:
            raise Unavailable(f"provider {self.name} ended the stream before it finished")
        yield StreamEnd(finish, _usage(counts))

    def _stream_error(self, error: dict[str, Any], model: str) -> LLMServiceError:
        """An error event, as the same error before the stream would be: by its type."""
        kind = str(error.get("type", "error"))
        text = f"{kind}: {error.get('message', '')}"
        status = wire.STREAM_ERROR_STATUS.get(kind)
        if status is None:
            return failed_midway(self.name, text, [self._key])
        return from_status(self.name, status, text, {}, model=model, secrets=[self._key])

    def _body(self, model: str, request: ChatRequest) -> dict[str, Any]:
        s = request.sampling
        system = "\n\n".join(m.content for m in request.messages if m.role == "system")
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": s.max_tokens or self._settings.max_tokens,
            "messages": _messages(request),
        }
        optional = {
            "system": system or None,
            "temperature": self._temperature(request),
            "top_p": s.top_p,
            "top_k": s.top_k,
            "stop_sequences": list(s.stop) or None,
            "metadata": {"user_id": request.user} if request.user else None,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        body.update(_tool_fields(request))
        return body

    def _temperature(self, request: ChatRequest) -> float | None:
        """The request's temperature, else the deployment's, but never beside the request's
        top_p: newer models refuse the two together, and the one asked for comes first."""
        s = request.sampling
        if s.temperature is not None or s.top_p is not None:
            return s.temperature
        return self._settings.temperature


def _tool_fields(request: ChatRequest) -> dict[str, Any]:
    """`tools` and `tool_choice`. Anthropic refuses tool_use and tool_result blocks in a
    request without `tools` (a summary turn after tool calls often offers none): then the
    tools the history calls are declared, and `none` keeps the model from calling them."""
    fields: dict[str, Any] = {}
    tools = [_tool(t.name, t.description, json.loads(t.parameters)) for t in request.tools]
    choice = request.tool_choice
    if not tools and (called := history_tools(request)):
        tools = [_tool(t.name, t.description, json.loads(t.parameters)) for t in called]
        choice = ToolChoice("none")
    if tools:
        fields["tools"] = tools
    if choice is not None:
        fields["tool_choice"] = {
            "auto": {"type": "auto"},
            "none": {"type": "none"},
            "required": {"type": "any"},
            "function": {"type": "tool", "name": choice.name},
        }[choice.mode]
    if request.tools and request.parallel_tool_calls is False:
        tool_choice = fields.setdefault("tool_choice", {"type": "auto"})
        if tool_choice["type"] != "none":
            tool_choice["disable_parallel_tool_use"] = True
    return fields


def _tool(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "description": description, "input_schema": schema}


def _cumulative(usage: dict[str, Any]) -> dict[str, Any]:
    """The counts a message_delta's usage gives: they are the message's totals so far, and
    replace message_start's (server tools add input and cache tokens midway); a count it
    leaves out, or sends as null, keeps message_start's."""
    return {k: v for k, v in usage.items() if v is not None}


def _usage(usage: dict[str, Any]) -> Usage:
    """Anthropic's input_tokens leave out the tokens read from and written to its prompt
    cache; prompt_tokens here count every prompt token, the cached ones among them."""
    read = usage.get("cache_read_input_tokens") or 0
    written = usage.get("cache_creation_input_tokens") or 0
    return Usage((usage.get("input_tokens") or 0) + read + written, usage.get("output_tokens") or 0, read)


def _messages(request: ChatRequest) -> list[dict[str, Any]]:
    """Anthropic's turns: system text goes apart, tool results are user turns, runs merge."""
    turns: list[dict[str, Any]] = []
    last_user = max((i for i, m in enumerate(request.messages) if m.role == "user"), default=-1)
    for i, m in enumerate(request.messages):
        if m.role == "system":
            continue
        blocks = _blocks(m)
        if i == last_user:
            blocks += _attachment_blocks(request)
        role = "assistant" if m.role == "assistant" else "user"
        if turns and turns[-1]["role"] == role:  # consecutive tool results share one user turn
            turns[-1]["content"] += blocks
        else:
            turns.append({"role": role, "content": blocks})
    if last_user < 0 and request.attachments:
        turns.append({"role": "user", "content": _attachment_blocks(request)})
    return turns


def _blocks(m: Message) -> list[dict[str, Any]]:
    if m.role == "tool":
        return [{"type": "tool_result", "tool_use_id": m.tool_call_id, "content": m.content}]
    blocks: list[dict[str, Any]] = [{"type": "text", "text": m.content}] if m.content else []
    blocks += [
        {"type": "tool_use", "id": c.id, "name": c.name, "input": json.loads(c.arguments)}
        for c in m.tool_calls
    ]
    return blocks


def _attachment_blocks(request: ChatRequest) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for i, a in enumerate(request.attachments):
        if a.mime_type in _IMAGE_TYPES:
            source = {"type": "base64", "media_type": a.mime_type, "data": base64_data(a)}
            blocks.append({"type": "image", "source": source})
        else:
            blocks.append({"type": "text", "text": attachment_text(a, i)})
    return blocks
