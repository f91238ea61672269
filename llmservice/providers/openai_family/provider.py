"""The OpenAI family: `openai`, `azure_openai` and `openai_compatible`.

All three go through the official `openai` client: it follows the API as it changes
(Azure's deployments and api-version included), does the auth, and raises typed
errors. Requests go through its generic `post` (its documented way to reach any
endpoint), which keeps all that but skips its typed request transform and response
models: those cost more than a millisecond per call (bench/gateway_overhead.py), so
replies are read as JSON and streams through httpx-sse. Its own retries are off:
retries are `llmservice.providers.remote`'s, the same for every backend and never once a token
has reached the caller. Its HTTP client is `llmservice.providers.remote.http`'s, like every
backend's: httpx's API on aiohttp's connection pool, with `trust_env`, so HTTPS_PROXY and NO_PROXY
are honoured.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import httpx
import httpx_sse
import openai

from llmservice.kernel.embedding import EmbedRequest, EmbedResult
from llmservice.kernel.errors import (
    ContentFiltered,
    DeadlineExceeded,
    InvalidRequest,
    LLMServiceError,
    NotFound,
    ProviderTimeout,
    Unavailable,
)
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
from llmservice.providers.openai_family import wire
from llmservice.providers.openai_family.settings import (
    AzureOpenAISettings,
    OpenAICompatibleSettings,
    OpenAISettings,
)
from llmservice.providers.remote import openai_shapes
from llmservice.providers.remote.base import RemoteProvider, attachment_text
from llmservice.providers.remote.http import make_client
from llmservice.providers.remote.http_errors import failed_midway, from_status, redact
from llmservice.providers.remote.retry import call_with_retries

log = logging.getLogger(__name__)

MAX_TOP_LOGPROBS = 20  # OpenAI's limit on top_logprobs
MAX_RAW_LOGPROBS = 5  # OpenAI's limit on a raw completion's `logprobs`
_PATH = "/chat/completions"
_RAW_PATH = "/completions"  # a raw prompt, continued with no chat template (the legacy API)
_EMBED_PATH = "/embeddings"

# Sampling parameters beyond OpenAI's, by the name each kind of server reads them under
# (llama.cpp and LM Studio say repeat_penalty, vLLM and OpenRouter repetition_penalty).
# A server not named here gets none of them: validate refuses them rather than send a
# field it may drop without a word. TGI's chat endpoint takes OpenAI's parameters only.
_COMMON = {"top_k": "top_k", "min_p": "min_p"}
EXTRAS: dict[str, dict[str, str]] = {
    "generic": {},
    "llamacpp": {**_COMMON, "repetition_penalty": "repeat_penalty"},
    "lmstudio": {**_COMMON, "repetition_penalty": "repeat_penalty"},
    "vllm": {**_COMMON, "repetition_penalty": "repetition_penalty"},
    "openrouter": {**_COMMON, "repetition_penalty": "repetition_penalty"},
    "tgi": {},
}
_EXTRA_FIELDS = ("top_k", "min_p", "repetition_penalty")

Settings = OpenAISettings | AzureOpenAISettings | OpenAICompatibleSettings


class OpenAIFamilyProvider(RemoteProvider):
    """One OpenAI-style upstream: a client, a default model, and what it accepts."""

    strict_tools = True  # passed on as each function's `strict`
    one_call_switch = True  # OpenAI's and Azure's parallel_tool_calls
    raw_prompts = True  # sent to the upstream's /completions, which every server of the family has

    def __init__(
        self,
        name: str,
        settings: Settings,
        make_client: Callable[[httpx.AsyncClient], openai.AsyncOpenAI],
        *,
        default_model: str,
        extras: Mapping[str, str] = {},
        no_extras: str = "has no such parameter",
        only_default_model: bool = False,
        max_tokens_field: str = "max_tokens",
        one_call_switch: bool = True,
    ) -> None:
        super().__init__(name, settings)
        self._settings = settings
        self._make_client = make_client
        self._default_model = default_model
        self._extras = dict(extras)  # domain sampling field -> the name the upstream reads
        self._no_extras = no_extras  # why a sampling field not in extras is refused
        self._only_default_model = only_default_model  # Azure: the URL names the one deployment
        self._max_tokens_field = max_tokens_field  # the chat API's name for the token limit
        self.one_call_switch = one_call_switch
        self._client: openai.AsyncOpenAI | None = None
        self._secrets = [settings.api_key.get_secret_value()] if settings.api_key else []

    @property
    def default_model(self) -> str:
        return self._default_model

    def secrets(self) -> list[str]:
        return self._secrets

    async def start(self) -> None:
        self._client = self._make_client(make_client(self._settings))
        if not self._default_model:  # an OpenAI-compatible server that names its own model
            models = await self._upstream_models()
            if not models:
                raise Unavailable(f"provider {self.name} lists no models; set its model")
            self._default_model = models[0]

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def list_models(self) -> list[ModelInfo]:
        ids: list[str] = []
        if not self._only_default_model:
            try:
                ids = await self._upstream_models()
            except LLMServiceError as exc:
                log.warning("%s: cannot list upstream models: %s", self.name, exc.message)
        if self._default_model not in ids:
            ids.insert(0, self._default_model)
        capabilities = Capabilities(streaming=True, tools=True, vision=True, signals=True)
        return [ModelInfo(i, self.name, capabilities=capabilities) for i in ids]

    def validate(self, model: str, request: ChatRequest) -> None:
        if self._only_default_model and model != self._default_model:
            raise NotFound(
                f"provider {self.name} serves deployment {self._default_model!r} only, not {model!r}"
            )
        for field in _EXTRA_FIELDS:
            if getattr(request.sampling, field) is not None and field not in self._extras:
                raise InvalidRequest(field, f"provider {self.name} {self._no_extras}")
        if request.signals is not None:
            if request.signals.sampler_stages or request.signals.full_distribution:
                raise InvalidRequest(
                    "signal_options",
                    f"provider {self.name} reports top logprobs only: "
                    "no sampler stages and no full distribution",
                )
            limit = MAX_TOP_LOGPROBS if request.raw_prompt is None else MAX_RAW_LOGPROBS
            if request.signals.top_k > limit:
                raise InvalidRequest(
                    "signal_options.top_k",
                    f"provider {self.name} gives at most {limit} top logprobs per token"
                    + ("" if request.raw_prompt is None else " of a raw completion"),
                )
        if request.constraint is not None and request.constraint.kind == "grammar":
            raise InvalidRequest("response_format.grammar", f"provider {self.name} takes no GBNF grammar")
        if request.raw_prompt is not None:
            if request.constraint is not None:
                raise InvalidRequest(
                    "response_format",
                    f"provider {self.name} constrains chat replies only, not raw completions",
                )
            if request.attachments:
                raise InvalidRequest("attachments", "a raw prompt is sent as it is: it takes no attachments")
        self.check_attachments(request, images=("image/",))

    def _stream_body(self, model: str, request: ChatRequest) -> dict[str, Any]:
        body = {**self._body(model, request), "stream": True, "stream_options": {"include_usage": True}}
        if request.signals is not None and request.raw_prompt is not None:
            body["logprobs"] = request.signals.top_k  # the legacy API's: how many top logprobs
        elif request.signals is not None:
            body["logprobs"] = True
            body["top_logprobs"] = request.signals.top_k
        return body

    def _complete_body(self, model: str, request: ChatRequest) -> dict[str, Any]:
        """A whole reply: usage always comes back (some servers leave it out of streams)."""
        return {**self._body(model, request), "stream": False}

    async def embed(self, model: str, request: EmbedRequest) -> EmbedResult:
        """POST /embeddings, as floats; a `dimensions` the upstream did not honour is refused."""
        if self._only_default_model and model != self._default_model:
            raise NotFound(
                f"provider {self.name} serves deployment {self._default_model!r} only, not {model!r}"
            )
        body: dict[str, Any] = {"model": model, "input": list(request.input), "encoding_format": "float"}
        if request.dimensions is not None:
            body["dimensions"] = request.dimensions
        if request.user:
            body["user"] = request.user
        with self._redacted():
            async with self.scheduler.slot(0, None):
                reply = await call_with_retries(lambda: self._post_json(_EMBED_PATH, body, model), self.retry)
        try:
            result = openai_shapes.embeddings(reply)
        except (KeyError, TypeError, ValueError, AttributeError):
            raise Unavailable(f"provider {self.name} sent embeddings that could not be read") from None
        if request.dimensions is not None and any(len(v) != request.dimensions for v in result.vectors):
            raise InvalidRequest("dimensions", f"provider {self.name} did not honour it for model {model}")
        return result

    async def _call(self, body: dict[str, Any], model: str) -> Completion:
        raw = "prompt" in body
        reply = await self._post_json(_RAW_PATH if raw else _PATH, body, model)
        try:
            return self._raw_completion(reply, model) if raw else self._completion(reply, model)
        except (KeyError, TypeError, AttributeError):  # JSON, but not the shape of a reply
            raise Unavailable(f"provider {self.name} sent a reply that could not be read") from None

    async def _post_json(self, path: str, body: dict[str, Any], model: str) -> Any:
        """One whole upstream call's JSON reply; every failure as a domain error."""
        try:
            response = await self._ready().post(path, body=body, cast_to=httpx.Response)
            reply = response.json()
        except openai.APIError as exc:
            raise self._error(exc, model) from None
        except httpx.TimeoutException:
            raise DeadlineExceeded(f"provider {self.name} stopped answering midway") from None
        except httpx.TransportError as exc:
            raise Unavailable(f"provider {self.name} cut the reply midway ({type(exc).__name__})") from None
        except ValueError:
            raise Unavailable(f"provider {self.name} sent a reply that could not be read") from None
        if isinstance(reply, dict) and "error" in reply:  # some servers answer 200 with an error object
            raise self._error_object(reply["error"], model)
        return reply

    def _completion(self, reply: dict[str, Any], model: str) -> Completion:
        if "error" in reply:  # some servers answer 200 with an error object
            raise self._error_object(reply["error"], model)
        choices = reply.get("choices") or []
        if not choices:
            raise Unavailable(f"provider {self.name} answered with no choices")
        message = choices[0].get("message") or {}
        usage = reply.get("usage") or {}
        calls = _tool_calls(message, reply.get("id") or "")
        refusal = openai_shapes.refusal(message)
        return Completion(
            openai_shapes.text_of(message.get("content")) or refusal,
            model,
            self.name,
            wire.finish_reason(
                choices[0].get("finish_reason"), called_tools=bool(calls), refused=bool(refusal)
            ),
            openai_shapes.usage(usage),
            calls,
        )

    def _raw_completion(self, reply: dict[str, Any], model: str) -> Completion:
        """A whole /completions reply: the first choice's text."""
        choices = reply.get("choices") or []
        if not choices:
            raise Unavailable(f"provider {self.name} answered with no choices")
        return Completion(
            choices[0].get("text") or "",
            model,
            self.name,
            wire.FINISH.get(choices[0].get("finish_reason") or "stop", FinishReason.STOP),
            openai_shapes.usage(reply.get("usage") or {}),
        )

    async def _open_stream(self, body: dict[str, Any], model: str) -> AsyncIterator[StreamEvent]:
        ending = _Ending()
        response: httpx.Response | None = None
        raw = "prompt" in body
        try:
            response = await self._ready().post(
                _RAW_PATH if raw else _PATH, body=body, cast_to=httpx.Response, stream=True
            )
            async for sse in httpx_sse.EventSource(response).aiter_sse():
                if sse.data == "[DONE]":
                    break
                if not sse.data:
                    continue
                chunk = json.loads(sse.data)
                if "error" in chunk:  # the upstream failed after it began (vLLM, OpenRouter, ...)
                    raise self._error_object(chunk["error"], model)
                if chunk.get("usage"):
                    ending.usage = openai_shapes.usage(chunk["usage"])
                for choice in (chunk.get("choices") or [])[:1]:
                    events = _raw_choice_events(choice) if raw else _chat_choice_events(choice, chunk)
                    for event in ending.seen(choice, events):
                        yield event
        except openai.APIError as exc:
            raise self._error(exc, model) from None
        except httpx.TimeoutException:  # no byte for the read timeout: the upstream stalled
            raise DeadlineExceeded(f"provider {self.name} stopped answering midway") from None
        except httpx.TransportError as exc:  # the connection broke while the stream was read
            raise Unavailable(f"provider {self.name} cut the stream midway ({type(exc).__name__})") from None
        except (ValueError, KeyError, TypeError, AttributeError):  # a frame that is not the JSON expected
            raise Unavailable(f"provider {self.name} sent a stream that could not be read") from None
        finally:
            if response is not None:
                await response.aclose()
        if ending.reason is None:
            raise Unavailable(f"provider {self.name} ended the stream before it finished")
        yield ending.end()

    def _body(self, model: str, request: ChatRequest) -> dict[str, Any]:
        s = request.sampling
        if request.raw_prompt is not None:  # no tools, no response_format: validation refused them
            body: dict[str, Any] = {"model": model, "prompt": request.raw_prompt}
        else:
            body = {"model": model, "messages": _messages(request)}
        if request.tools:
            body["tools"] = openai_shapes.function_tools(request)
        if request.tool_choice is not None:
            body["tool_choice"] = openai_shapes.tool_choice(request.tool_choice)
        if request.tools and request.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = request.parallel_tool_calls
        optional = {
            "temperature": s.temperature if s.temperature is not None else self._settings.temperature,
            "top_p": s.top_p,
            # the legacy API's `max_tokens` for a raw prompt; the chat API's name is the kind's
            "max_tokens" if request.raw_prompt is not None else self._max_tokens_field: s.max_tokens,
            "seed": s.seed,
            "stop": list(s.stop) or None,
            "frequency_penalty": s.frequency_penalty,
            "presence_penalty": s.presence_penalty,
            # the server's own, under its names; validate refused those it lacks
            **{wire: getattr(s, field) for field, wire in self._extras.items()},
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        if request.user:  # the end user, for the upstream's abuse monitoring
            body["user"] = request.user
        if request.constraint is not None:
            if request.constraint.kind == "json_object":
                body["response_format"] = {"type": "json_object"}
            else:
                body["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {"name": "response", "schema": json.loads(request.constraint.text)},
                }
        return body

    async def _upstream_models(self) -> list[str]:
        client = self._ready()
        try:
            page = await client.models.list()
        except openai.APIError as exc:
            raise self._error(exc, "") from None
        return [m.id for m in page.data]

    def _error_object(self, error: object, model: str) -> LLMServiceError:
        """An `{"error": ...}` object in a 200 reply or a stream: by its HTTP-like code if it has one."""
        message = error.get("message") if isinstance(error, dict) else error
        code = error.get("code") if isinstance(error, dict) else None
        text = message if isinstance(message, str) else "an error without a message"
        if isinstance(code, int) and 400 <= code < 600:
            return from_status(self.name, code, text, {}, model=model, secrets=self._secrets)
        return failed_midway(self.name, text, self._secrets)

    def _error(self, exc: openai.APIError, model: str) -> LLMServiceError:
        if isinstance(exc, openai.APITimeoutError):
            if isinstance(exc.__cause__, httpx.ConnectTimeout):
                return ProviderTimeout(f"provider {self.name} did not accept a connection in time")
            return DeadlineExceeded(f"provider {self.name} did not answer in time")
        if isinstance(exc, openai.APIStatusError):
            return self._status_error(exc, model)
        if isinstance(exc, openai.APIConnectionError):
            detail = redact(str(exc.__cause__ or exc), self._secrets)
            return Unavailable(f"provider {self.name} is unreachable: {detail}")
        return Unavailable(f"provider {self.name} failed: {redact(exc.message, self._secrets)}")

    def _status_error(self, exc: openai.APIStatusError, model: str) -> LLMServiceError:
        """An HTTP failure by its status, but for what its error object says more precisely:
        a prompt Azure's content filter refused, a quota no retry will refill."""
        filtered = wire.content_filter_refusal(exc.body)
        if filtered is not None:
            return ContentFiltered(
                "messages",
                filtered,
                message=f"provider {self.name}'s content filter refused the prompt: {filtered}",
            )
        error = from_status(
            self.name,
            exc.status_code,
            _upstream_message(exc),
            exc.response.headers,
            model=model,
            secrets=self._secrets,
        )
        if error.should_retry is None and wire.error_code(exc.body) in wire.NOT_RETRIED_CODES:
            error.should_retry = False
        return error

    def _ready(self) -> openai.AsyncOpenAI:
        if self._client is None:
            raise RuntimeError(f"provider {self.name} used before start()")
        return self._client


def _upstream_message(exc: openai.APIStatusError) -> str:
    """The upstream's own words: `{"error": {"message": ...}}`, or the client's unwrapped body."""
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error")
        message = inner.get("message") if isinstance(inner, dict) else body.get("message")
        if isinstance(message, str):
            return message
    return exc.response.reason_phrase


def _tool_calls(message: dict[str, Any], reply_id: str) -> tuple[ToolCall, ...]:
    """A whole message's function tool calls; the deprecated `functions` API's one
    `function_call`, which has no id, as a call named after the reply."""
    calls = tuple(
        ToolCall(c["id"], c["function"]["name"], c["function"].get("arguments") or "{}")
        for c in message.get("tool_calls") or ()
        if c.get("type", "function") == "function"
    )
    legacy = message.get("function_call")
    if calls or not isinstance(legacy, dict):
        return calls
    return (ToolCall(_legacy_call_id(reply_id), legacy["name"], legacy.get("arguments") or "{}"),)


def _legacy_call_id(reply_id: str) -> str:
    """An id for a `function_call`, which has none: a later turn must name the call it answers."""
    return f"{reply_id or 'call'}-function_call"


@dataclasses.dataclass
class _Ending:
    """What a stream has said of how it ends, chunk by chunk: its finish_reason, whether a
    tool was called or the model refused (which decide the finish), and its usage."""

    reason: str | None = None
    called_tools: bool = False
    refused: bool = False
    usage: Usage = dataclasses.field(default_factory=Usage)

    def seen(self, choice: dict[str, Any], events: list[StreamEvent]) -> list[StreamEvent]:
        """A choice's events, passed on, noted."""
        self.refused = self.refused or bool(openai_shapes.refusal(choice.get("delta") or {}))
        self.called_tools = self.called_tools or any(isinstance(e, ToolCallDelta) for e in events)
        self.reason = choice.get("finish_reason") or self.reason
        return events

    def end(self) -> StreamEnd:
        finish = wire.finish_reason(self.reason, called_tools=self.called_tools, refused=self.refused)
        return StreamEnd(finish, self.usage)


def _chat_choice_events(choice: dict[str, Any], chunk: dict[str, Any]) -> list[StreamEvent]:
    """One streamed chat choice's events: its text, tool calls and signals (the shape every
    OpenAI-style server shares), then what only OpenAI sends: a refusal's words, which
    stream as text, and a deprecated `function_call`'s pieces, as tool call 0."""
    events = openai_shapes.choice_events(choice)
    delta = choice.get("delta") or {}
    refusal = openai_shapes.refusal(delta)
    if refusal:
        entries = (choice.get("logprobs") or {}).get("refusal") or []
        signal = openai_shapes.logprob_signal(entries[-1]) if entries else None
        events.append(TokenDelta(refusal, signal=signal))
    legacy = delta.get("function_call")
    if isinstance(legacy, dict):
        name = legacy.get("name") or ""
        call_id = _legacy_call_id(chunk.get("id") or "") if name else ""
        events.append(ToolCallDelta(0, call_id, name, legacy.get("arguments") or ""))
    return events


def _raw_choice_events(choice: dict[str, Any]) -> list[StreamEvent]:
    """The text of one streamed /completions choice, with signals where logprobs came (the
    legacy shape: parallel lists of tokens, their logprobs and their top logprobs)."""
    text = choice.get("text") or ""
    if not text:
        return []
    logprobs = choice.get("logprobs") or {}
    tokens = logprobs.get("tokens") or []
    tops = logprobs.get("top_logprobs") or [None] * len(tokens)  # a server that lists none
    entries = [
        {
            "token": token,
            "logprob": logprob,
            "top_logprobs": [{"token": t, "logprob": p} for t, p in (top or {}).items()],
        }
        for token, logprob, top in zip(tokens, logprobs.get("token_logprobs") or [], tops, strict=False)
        if logprob is not None
    ]
    if len(entries) > 1 and "".join(e["token"] for e in entries) == text:
        return [TokenDelta(e["token"], signal=openai_shapes.logprob_signal(e)) for e in entries]
    return [TokenDelta(text, signal=openai_shapes.logprob_signal(entries[-1]) if entries else None)]


def _messages(request: ChatRequest) -> list[dict[str, Any]]:
    messages = [openai_shapes.message(m) for m in request.messages]
    if not request.attachments:
        return messages
    parts: list[dict[str, Any]] = []
    for i, a in enumerate(request.attachments):
        if a.mime_type.startswith("image/"):
            url = a.data if a.data.startswith("data:") else f"data:{a.mime_type};base64,{a.data}"
            parts.append({"type": "image_url", "image_url": {"url": url}})
        else:
            parts.append({"type": "text", "text": attachment_text(a, i)})
    last_user = max((i for i, m in enumerate(request.messages) if m.role == "user"), default=None)
    if last_user is None:
        messages.append({"role": "user", "content": parts})
    else:
        text = request.messages[last_user].content
        messages[last_user] = {"role": "user", "content": [{"type": "text", "text": text}, *parts]}
    return messages


def openai_provider(settings: OpenAISettings, name: str = "openai") -> OpenAIFamilyProvider:
    key = settings.api_key.get_secret_value() if settings.api_key else ""
    return OpenAIFamilyProvider(
        name,
        settings,
        lambda http: openai.AsyncOpenAI(
            api_key=key, base_url=settings.base_url, max_retries=0, http_client=http
        ),
        default_model=settings.model,
        max_tokens_field=wire.MAX_TOKENS,
    )


def azure_openai_provider(settings: AzureOpenAISettings, name: str = "azure_openai") -> OpenAIFamilyProvider:
    key = settings.api_key.get_secret_value() if settings.api_key else ""
    return OpenAIFamilyProvider(
        name,
        settings,
        lambda http: openai.AsyncAzureOpenAI(
            api_key=key,
            azure_endpoint=settings.endpoint,
            azure_deployment=settings.deployment,
            api_version=settings.api_version,
            max_retries=0,
            http_client=http,
        ),
        default_model=settings.deployment,
        only_default_model=True,
        max_tokens_field=wire.azure_max_tokens_field(settings.api_version),
    )


def openai_compatible_provider(
    settings: OpenAICompatibleSettings, name: str = "openai_compatible"
) -> OpenAIFamilyProvider:
    key = settings.api_key.get_secret_value() if settings.api_key else "none"
    return OpenAIFamilyProvider(
        name,
        settings,
        lambda http: openai.AsyncOpenAI(
            api_key=key, base_url=settings.base_url, max_retries=0, http_client=http
        ),
        default_model=settings.model,
        extras=EXTRAS[settings.flavour],
        no_extras=_no_extras(settings, name),
        one_call_switch=False,  # TGI and older vLLM read no parallel_tool_calls: keep the first call here
    )


def _no_extras(settings: OpenAICompatibleSettings, name: str) -> str:
    """Why an OpenAI-compatible server is not sent a sampling parameter beyond OpenAI's."""
    if settings.flavour != "generic":
        return f"takes no such parameter (flavour {settings.flavour!r})"
    setting = "openai_compatible.flavour" if name == "openai_compatible" else f"deployments.{name}.flavour"
    return f"takes it only when {setting} names the kind of server (vllm, llamacpp, ...)"
