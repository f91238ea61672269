"""POST /v1/completions, OpenAI's legacy Completions API, over LLMService: decode, call, encode.

Each prompt is continued as it is, with no chat template: it goes on the wire as
`raw_prompt`, which a provider with no raw completion refuses (a 400 naming `prompt`).
`prompt` is a string or a list of strings; each prompt gets `n` choices, all generated
at once, and choice prompt_index * n + i is the i-th of that prompt (sampled with seed + i,
as for chat). `logprobs` (0 .. 5) comes from StreamChat's per-token signals, in the legacy
shape (parallel lists of tokens, their logprobs, their likeliest alternatives and their
offsets in the choice's text). What the service cannot honour is a 400 naming it: token-id
prompts, `suffix` (insertion), `logit_bias`, a `best_of` other than n, `echo` with
`logprobs` (there are no prompt logprobs), unknown fields.

As for chat, a stream is answered only once each choice's first chunk has come back (so an
unknown model is an ordinary HTTP error), one that fails later ends with an error frame,
and a client that goes away cancels the calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any, Literal

import grpc
from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice._pb.llmservice.v1 import llm_service_pb2_grpc as pb_grpc
from llmservice.rest.disconnect import all_of, cancelled_on_disconnect
from llmservice.rest.errors import from_grpc, invalid
from llmservice.rest.event_stream import line_safe
from llmservice.rest.openai import codec
from llmservice.rest.openai import protocol as oa
from llmservice.rest.params import refuse_unknown

Metadata = tuple[tuple[str, str], ...]

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for completions
MAX_LOGPROBS = 5  # OpenAI's limit on the legacy `logprobs`
MAX_GENERATIONS = 128  # prompts x n: each is a generation of its own


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # unknown fields are refused by name, not dropped

    # Token ids are parsed only to be refused by name (to_grpc).
    prompt: str | list[str] | list[int] | list[list[int]]
    model: str = ""
    max_tokens: int | None = Field(DEFAULT_MAX_TOKENS, le=oa.INT32_MAX)
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = Field(None, ge=1, le=oa.MAX_CHOICES)
    best_of: int | None = None
    stream: bool | None = False
    stream_options: oa.StreamOptions | None = None
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    user: str | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    suffix: str | None = None
    logit_bias: dict[str, float] | None = None
    # Extensions: the service's own parameters, as on chat completions.
    priority: int | None = Field(
        None, ge=oa.INT32_MIN, le=oa.INT32_MAX, description="0 interactive ... 10 background (or x-priority)"
    )
    top_k: int | None = Field(None, ge=0, le=oa.INT32_MAX)
    min_p: float | None = None
    repetition_penalty: float | None = None
    cache_salt: str | None = Field(
        None, description="partitions prompt-cache reuse (vLLM's field; at most 256 characters)"
    )


# Replies, as the openai SDK's types have them (openai.types.completion); field order is
# wire order, and `dump` writes the fields their builder set (usage: the whole reply's, and
# a stream's usage chunk only).

FinishReason = Literal["stop", "length", "content_filter"]


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]  # None: a piece of text that came with no signal
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]  # where each token starts in the choice's text


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: CompletionLogprobs | None
    finish_reason: FinishReason | None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: oa.Usage | None = None


def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON schema with its $defs put in place: the document has no home for them here."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    inlined: dict[str, Any] = walk(schema)
    return inlined


# The body is parsed by the handler (parse_body), so the document is told its schema here.
BODY_DOC: dict[str, Any] = {
    "parameters": [codec.PRIORITY_HEADER_DOC],
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": _inlined(CompletionRequest.model_json_schema())}},
    },
}

_FINISH: dict[int, FinishReason] = {
    pb.FINISH_REASON_STOP: "stop",
    pb.FINISH_REASON_LENGTH: "length",
    pb.FINISH_REASON_CONTENT_FILTER: "content_filter",
}


def to_grpc(req: CompletionRequest, priority_header: str | None) -> list[pb.LLMChatRequest]:
    """The service requests, one per choice in choice order (prompt by prompt, n each);
    anything the service would not honour is a 400 naming it."""
    _refuse_unsupported(req)
    prompts = _prompts(req.prompt)
    n = req.n or 1
    if len(prompts) * n > MAX_GENERATIONS:
        raise invalid(
            "n" if n > 1 else "prompt",
            f"{len(prompts)} prompts x n={n} are {len(prompts) * n} generations; "
            f"at most {MAX_GENERATIONS} are allowed",
        )
    base = pb.LLMChatRequest(
        model=req.model,
        priority=codec.priority(req.priority, priority_header),
        user=req.user or "",
        cache_salt=req.cache_salt or "",
    )
    max_tokens = DEFAULT_MAX_TOKENS if req.max_tokens is None else req.max_tokens
    if max_tokens < 1:
        raise invalid("max_tokens", f"{max_tokens} is not a positive count")
    base.max_tokens = max_tokens
    for field in codec.SAMPLING:
        value = getattr(req, field)
        if value is not None:
            setattr(base, field, value)
    if req.stop is not None:
        base.stop.extend([req.stop] if isinstance(req.stop, str) else req.stop)
    if req.logprobs is not None:
        base.signal_options.top_k = max(req.logprobs, 1)  # 0 on the wire would mean 10
    out: list[pb.LLMChatRequest] = []
    for prompt in prompts:
        one = pb.LLMChatRequest()
        one.CopyFrom(base)
        one.raw_prompt = prompt
        out.extend(codec.choices(one, n))
    return out


def _refuse_unsupported(req: CompletionRequest) -> None:
    refuse_unknown(req)
    if req.suffix:
        raise invalid("suffix", "insertion is not supported: a prompt is only continued")
    if req.logit_bias:
        raise invalid("logit_bias", "is not supported")
    if req.best_of is not None and req.best_of != (req.n or 1):
        raise invalid("best_of", f"only best_of = n ({req.n or 1}) is supported: every choice is returned")
    if req.echo and req.logprobs is not None:
        raise invalid("echo", "echo with logprobs is not supported: there are no logprobs of the prompt")


def _prompts(prompt: str | list[str] | list[int] | list[list[int]]) -> list[str]:
    if isinstance(prompt, str):
        if not prompt:
            raise invalid("prompt", "is empty: there is nothing to continue")
        return [prompt]
    if not prompt:
        raise invalid("prompt", "is an empty list: there is nothing to continue")
    texts: list[str] = []
    for i, p in enumerate(prompt):
        if not isinstance(p, str):
            raise invalid("prompt", "token ids are not supported: send the prompt as text")
        if not p:
            raise invalid(f"prompt[{i}]", "is empty: there is nothing to continue")
        texts.append(p)
    return texts


async def completions(
    stub: pb_grpc.LLMServiceAsyncStub,
    req: CompletionRequest,
    request: Request,
    metadata: Metadata,
    priority: str | None,
) -> Response:
    msgs = to_grpc(req, priority)
    n = req.n or 1
    echoes = [m.raw_prompt if req.echo else "" for m in msgs]
    if req.stream:
        calls = [stub.StreamChat(m, metadata=metadata) for m in msgs]
        async with cancelled_on_disconnect(request, *calls):  # it may wait in the queue
            firsts = await all_of(calls, [c.read() for c in calls])
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        frames = _frames(calls, firsts, echoes, n, include_usage, req.logprobs)
        return StreamingResponse(
            frames, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )
    parts: list[_Choice]
    if req.logprobs is not None:  # per-token signals only come with StreamChat
        streams = [stub.StreamChat(m, metadata=metadata) for m in msgs]
        async with cancelled_on_disconnect(request, *streams):
            parts = await all_of(streams, [_collect(c, req.logprobs) for c in streams])
    else:
        unary = [stub.Chat(m, metadata=metadata) for m in msgs]
        async with cancelled_on_disconnect(request, *unary):
            replies = await all_of(unary, unary)
        parts = [(r, r.content, None) for r in replies]
    body = Completion(
        id=_completion_id(),
        object="text_completion",
        created=int(time.time()),
        model=parts[0][0].model,
        choices=[
            CompletionChoice(
                text=echo + text,
                index=i,
                logprobs=logprobs,
                finish_reason=_FINISH.get(last.finish_reason, "stop"),
            )
            for i, ((last, text, logprobs), echo) in enumerate(zip(parts, echoes, strict=True))
        ],
        usage=_usage([p[0] for p in parts], n),
    )
    return Response(oa.dump(body), media_type="application/json")


# One choice of a whole reply: the reply (or its stream's last chunk), its text, its logprobs.
_Choice = tuple[pb.LLMChatResponse | pb.LLMChatChunk, str, CompletionLogprobs | None]


async def _collect(call: Any, top: int) -> _Choice:
    """A whole choice from StreamChat, for requests that want logprobs."""
    text: list[str] = []
    logprobs = CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
    last = pb.LLMChatChunk()
    offset = 0
    async for chunk in call:
        last = chunk
        if chunk.token:
            entry = _logprobs(chunk, top, offset)
            logprobs.tokens += entry.tokens
            logprobs.token_logprobs += entry.token_logprobs
            logprobs.top_logprobs += entry.top_logprobs
            logprobs.text_offset += entry.text_offset
            text.append(chunk.token)
            offset += len(chunk.token)
    return last, "".join(text), logprobs


def _logprobs(chunk: pb.LLMChatChunk, top: int, offset: int) -> CompletionLogprobs:
    """The legacy logprobs of one chunk's text, which starts at `offset` in its choice's text:
    its logprob and its `top` likeliest alternatives, the chosen token always among them."""
    if not chunk.HasField("signal"):  # text released with no token of its own (held for a stop)
        return CompletionLogprobs(
            tokens=[chunk.token], token_logprobs=[None], top_logprobs=[None], text_offset=[offset]
        )
    entry = codec.logprob(chunk, top)
    alternatives: dict[str, float] = {}
    for candidate in entry.top_logprobs:  # likeliest first: two with the same text keep the likelier
        alternatives.setdefault(candidate.token, candidate.logprob)
    alternatives.setdefault(entry.token, entry.logprob)
    return CompletionLogprobs(
        tokens=[entry.token],
        token_logprobs=[entry.logprob],
        top_logprobs=[alternatives],
        text_offset=[offset],
    )


def _usage(lasts: Sequence[pb.LLMChatResponse | pb.LLMChatChunk | None], n: int) -> oa.Usage:
    """The usage of all choices (`lasts`, in choice order; None: a stream that ended without
    its final chunk): each prompt counted once, every choice's completion tokens."""
    prompt = cached = completion = 0
    for start in range(0, len(lasts), n):
        group = [last for last in lasts[start : start + n] if last is not None]
        if group:
            prompt += group[0].prompt_tokens
            cached += group[0].cached_prompt_tokens
        completion += sum(last.completion_tokens for last in group)
    return oa.Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=oa.PromptTokensDetails(cached_tokens=cached),
    )


async def _frames(
    calls: list[Any],
    firsts: list[Any],
    echoes: list[str],
    n: int,
    include_usage: bool,
    top: int | None,
) -> AsyncIterator[bytes]:
    """Each choice's chunks as they come, under its index; [DONE] once all have ended."""
    frames = _Frames(getattr(firsts[0], "model", ""))
    offsets = [0] * len(calls)
    lasts: list[pb.LLMChatChunk | None] = [None] * len(calls)
    try:
        echoed = [frames.choice(text, i) for i, text in enumerate(echoes) if text]
        if echoed:
            yield b"".join(echoed)
        async with contextlib.aclosing(_chunks_of_all(calls, firsts)) as chunks:
            async for index, chunk in chunks:
                if chunk.done:
                    lasts[index] = chunk
                    yield frames.choice("", index, finish=_FINISH.get(chunk.finish_reason, "stop"))
                elif chunk.token:
                    logprobs = None if top is None else _logprobs(chunk, top, offsets[index])
                    offsets[index] += len(chunk.token)
                    yield frames.choice(chunk.token, index, logprobs)
        if include_usage:
            yield frames.usage(_usage(lasts, n))
        yield b"data: [DONE]\n\n"
    except grpc.aio.AioRpcError as exc:  # failed midway: say so in the stream itself
        yield b"data: " + json.dumps(from_grpc(exc).body()).encode() + b"\n\n"
    finally:
        for call in calls:
            call.cancel()  # the client went away (or we are done): the service stops generating


async def _chunks(call: Any, first: Any) -> AsyncIterator[pb.LLMChatChunk]:
    """One call's chunks, its first already read, up to its final one."""
    chunk = first
    while chunk is not grpc.aio.EOF:
        yield chunk
        if chunk.done:
            return
        chunk = await call.read()


async def _chunks_of_all(calls: list[Any], firsts: list[Any]) -> AsyncGenerator[tuple[int, pb.LLMChatChunk]]:
    """Every call's chunks, with the index of its call, in the order they come."""
    if len(calls) == 1:
        async for chunk in _chunks(calls[0], firsts[0]):
            yield 0, chunk
        return
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

    async def read(index: int, call: Any, first: Any) -> None:
        try:
            async for chunk in _chunks(call, first):
                await queue.put((index, chunk))
            await queue.put((index, None))
        except grpc.aio.AioRpcError as exc:  # it ends the whole stream, with its error
            await queue.put((-1, exc))

    readers = [asyncio.create_task(read(i, *pair)) for i, pair in enumerate(zip(calls, firsts, strict=True))]
    try:
        ended = 0
        while ended < len(calls):
            index, item = await queue.get()
            if index < 0:
                raise item
            if item is None:
                ended += 1
            else:
                yield index, item
    finally:
        for reader in readers:
            reader.cancel()


class _Frames:
    """The event-stream frames of one streamed completion. Its chunks differ only in their
    choice (and the last in its usage), so the rest of a frame is written once per stream."""

    def __init__(self, model: str) -> None:
        self._chunk = Completion(
            id=_completion_id(), object="text_completion", created=int(time.time()), model=model, choices=[]
        )
        # Each frame writes its choice between the halves. `"choices":[]` cannot occur
        # inside a JSON string, where its quotes would be escaped.
        head, tail = _event_json(self._chunk).split(b'"choices":[]')
        self._head, self._tail = b"data: " + head + b'"choices":[', b"]" + tail + b"\n\n"

    def choice(
        self,
        text: str,
        index: int,
        logprobs: CompletionLogprobs | None = None,
        finish: FinishReason | None = None,
    ) -> bytes:
        choice = CompletionChoice(text=text, index=index, logprobs=logprobs, finish_reason=finish)
        return self._head + _event_json(choice) + self._tail

    def usage(self, usage: oa.Usage) -> bytes:
        """The usage chunk (stream_options.include_usage): no choices, the whole reply's usage."""
        return b"data: " + _event_json(self._chunk.model_copy(update={"usage": usage})) + b"\n\n"


def _event_json(reply: BaseModel) -> bytes:
    """oa.dump, safe to put on one line of an event stream."""
    return line_safe(oa.dump(reply))


def _completion_id() -> str:
    return f"cmpl-{uuid.uuid4().hex}"
