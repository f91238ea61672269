"""The `aws_bedrock` backend: Bedrock's Converse and ConverseStream APIs.

The AWS SDK does what must match AWS exactly: botocore finds the credentials (the
standard chain: environment, profiles, roles), signs each request with SigV4, and
decodes the binary event stream. The I/O is httpx, as for every other backend,
because botocore is synchronous (aioboto3 would add a second HTTP stack). botocore
comes with the `bedrock` extra.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from typing import Any

import botocore.auth
import botocore.awsrequest
import botocore.credentials
import botocore.eventstream
import botocore.session
import httpx

from llmservice.kernel.errors import ProviderAuthFailed, Unavailable
from llmservice.kernel.redact import redact
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
    Usage,
)
from llmservice.providers.bedrock.settings import BedrockSettings
from llmservice.providers.bedrock.wire import FINISH, http_error, stop_error, stream_error
from llmservice.providers.remote.base import HttpProvider, attachment_text, base64_data, history_tools
from llmservice.providers.remote.http import error_message, transport_errors, unreadable

log = logging.getLogger(__name__)

_IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/gif": "gif", "image/webp": "webp"}


class BedrockProvider(HttpProvider):
    def __init__(self, settings: BedrockSettings, name: str = "aws_bedrock") -> None:
        super().__init__(name, settings)
        self._settings = settings
        self._endpoint = settings.endpoint_url or f"https://bedrock-runtime.{settings.region}.amazonaws.com"
        self._credentials: botocore.credentials.Credentials | None = None

    @property
    def default_model(self) -> str:
        return self._settings.model

    async def start(self) -> None:
        # Found once through the AWS chain; refreshable ones (roles, SSO) renew themselves
        # when asked for frozen credentials.
        s = self._settings
        if s.access_key_id is not None and s.secret_access_key is not None:  # given: the chain is not asked
            token = s.session_token.get_secret_value() if s.session_token else None
            self._credentials = botocore.credentials.Credentials(
                s.access_key_id.get_secret_value(), s.secret_access_key.get_secret_value(), token
            )
        else:
            self._credentials = botocore.session.get_session().get_credentials()
        if self._credentials is None:
            raise ProviderAuthFailed(
                f"provider {self.name} found no AWS credentials (AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or a role)"
            )
        await super().start()

    async def list_models(self) -> list[ModelInfo]:
        # Listing needs the control-plane API (bedrock, not bedrock-runtime) and its own
        # permission; the configured model is what this deployment serves.
        return [
            ModelInfo(
                self.default_model,
                self.name,
                capabilities=Capabilities(streaming=True, tools=True, vision=True),
            )
        ]

    def validate(self, model: str, request: ChatRequest) -> None:
        s = request.sampling
        self.refuse(
            "no such parameter in the Converse API",
            seed=s.seed,
            top_k=s.top_k,
            min_p=s.min_p,
            repetition_penalty=s.repetition_penalty,
            frequency_penalty=s.frequency_penalty,
            presence_penalty=s.presence_penalty,
            signal_options=request.signals,
            response_format=request.constraint,
        )
        self.check_attachments(request, images=tuple(_IMAGE_FORMATS))

    def _stream_body(self, model: str, request: ChatRequest) -> dict[str, Any]:
        return self._body(request)

    def _complete_body(self, model: str, request: ChatRequest) -> dict[str, Any]:
        return self._body(request)

    async def _call(self, body: dict[str, Any], model: str) -> Completion:
        url, headers, data = self._signed(model, "converse", body)
        async with transport_errors(self.name, self.secrets()):
            response = await self._ready().post(url, content=data, headers=headers)
        await self._raise_for_status(response, model)
        with unreadable(self.name):
            return self._completion(response.json(), model)

    def _completion(self, reply: dict[str, Any], model: str) -> Completion:
        blocks = (reply.get("output") or {}).get("message", {}).get("content") or []
        calls = tuple(
            ToolCall(use["toolUseId"], use["name"], json.dumps(use.get("input") or {}))
            for use in (b["toolUse"] for b in blocks if "toolUse" in b)
        )
        usage = reply.get("usage") or {}
        return Completion(
            "".join(b["text"] for b in blocks if "text" in b),
            model,
            self.name,
            self._finish(reply.get("stopReason") or "end_turn"),
            _usage(usage),
            calls,
        )

    def _finish(self, reason: str) -> FinishReason:
        """Our finish reason for a stopReason; a malformed reply raises (it is no answer)."""
        if (error := stop_error(self.name, reason)) is not None:
            raise error
        return FINISH.get(reason, FinishReason.STOP)

    async def _open_stream(self, body: dict[str, Any], model: str) -> AsyncIterator[StreamEvent]:
        url, headers, data = self._signed(model, "converse-stream", body)
        finish: FinishReason | None = None
        usage = Usage()
        tool_index: dict[int, int] = {}
        async with (
            transport_errors(self.name, self.secrets()),
            self._ready().stream("POST", url, content=data, headers=headers) as response,
        ):
            await self._raise_for_status(response, model)
            buffer = botocore.eventstream.EventStreamBuffer()
            async for chunk in response.aiter_bytes():
                buffer.add_data(chunk)
                for message in _frames(buffer, self.name):
                    if (failure := _failure(message)) is not None:
                        raise stream_error(self.name, *failure, self.secrets())
                    with unreadable(self.name, "a stream"):
                        kind, payload = _decode(message)
                        events = _events(kind, payload, tool_index)
                        if kind == "messageStop":
                            finish = self._finish(payload.get("stopReason", ""))
                        elif kind == "metadata":
                            usage = _usage(payload.get("usage") or {})
                    for event in events:
                        yield event
        if finish is None:
            raise Unavailable(f"provider {self.name} ended the stream before it finished")
        yield StreamEnd(finish, usage)

    def _signed(self, model: str, action: str, body: dict[str, Any]) -> tuple[str, dict[str, str], bytes]:
        """URL, SigV4-signed headers and body of one Converse call."""
        url = f"{self._endpoint}/model/{urllib.parse.quote(model, safe='')}/{action}"
        data = json.dumps(body).encode()
        request = botocore.awsrequest.AWSRequest(
            method="POST", url=url, data=data, headers={"Content-Type": "application/json"}
        )
        if self._credentials is None:
            raise RuntimeError(f"provider {self.name} used before start()")
        frozen = self._credentials.get_frozen_credentials()
        botocore.auth.SigV4Auth(frozen, "bedrock", self._settings.region).add_auth(request)
        return url, dict(request.headers.items()), data

    async def _raise_for_status(self, response: httpx.Response, model: str) -> None:
        if response.status_code < 400:
            return
        await response.aread()
        error_type = response.headers.get("x-amzn-errortype", "").split(":")[0]
        message = error_message(response.content)
        if error_type == "AccessDeniedException":  # the caller is told what to check, the log why
            log.warning("provider %s: AWS denied access: %s", self.name, redact(message, self.secrets()))
        raise http_error(
            self.name,
            response.status_code,
            error_type,
            message,
            response.headers,
            model=model,
            secrets=self.secrets(),
        )

    def secrets(self) -> list[str]:
        if self._credentials is None:
            return []
        frozen = self._credentials.get_frozen_credentials()
        return [s for s in (frozen.secret_key, frozen.token) if s]

    def _body(self, request: ChatRequest) -> dict[str, Any]:
        s = request.sampling
        system = [{"text": m.content} for m in request.messages if m.role == "system"]
        inference = {
            "maxTokens": s.max_tokens or self._settings.max_tokens,
            "temperature": s.temperature if s.temperature is not None else self._settings.temperature,
            "topP": s.top_p,
            "stopSequences": list(s.stop) or None,
        }
        body: dict[str, Any] = {
            "messages": _messages(request),
            "inferenceConfig": {k: v for k, v in inference.items() if v is not None},
        }
        if system:
            body["system"] = system
        tools = _tool_specs(request)
        if tools and _offers_tools(request):
            tool_config: dict[str, Any] = {"tools": tools}
            choice = request.tool_choice
            if request.tools and choice is not None and not request.forbids_tool_calls:
                tool_config["toolChoice"] = {
                    "auto": {"auto": {}},
                    "required": {"any": {}},
                    "function": {"tool": {"name": choice.name}},
                }[choice.mode]
            body["toolConfig"] = tool_config
        return body


def _offers_tools(request: ChatRequest) -> bool:
    """Converse has no tool_choice "none": it goes with no toolConfig, so no call can come,
    unless the turns hold tool calls, which Converse reads only with a toolConfig. Then the
    tools go without a toolChoice and a call the model makes anyway comes back as a call."""
    if not request.forbids_tool_calls:
        return True
    return any(m.tool_calls or m.role == "tool" for m in request.messages)


def _tool_specs(request: ChatRequest) -> list[dict[str, Any]]:
    """The offered tools; when none are, the tools the history calls: Bedrock refuses toolUse
    and toolResult blocks without a toolConfig (a summary turn after tool calls often offers
    no tools). Those go with a schema that takes any object, their own not being known here;
    tools the caller offers this turn are never widened by ones it no longer does."""
    if request.tools:
        return [_tool_spec(t.name, t.description or t.name, json.loads(t.parameters)) for t in request.tools]
    return [_tool_spec(t.name, t.description, json.loads(t.parameters)) for t in history_tools(request)]


def _tool_spec(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"toolSpec": {"name": name, "description": description, "inputSchema": {"json": schema}}}


def _usage(usage: dict[str, Any]) -> Usage:
    """Converse's inputTokens leave out the tokens read from and written to the prompt cache;
    prompt_tokens here count every prompt token, the cached ones among them."""
    read = usage.get("cacheReadInputTokens") or 0
    written = usage.get("cacheWriteInputTokens") or 0
    return Usage((usage.get("inputTokens") or 0) + read + written, usage.get("outputTokens") or 0, read)


def _frames(buffer: botocore.eventstream.EventStreamBuffer, provider: str) -> Iterator[Any]:
    """The whole event-stream messages in the buffer, one at a time."""
    try:
        yield from buffer
    except botocore.eventstream.ParserError:
        raise Unavailable(f"provider {provider} sent a stream that could not be read") from None


def _decode(message: Any) -> tuple[str, dict[str, Any]]:
    """An event-stream message's event type and JSON payload."""
    return message.headers.get(":event-type", ""), json.loads(message.payload or b"{}")


def _failure(message: Any) -> tuple[str, str] | None:
    """The type and message of a failure the stream reports, or None for an event; read from
    the headers first, so a payload that is not JSON loses neither.

    AWS's event streams carry two: a modeled exception (`:message-type: exception`, its
    type in `:exception-type`, its message in the payload) and an error the stream itself
    hit (`:message-type: error`, with `:error-code` and `:error-message` headers)."""
    headers = message.headers
    kind = headers.get(":message-type", "event")
    if kind == "exception":
        return str(headers.get(":exception-type", "exception")), _payload_message(message.payload)
    if kind == "error":
        return str(headers.get(":error-code", "error")), str(headers.get(":error-message", ""))
    return None


def _payload_message(payload: bytes) -> str:
    """An exception's `message`, or its payload as text when that is not the JSON expected."""
    try:
        data = json.loads(payload or b"{}")
    except ValueError:
        return payload.decode(errors="replace")[:500]
    return str(data.get("message", "")) if isinstance(data, dict) else str(data)[:500]


def _events(kind: str, payload: dict[str, Any], tool_index: dict[int, int]) -> list[StreamEvent]:
    block = payload.get("contentBlockIndex", 0)
    if kind == "contentBlockStart":
        tool = (payload.get("start") or {}).get("toolUse")
        if tool:
            tool_index[block] = len(tool_index)
            return [ToolCallDelta(tool_index[block], tool["toolUseId"], tool["name"])]
    elif kind == "contentBlockDelta":
        delta = payload.get("delta") or {}
        if delta.get("text"):  # an empty one (Bedrock sends some) would end the retry window
            return [TokenDelta(delta["text"])]
        if "toolUse" in delta and block in tool_index:
            return [ToolCallDelta(tool_index[block], arguments=delta["toolUse"].get("input", ""))]
    return []


def _messages(request: ChatRequest) -> list[dict[str, Any]]:
    """Converse turns: tool results are user turns, consecutive same-role turns merge."""
    turns: list[dict[str, Any]] = []
    last_user = max((i for i, m in enumerate(request.messages) if m.role == "user"), default=-1)
    for i, m in enumerate(request.messages):
        if m.role == "system":
            continue
        content = _content(m)
        if i == last_user:
            content += _attachments(request)
        role = "assistant" if m.role == "assistant" else "user"
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += content
        else:
            turns.append({"role": role, "content": content})
    return turns


def _content(m: Message) -> list[dict[str, Any]]:
    if m.role == "tool":
        return [{"toolResult": {"toolUseId": m.tool_call_id, "content": [{"text": m.content}]}}]
    blocks: list[dict[str, Any]] = [{"text": m.content}] if m.content else []
    blocks += [
        {"toolUse": {"toolUseId": c.id, "name": c.name, "input": json.loads(c.arguments)}}
        for c in m.tool_calls
    ]
    return blocks


def _attachments(request: ChatRequest) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for i, a in enumerate(request.attachments):
        if a.mime_type in _IMAGE_FORMATS:
            blocks.append(
                {"image": {"format": _IMAGE_FORMATS[a.mime_type], "source": {"bytes": base64_data(a)}}}
            )
        else:
            blocks.append({"text": attachment_text(a, i)})
    return blocks
