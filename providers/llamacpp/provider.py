"""The `llamacpp` provider: a GGUF model run in-process by the llama.cpp engine."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncGenerator
from dataclasses import replace

from llmservice.embedding import EmbedRequest, EmbedResult
from llmservice.errors import InvalidRequest, NotFound
from llmservice.scheduler import Scheduler
from llmservice.settings import LlamaCppSettings, SettingsError, env_name
from llmservice.types import Capabilities, ChatRequest, Message, ModelInfo, StreamEnd, StreamEvent

from ..base import Provider
from . import tools
from .constraint import grammar_for
from .embedder import Embedder
from .engine import Delivery, Engine, Job
from .gguf_info import quantization
from .model import LlamaModel
from .model_file import BUNDLED_MODEL_ID, bundled_model_path
from .prompt import Segment, TemplatePrompt, gemma_prompt
from .sampling import GrammarError, SamplerConfig, check_grammar

log = logging.getLogger(__name__)

# Attachments this text-only engine can read: their text joins the last user message.
_TEXT_TYPES = ("text/", "application/json", "application/xml", "application/yaml")


class LlamaCppProvider(Provider):
    name = "llamacpp"

    def __init__(self, settings: LlamaCppSettings) -> None:
        self._settings = settings
        path = settings.model_path
        self._model_id = settings.model_id or (path.stem if path else BUNDLED_MODEL_ID)
        self._model: LlamaModel | None = None
        self._engine: Engine | None = None
        self._template: TemplatePrompt | None = None
        self._embedder: Embedder | None = None
        self._quantization = ""
        self._size_bytes = 0
        self.scheduler: Scheduler | None = None
        self._sinks: dict[asyncio.AbstractEventLoop, _LoopSink] = {}

    @property
    def default_model(self) -> str:
        return self._model_id

    async def start(self) -> None:
        await asyncio.to_thread(self._load)

    def _load(self) -> None:
        s = self._settings
        path = s.model_path or bundled_model_path(s.cache_dir)
        log.info("loading %s from %s", self._model_id, path)
        try:
            self._model = LlamaModel(path)
        except ValueError as exc:
            raise SettingsError(
                f"llamacpp.model_path [env {env_name(('llamacpp', 'model_path'))}]: {exc}"
            ) from None
        self._quantization = quantization(self._model)
        self._size_bytes = path.stat().st_size
        template = self._model.chat_template()
        if template:
            self._template = TemplatePrompt(template, self._model.bos_text, self._model.eos_text)
        slots = s.n_slots or default_slots()
        if slots > BATCH_INVARIANT_SLOTS:
            log.warning(
                "llamacpp.n_slots=%d: with more than %d sequences in a decode step, a seeded "
                "request's output may depend on what runs beside it",
                slots,
                BATCH_INVARIANT_SLOTS,
            )
        self._engine = Engine(
            self._model,
            n_ctx=s.n_ctx,
            n_batch=s.n_batch,
            n_threads=s.n_threads,
            n_slots=slots,
            n_cached=s.cached_sequences,
            n_seqs=s.max_sequences,
            aging_s=s.aging_s,
        )
        e = s.embeddings
        if e.enabled:
            self._embedder = Embedder(self._model, n_ctx=e.n_ctx, n_seqs=e.n_seqs, n_threads=e.n_threads)
        # The scheduler admits as many as the engine holds; the engine picks which of them
        # decode, which keep a cache, and evicts for more urgent work.
        self.scheduler = Scheduler(
            self._engine.n_seqs, max_waiting=s.max_waiting, aging_s=s.aging_s, clock=time.monotonic
        )
        log.info(
            "loaded %s (%d sequences decoding, %d cached, of %d tokens each; %s chat format)",
            self._model_id,
            slots,
            self._engine.n_cached,
            self._engine.n_ctx,
            "its own" if template else "Gemma",
        )

    async def aclose(self) -> None:
        engine, model, embedder = self._engine, self._model, self._embedder
        self._engine = self._model = self._embedder = None
        if embedder:
            await asyncio.to_thread(embedder.close)
        if engine:
            await asyncio.to_thread(engine.close)
        if model:
            model.close()

    async def list_models(self) -> list[ModelInfo]:
        n_ctx = self._engine.n_ctx if self._engine else self._settings.n_ctx
        return [
            ModelInfo(
                self._model_id,
                self.name,
                n_ctx,
                loaded=self._engine is not None,
                capabilities=Capabilities(
                    streaming=True, tools=True, signals=True, embeddings=self._settings.embeddings.enabled
                ),
                quantization=self._quantization,
                size_bytes=self._size_bytes,
            )
        ]

    def validate(self, model: str, request: ChatRequest) -> None:
        self._check_model(model)
        if request.tools and request.constraint is not None:
            raise InvalidRequest(
                "response_format", "the local engine constrains replies to tool calls already"
            )
        if request.tools and request.signals is not None:
            raise InvalidRequest(
                "signal_options", "with tools the reply is held back whole: no per-token signals"
            )
        for i, attachment in enumerate(request.attachments):
            if not attachment.mime_type.startswith(_TEXT_TYPES):
                raise InvalidRequest(
                    f"attachments[{i}].mime_type",
                    f"model {model} reads text only and cannot use {attachment.mime_type or 'an untyped'!r} "
                    "attachments (text/*, application/json, application/xml, application/yaml are read)",
                )
        if request.constraint is not None and self._model is not None:
            try:
                check_grammar(self._model, grammar_for(request.constraint))
            except (GrammarError, ValueError) as exc:
                raise InvalidRequest(f"response_format.{request.constraint.kind}", str(exc)) from None
        if request.tools and self._model is not None:
            constraint = tools.with_tools(request).constraint
            assert constraint is not None
            try:
                check_grammar(self._model, grammar_for(constraint))
            except (GrammarError, ValueError) as exc:
                raise InvalidRequest("tools", f"a tool's parameters cannot be enforced: {exc}") from None

    async def embed(self, model: str, request: EmbedRequest) -> EmbedResult:
        self._check_model(model)
        embedder = self._embedder
        if embedder is None:
            raise InvalidRequest(
                "model",
                f"provider {self.name} serves no embeddings here (llamacpp.embeddings.enabled is off)",
            )
        if request.dimensions is not None and request.dimensions != embedder.n_embd:
            raise InvalidRequest(
                "dimensions", f"model {model} gives vectors of {embedder.n_embd} dimensions only"
            )
        tokens = [embedder.tokenize(text) for text in request.input]
        for i, t in enumerate(tokens):
            if len(t) > embedder.n_ctx:
                raise InvalidRequest(
                    request.field(i),
                    f"is {len(t)} tokens; model {model} embeds at most {embedder.n_ctx} "
                    "(llamacpp.embeddings.n_ctx)",
                )
        total, limit = sum(map(len, tokens)), self._settings.embeddings.max_request_tokens
        if total > limit:
            raise InvalidRequest(
                "input",
                f"is {total} tokens in all; model {model} embeds at most {limit} per call "
                "(llamacpp.embeddings.max_request_tokens): split it into several calls",
            )
        vectors = await embedder.embed(tokens)
        return EmbedResult(tuple(vectors), sum(map(len, tokens)))

    def _check_model(self, model: str) -> None:
        if model != self._model_id:
            raise NotFound(
                f"model {model!r} is not served by provider {self.name}; it serves {self._model_id!r}"
            )

    async def stream(self, model: str, request: ChatRequest) -> AsyncGenerator[StreamEvent]:
        if request.tools and (request.tool_choice is None or request.tool_choice.mode != "none"):
            events = tools.call_tools(lambda r: self._generate(model, r), request)
        else:
            plain = replace(request, messages=tools.plain_turns(request.messages), tools=(), tool_choice=None)
            events = self._generate(model, plain)
        async with contextlib.aclosing(events) as running:
            async for event in running:
                yield event

    async def _generate(self, model: str, request: ChatRequest) -> AsyncGenerator[StreamEvent]:
        engine, scheduler = self._ready()
        prompt = self._tokenize(_with_attachments(request))
        if len(prompt) >= engine.n_ctx:
            raise InvalidRequest(
                "messages",
                f"the prompt is {len(prompt)} tokens; model {model} holds "
                f"{engine.n_ctx} tokens of context, and at least one must be left to answer",
            )
        s = request.sampling
        temperature = self._settings.temperature if s.temperature is None else s.temperature
        events: asyncio.Queue[StreamEvent | BaseException] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        job = Job(
            prompt=prompt,
            max_tokens=s.max_tokens or self._settings.max_tokens,
            sampler=SamplerConfig(
                temperature=temperature,
                top_p=s.top_p,
                top_k=s.top_k,
                min_p=s.min_p,
                repetition_penalty=s.repetition_penalty,
                seed=s.seed,
                grammar=grammar_for(request.constraint) if request.constraint else None,
            ),
            deliver=events.put_nowait,
            sink=self._sink_for(loop),
            stop=s.stop,
            priority=request.priority,
            signals=request.signals,
        )
        async with scheduler.slot(request.priority, request.deadline):
            engine.submit(job)
            try:
                while True:
                    event = await events.get()
                    if isinstance(event, BaseException):
                        raise event
                    yield event
                    if isinstance(event, StreamEnd):
                        return
            finally:
                job.cancel()

    @property
    def slots(self) -> int:
        return self._engine.n_slots if self._engine else 0

    @property
    def preemptions(self) -> int:
        return self._engine.preemptions if self._engine else 0

    @property
    def held_sequences(self) -> int:
        """Jobs in the engine: decoding, paused, evicted or about to start."""
        return self._engine.held if self._engine else 0

    @property
    def evictions(self) -> int:
        return self._engine.evictions if self._engine else 0

    @property
    def tokens_generated(self) -> int:
        return self._engine.tokens_generated if self._engine else 0

    def _sink_for(self, loop: asyncio.AbstractEventLoop) -> _LoopSink:
        sink = self._sinks.get(loop)
        if sink is None:
            sink = self._sinks[loop] = _LoopSink(loop)
        return sink

    def _ready(self) -> tuple[Engine, Scheduler]:
        if self._engine is None or self.scheduler is None:
            raise RuntimeError("llamacpp provider used before start()")
        return self._engine, self.scheduler

    def _tokenize(self, messages: tuple[Message, ...]) -> list[int]:
        assert self._model is not None
        if self._template is None:
            segments = gemma_prompt(messages)
        else:
            try:
                segments = self._template(messages)
            except ValueError as exc:  # the template's own raise_exception: a conversation it refuses
                raise InvalidRequest("messages", str(exc)) from None
        return _tokenize_segments(self._model, segments)


def _tokenize_segments(model: LlamaModel, segments: list[Segment]) -> list[int]:
    tokens: list[int] = []
    if model.add_bos and not (
        segments and segments[0].special and segments[0].text.startswith(model.bos_text)
    ):
        tokens += model.tokenize(model.bos_text, add_special=False, parse_special=True)
    for segment in segments:
        tokens += model.tokenize(segment.text, add_special=False, parse_special=segment.special)
    return tokens


def _with_attachments(request: ChatRequest) -> tuple[Message, ...]:
    """Text attachments appended to the last user message, each under its file name."""
    if not request.attachments:
        return request.messages
    notes = "".join(
        f"\n\n[attachment {a.filename or i + 1}]\n{a.data}" for i, a in enumerate(request.attachments)
    )
    messages = list(request.messages)
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=None)
    if last_user is None:
        messages.append(Message("user", notes.lstrip()))
    else:
        messages[last_user] = Message("user", messages[last_user].content + notes)
    return tuple(messages)


# Decode steps of up to this many rows give each sequence the logits it gets alone.
# From 8 rows on, llama.cpp's CPU kernels group the work differently and logits move
# (by up to 1.0 on the bundled model), so a seeded request would answer differently
# depending on its neighbours.
BATCH_INVARIANT_SLOTS = 7


def default_slots() -> int:
    """Sequences decoded together: decode is memory-bound, so a few per core pay off."""
    return max(2, min(4, 2 * (os.cpu_count() or 1)))


class _LoopSink:
    """Hands a step's events to an event loop in one wake-up."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def post(self, deliveries: list[Delivery]) -> None:
        self._loop.call_soon_threadsafe(_deliver, deliveries)


def _deliver(deliveries: list[Delivery]) -> None:
    for deliver, event in deliveries:
        deliver(event)
