"""The `watsonx` backend: IBM watsonx.ai's chat API, with IAM token exchange and refresh.

Spoken with httpx and httpx-sse: IBM's SDK (ibm-watsonx-ai) is synchronous and pulls in
pandas and more; the API itself is an OpenAI-like JSON chat plus one token exchange.
The API key is exchanged at IAM for a bearer token, which is reused until a minute
before it expires, and fetched anew when the service says it has expired (a 401
whose error code is `authentication_token_expired`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import httpx_sse

from llmservice.kernel.errors import InvalidRequest, LLMServiceError, ProviderAuthFailed, Unavailable
from llmservice.kernel.types import (
    Capabilities,
    ChatRequest,
    Completion,
    FinishReason,
    ModelInfo,
    StreamEnd,
    StreamEvent,
    TokenDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from llmservice.providers.remote import openai_shapes
from llmservice.providers.remote.base import HttpProvider
from llmservice.providers.remote.http import error_message, raise_for_status, transport_errors, unreadable
from llmservice.providers.remote.http_errors import failed_midway, from_status
from llmservice.providers.watsonx import wire
from llmservice.providers.watsonx.settings import WatsonxSettings

log = logging.getLogger(__name__)

_REFRESH_MARGIN_S = 60.0  # fetch a new token this long before the old one expires
_GRANT = "urn:ibm:params:oauth:grant-type:apikey"


class WatsonxProvider(HttpProvider):
    def __init__(
        self, settings: WatsonxSettings, name: str = "watsonx", *, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(name, settings)
        self._settings = settings
        self._key = settings.api_key.get_secret_value() if settings.api_key else ""
        self._token = ""
        self._expires = 0.0
        self._token_lock = asyncio.Lock()
        self._clock = clock
        self.tokens_fetched = 0

    @property
    def default_model(self) -> str:
        return self._settings.model

    def secrets(self) -> list[str]:
        return [s for s in (self._key, self._token) if s]

    async def list_models(self) -> list[ModelInfo]:
        ids = [self.default_model]
        try:
            async with transport_errors(self.name, [self._key]):
                response = await self._ready().get(
                    f"{self._settings.url}/ml/v1/foundation_model_specs",
                    params={
                        "version": self._settings.api_version,
                        "filters": "function_text_chat",
                        "limit": 200,
                    },
                )
            await raise_for_status(response, self.name, model="", secrets=[self._key])
            with unreadable(self.name, "a model list"):
                ids += [
                    m["model_id"] for m in response.json().get("resources", []) if m["model_id"] != ids[0]
                ]
        except LLMServiceError as exc:
            log.warning("%s: cannot list models: %s", self.name, exc.message)
        return [ModelInfo(i, self.name, capabilities=Capabilities(streaming=True, tools=True)) for i in ids]

    def validate(self, model: str, request: ChatRequest) -> None:
        s = request.sampling
        self.refuse(
            "no such chat parameter",
            top_k=s.top_k,
            min_p=s.min_p,
            repetition_penalty=s.repetition_penalty,
            signal_options=request.signals,
        )
        if request.constraint is not None and request.constraint.kind == "grammar":
            raise InvalidRequest("response_format.grammar", f"provider {self.name} takes no GBNF grammar")
        if request.attachments:
            raise InvalidRequest("attachments", f"provider {self.name} takes no attachments here")

    def _stream_body(self, model: str, request: ChatRequest) -> dict[str, Any]:
        return self._body(model, request)

    def _complete_body(self, model: str, request: ChatRequest) -> dict[str, Any]:
        return self._body(model, request)

    async def _call(self, body: dict[str, Any], model: str) -> Completion:
        response = await self._send(
            lambda client, headers: client.post(self._endpoint("chat"), json=body, headers=headers)
        )
        await self._raise_for_status(response, model)
        with unreadable(self.name):
            return self._completion(response.json(), model)

    def _completion(self, data: dict[str, Any], model: str) -> Completion:
        choice = (data.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        calls = tuple(
            ToolCall(
                c.get("id") or _call_id(data.get("id") or "", i),
                c["function"]["name"],
                c["function"].get("arguments") or "{}",
            )
            for i, c in enumerate(message.get("tool_calls") or ())
        )
        refusal = openai_shapes.refusal(message)
        finish = _finish(self.name, choice.get("finish_reason") or "stop", bool(calls))
        return Completion(
            openai_shapes.text_of(message.get("content")) or refusal,
            model,
            self.name,
            FinishReason.CONTENT_FILTER if refusal else finish,
            openai_shapes.usage(data.get("usage") or {}),
            calls,
        )

    async def _open_stream(self, body: dict[str, Any], model: str) -> AsyncIterator[StreamEvent]:
        reply = _StreamedReply(self.name)
        for attempt in range(2):  # a second time only with a fresh token
            headers = await self._auth(force=attempt > 0)
            async with (
                transport_errors(self.name, [self._key]),
                httpx_sse.aconnect_sse(
                    self._ready(), "POST", self._endpoint("chat_stream"), json=body, headers=headers
                ) as source,
            ):
                if attempt == 0 and await _expired(source.response):
                    continue
                await self._raise_for_status(source.response, model)
                with unreadable(self.name, "a stream"):
                    async for sse in source.aiter_sse():
                        if not sse.data:
                            continue
                        data = sse.json()
                        if "errors" in data:  # watsonx's error body, sent as an event
                            raise failed_midway(self.name, _error_text(data), self.secrets())
                        for event in reply.events(data):
                            yield event
            break
        yield reply.end()

    async def _raise_for_status(self, response: httpx.Response, model: str) -> None:
        """The domain error for watsonx's 4xx or 5xx, where its error code says more than the
        status: an unknown model is NOT_FOUND whichever status came, a spent quota is final."""
        if response.status_code < 400:
            return
        await response.aread()
        codes = _error_codes(response.content)
        status = 404 if wire.NOT_FOUND in codes else response.status_code
        message = error_message(response.content) or response.reason_phrase
        error = from_status(self.name, status, message, response.headers, model=model, secrets=self.secrets())
        if codes & wire.NOT_RETRIED:
            error.should_retry = False
        raise error

    async def _send(self, request: Callable[[httpx.AsyncClient, dict[str, str]], Any]) -> httpx.Response:
        """Send with the current token; once more with a fresh one if it had expired."""
        response: httpx.Response = httpx.Response(500)
        for attempt in range(2):
            headers = await self._auth(force=attempt > 0)
            async with transport_errors(self.name, [self._key]):
                response = await request(self._ready(), headers)
            if not await _expired(response):
                break
        return response

    async def _auth(self, *, force: bool = False) -> dict[str, str]:
        async with self._token_lock:
            if force or not self._token or self._clock() >= self._expires - _REFRESH_MARGIN_S:
                await self._fetch_token()
        return {"Authorization": f"Bearer {self._token}"}

    async def _fetch_token(self) -> None:
        async with transport_errors(self.name, [self._key]):
            response = await self._ready().post(
                f"{self._settings.iam_url}/identity/token",
                data={"grant_type": _GRANT, "apikey": self._key},
                headers={"Accept": "application/json"},
            )
        if response.status_code in (400, 401, 403):  # IAM answers an unknown key with 400
            raise ProviderAuthFailed(
                f"provider {self.name}: IBM Cloud IAM rejected the service's API key "
                f"(HTTP {response.status_code})"
            )
        await raise_for_status(response, self.name, model="", secrets=[self._key])
        with unreadable(self.name, "an IAM token reply"):
            data = response.json()
            token = str(data["access_token"])
            expires = float(data.get("expiration") or self._clock() + float(data.get("expires_in", 3600)))
        self._token, self._expires = token, expires
        self.tokens_fetched += 1

    def _endpoint(self, kind: str) -> str:
        return f"{self._settings.url}/ml/v1/text/{kind}?version={self._settings.api_version}"

    def _body(self, model: str, request: ChatRequest) -> dict[str, Any]:
        s = request.sampling
        temperature = s.temperature if s.temperature is not None else self._settings.temperature
        body: dict[str, Any] = {
            "model_id": model,
            "project_id": self._settings.project_id,
            "messages": [openai_shapes.message(m) for m in request.messages],
        }
        optional = {
            "temperature": temperature,
            "top_p": s.top_p,
            "max_completion_tokens": s.max_tokens,  # the chat API deprecates max_tokens
            "seed": s.seed,
            "stop": list(s.stop) or None,
            "frequency_penalty": s.frequency_penalty,
            "presence_penalty": s.presence_penalty,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        if request.tools:
            body["tools"] = openai_shapes.function_tools(request)
        choice = request.tool_choice
        if choice is not None:  # watsonx names a function in tool_choice, a mode in tool_choice_option
            key = "tool_choice" if choice.mode == "function" else "tool_choice_option"
            body[key] = openai_shapes.tool_choice(choice)
        if request.constraint is not None:
            c = request.constraint
            body["response_format"] = (
                {"type": "json_object"}
                if c.kind == "json_object"
                else {
                    "type": "json_schema",
                    "json_schema": {"name": "response", "schema": json.loads(c.text)},
                }
            )
        return body


async def _expired(response: httpx.Response) -> bool:
    """A 401 whose error code says the token expired (as opposed to a key that is no good)."""
    if response.status_code != 401:
        return False
    await response.aread()
    return wire.TOKEN_EXPIRED in _error_codes(response.content)


def _error_codes(body: bytes) -> set[str]:
    """The codes in watsonx's error body (`{"errors": [{"code", "message", "more_info"}]}`)."""
    try:
        errors = json.loads(body).get("errors") or []
        return {str(e.get("code")) for e in errors}
    except (ValueError, AttributeError, TypeError):
        return set()


def _error_text(data: dict[str, Any]) -> str:
    errors = data.get("errors") or [{}]
    return "; ".join(f"{e.get('code', 'error')}: {e.get('message', '')}" for e in errors)


def _finish(provider: str, reason: str, has_tool_calls: bool) -> FinishReason:
    """Our finish reason for watsonx's; a failure it reports as a finish reason is UNAVAILABLE."""
    if reason in wire.FAILED:
        raise failed_midway(provider, f"{wire.FAILED[reason]} (finish_reason {reason})")
    return wire.FINISH.get(reason, FinishReason.STOP).with_tool_calls(has_tool_calls)


def _call_id(reply_id: str, index: int) -> str:
    """An id for a tool call watsonx sent without one (some models' streams never carry one):
    the reply's id and the call's index, so that a tool result can name it."""
    return f"{reply_id}-call-{index}" if reply_id else f"call_{index}"


@dataclasses.dataclass
class _StreamedReply:
    """What a watsonx stream has said so far: its finish reason, its usage (in a last chunk
    without choices), and the id each tool call goes by."""

    provider: str
    reason: str | None = None
    usage: Usage = dataclasses.field(default_factory=Usage)
    call_ids: dict[int, str] = dataclasses.field(default_factory=dict)
    refused: bool = False  # the model declined: its words came as `refusal`, not content

    def events(self, chunk: dict[str, Any]) -> list[StreamEvent]:
        if chunk.get("usage"):
            self.usage = openai_shapes.usage(chunk["usage"])
        events: list[StreamEvent] = []
        for choice in (chunk.get("choices") or [])[:1]:
            events += [self._named(e, chunk.get("id") or "") for e in openai_shapes.choice_events(choice)]
            if refusal := openai_shapes.refusal(choice.get("delta") or {}):
                events.append(TokenDelta(refusal))
                self.refused = True
            self.reason = choice.get("finish_reason") or self.reason
        return events

    def end(self) -> StreamEnd:
        if self.reason is None:
            raise Unavailable(f"provider {self.provider} ended the stream before it finished")
        finish = _finish(self.provider, self.reason, bool(self.call_ids))
        return StreamEnd(FinishReason.CONTENT_FILTER if self.refused else finish, self.usage)

    def _named(self, event: StreamEvent, reply_id: str) -> StreamEvent:
        """A tool call's first piece with an id: watsonx's, or one of its own making."""
        if not isinstance(event, ToolCallDelta) or event.index in self.call_ids:
            return event
        self.call_ids[event.index] = event.id or _call_id(reply_id, event.index)
        return dataclasses.replace(event, id=self.call_ids[event.index])
