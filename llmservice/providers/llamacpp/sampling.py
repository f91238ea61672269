"""Per-sequence sampling with llama.cpp's sampler chain, and per-token signals.

Without signals a token is drawn by `llama_sampler_sample`, all in C. With them the
same chain runs stage by stage over a candidate array we own, so each stage can be
looked at, and the token is the one the last stage picked: the stages are the truth,
and the output is the same with signals on or off.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import llama_cpp as llama
import numpy as np

from llmservice.kernel import signals
from llmservice.kernel.types import Candidate, SamplerStage, SignalOptions, TokenSignal
from llmservice.providers.llamacpp.model import LlamaModel

_RANDOM_SEED = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: llama.cpp picks a random seed
PENALTY_WINDOW = 64  # tokens the repetition penalty looks back over
STAGE_TOP = 5


@dataclass(frozen=True, slots=True)
class SamplerConfig:
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    seed: int | None = None
    grammar: str | None = None  # GBNF with a `root` rule


class GrammarError(ValueError):
    """llama.cpp could not parse the grammar."""


class Sampler:
    """A llama.cpp sampler chain for one sequence, in llama.cpp's own stage order."""

    def __init__(self, model: LlamaModel, config: SamplerConfig) -> None:
        self.model = model
        self.chain = llama.llama_sampler_chain_init(llama.llama_sampler_chain_default_params())
        self.penalties = None
        self.plain_greedy = False
        if config.repetition_penalty is not None and config.repetition_penalty != 1.0:
            self.penalties = llama.llama_sampler_init_penalties(
                model.n_vocab, PENALTY_WINDOW, config.repetition_penalty, 0.0, 0.0
            )
            self._add(self.penalties)
        # OpenAI's penalties count the output only (the prompt is not accepted into them).
        frequency, presence = config.frequency_penalty or 0.0, config.presence_penalty or 0.0
        output_penalties = frequency != 0 or presence != 0
        if output_penalties:
            self._add(
                llama.llama_sampler_init_penalties(model.n_vocab, PENALTY_WINDOW, 1.0, frequency, presence)
            )
        if config.grammar is not None:
            # Before any truncation, so the survivors always include tokens the grammar allows.
            try:
                self._add(_grammar_sampler(model, config.grammar))
            except GrammarError:
                self.close()
                raise
        # Plain greedy needs no candidate array: argmax over the logits view gives the same
        # token (the first of equal maxima, as llama.cpp's greedy sampler) at a tenth of the cost.
        self.plain_greedy = (
            config.temperature <= 0
            and self.penalties is None
            and not output_penalties
            and config.grammar is None
        )
        if config.temperature <= 0:
            self._add(llama.llama_sampler_init_greedy())
            return
        if config.top_k:
            self._add(llama.llama_sampler_init_top_k(config.top_k))
        if config.top_p is not None and config.top_p < 1:
            self._add(llama.llama_sampler_init_top_p(config.top_p, 1))
        if config.min_p:
            self._add(llama.llama_sampler_init_min_p(config.min_p, 1))
        self._add(llama.llama_sampler_init_temp(config.temperature))
        seed = _RANDOM_SEED if config.seed is None else config.seed % _RANDOM_SEED
        self._add(llama.llama_sampler_init_dist(seed))

    def _add(self, sampler: llama.llama_sampler_p) -> None:
        llama.llama_sampler_chain_add(self.chain, sampler)

    def accept_prompt(self, tokens: list[int]) -> None:
        """The repetition penalty also counts the prompt's tokens."""
        if self.penalties is not None:
            for token in tokens[-PENALTY_WINDOW:]:
                llama.llama_sampler_accept(self.penalties, token)

    def sample(self, ctx: llama.llama_context_p, row: int) -> int:
        if self.plain_greedy:
            logits = np.ctypeslib.as_array(llama.llama_get_logits_ith(ctx, row), shape=(self.model.n_vocab,))
            return int(np.argmax(logits))
        return int(llama.llama_sampler_sample(self.chain, ctx, row))

    def sample_logits(self, logits: np.ndarray) -> int:
        """The pick `sample` makes, from logits kept aside (a cached prompt's last token).

        `llama_sampler_sample` is this: the chain applied over (id, logit, 0) for every
        token, then the pick accepted.
        """
        if self.plain_greedy:
            return int(np.argmax(logits))
        n = logits.shape[0]
        data = (llama.llama_token_data * n)()
        view = np.ctypeslib.as_array(data)
        view["id"], view["logit"], view["p"] = np.arange(n, dtype=np.int32), logits, 0.0
        cur = llama.llama_token_data_array(data=data, size=n, selected=-1, sorted=False)
        llama.llama_sampler_apply(self.chain, ctypes.byref(cur))
        if cur.selected < 0:
            raise RuntimeError("the sampler chain picked no token")
        token = int(data[cur.selected].id)
        llama.llama_sampler_accept(self.chain, token)
        return token

    def close(self) -> None:
        if self.chain:
            llama.llama_sampler_free(self.chain)  # frees the stages it holds
            self.chain = None


def check_grammar(model: LlamaModel, grammar: str) -> None:
    """Raise GrammarError if llama.cpp cannot parse `grammar`."""
    llama.llama_sampler_free(_grammar_sampler(model, grammar))


def _grammar_sampler(model: LlamaModel, grammar: str) -> llama.llama_sampler_p:
    sampler: llama.llama_sampler_p = llama.llama_sampler_init_grammar(model.vocab, grammar.encode(), b"root")
    if not sampler:
        raise GrammarError("llama.cpp could not parse the grammar (GBNF with a `root` rule expected)")
    return sampler


class SignalSampler:
    """Draws tokens through a Sampler stage by stage and reports what each stage left.

    One per engine: its buffers are vocabulary-sized and reused for every token.
    """

    def __init__(self, model: LlamaModel) -> None:
        self.model = model
        n = model.n_vocab
        self._data = (llama.llama_token_data * n)()
        self._view = np.ctypeslib.as_array(self._data)
        self._ids = np.arange(n, dtype=np.int32)
        self._cur = llama.llama_token_data_array(data=self._data, size=n, selected=-1, sorted=False)
        self._work = signals.Workspace(n)

    def sample(
        self,
        sampler: Sampler,
        ctx: llama.llama_context_p | None,
        row: int,
        logits: np.ndarray,
        options: SignalOptions,
    ) -> tuple[int, TokenSignal]:
        """Sample batch row `row`, whose logits are `logits` (a zero-copy view), and describe it.

        With no `ctx`, `logits` were kept aside and are sampled as they are.
        """
        raw = signals.distribution(logits, self._work)
        top = signals.top_indices(logits, options.top_k)
        stages: list[SamplerStage] = []
        if options.sampler_stages and llama.llama_sampler_chain_n(sampler.chain) > 1:
            token = self._staged(sampler, logits, raw, top, stages)
        else:  # no stage before the final pick: only the raw distribution to report
            if options.sampler_stages:
                stages.append(self._raw_stage(logits, raw, top))
            token = sampler.sample(ctx, row) if ctx is not None else sampler.sample_logits(logits)
        probs = [raw.prob(logits[i]) for i in top[:2]]
        signal = TokenSignal(
            confidence=raw.prob(logits[token]),
            entropy=raw.entropy,
            top_gap=probs[0] - probs[1] if len(probs) == 2 else (probs[0] if probs else 0.0),
            top_k=tuple(Candidate(int(i), self.model.text(int(i)), raw.prob(logits[i])) for i in top),
            full_distribution=signals.probabilities(logits, raw) if options.full_distribution else None,
            stages=tuple(stages),
        )
        return token, signal

    def _reset(self, logits: np.ndarray) -> None:
        self._view["id"] = self._ids
        self._view["logit"] = logits
        self._view["p"] = 0.0
        cur = self._cur
        cur.data, cur.size, cur.selected, cur.sorted = self._data, self.model.n_vocab, -1, False

    def _staged(
        self,
        sampler: Sampler,
        logits: np.ndarray,
        raw: signals.Distribution,
        top: np.ndarray,
        stages: list[SamplerStage],
    ) -> int:
        stages.append(self._raw_stage(logits, raw, top))
        self._reset(logits)
        n = llama.llama_sampler_chain_n(sampler.chain)
        for i in range(n):
            stage = llama.llama_sampler_chain_get(sampler.chain, i)
            llama.llama_sampler_apply(stage, ctypes.byref(self._cur))
            if i < n - 1:  # the last one only picks: its result is the token
                stages.append(self._snapshot(llama.llama_sampler_name(stage).decode().replace("-", "_")))
        return self._accept(sampler)

    def _raw_stage(self, logits: np.ndarray, raw: signals.Distribution, top: np.ndarray) -> SamplerStage:
        """The first snapshot: every token, before any sampler ran."""
        top5 = tuple(Candidate(int(i), self.model.text(int(i)), raw.prob(logits[i])) for i in top[:STAGE_TOP])
        return SamplerStage("logits", logits.shape[0], top5[0].prob if top5 else 0.0, raw.entropy, top5)

    def _snapshot(self, name: str) -> SamplerStage:
        cur = self._cur
        view = np.ctypeslib.as_array(cur.data, shape=(cur.size,))
        logits = np.ascontiguousarray(view["logit"])
        alive = int(np.count_nonzero(np.isfinite(logits)))
        dist = signals.distribution(logits, self._work)
        best = signals.top_indices(logits, STAGE_TOP)
        top = tuple(
            Candidate(int(view["id"][i]), self.model.text(int(view["id"][i])), dist.prob(logits[i]))
            for i in best
            if np.isfinite(logits[i])
        )
        return SamplerStage(name, alive, top[0].prob if top else 0.0, dist.entropy, top)

    def _accept(self, sampler: Sampler) -> int:
        cur = self._cur
        if cur.selected < 0:
            raise RuntimeError("the sampler chain picked no token")
        token = int(cur.data[cur.selected].id)
        llama.llama_sampler_accept(sampler.chain, token)
        return token
