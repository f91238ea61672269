"""A loaded GGUF model: weights and vocabulary, plus llama.cpp's log lines routed to logging."""

from __future__ import annotations

import ctypes
import functools
import logging
from pathlib import Path

import llama_cpp as llama

from llmservice.providers.llamacpp.offload import ON_CPU, Offload

# llama.cpp's own log lines (model metadata dumps, notes about the GGUF) go to this logger;
# only errors show unless an operator lowers its level.
native_log = logging.getLogger("llama.cpp")
native_log.setLevel(logging.ERROR)
# ggml_log_level: NONE, DEBUG, INFO, WARN, ERROR, CONT (continues the previous line).
_NATIVE_LEVELS = (logging.CRITICAL, logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR)
_last_native_level = logging.DEBUG


# What llama.cpp says when a decode is aborted (ggml status 1, llama_decode 2): the engine
# aborts a step on purpose when a more urgent job arrives, so these are no errors.
_ABORTED_STEP = (
    "graph_compute: ggml_backend_sched_graph_compute_async failed with error 1",
    "process_ubatch: failed to compute graph, compute status: 1",
    "llama_decode: failed to decode, ret = 2",
)


def _forward_native_log(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    global _last_native_level
    if level < len(_NATIVE_LEVELS):
        _last_native_level = _NATIVE_LEVELS[level]
    if native_log.isEnabledFor(_last_native_level):
        line = text.decode(errors="replace").rstrip()
        if _last_native_level == logging.ERROR and line in _ABORTED_STEP:
            _last_native_level = logging.DEBUG  # and so are the lines that continue it
        native_log.log(_last_native_level, "%s", line)


# Replaces llama-cpp-python's forwarder, whose level table predates ggml's DEBUG level
# and so prints every warning as an error.
_native_log_callback = llama.llama_log_callback(_forward_native_log)  # kept referenced: C holds it
llama.llama_log_set(_native_log_callback, ctypes.c_void_p(0))


class LlamaModel:
    """A loaded GGUF: weights and vocabulary. Tokenizing is safe from any thread."""

    def __init__(self, path: Path, offload: Offload = ON_CPU) -> None:
        llama.llama_backend_init()
        params = llama.llama_model_default_params()
        shares = offload.model_params(params)  # C reads the tensor split while the model loads
        # No repacked weight layouts: their kernels take rows in groups of four, so a
        # sequence's logits would change with how many others share its decode step.
        # Measured on the bundled model: single-stream decode no slower without them.
        params.use_extra_bufts = False
        model = llama.llama_model_load_from_file(str(path).encode(), params)
        del shares
        if not model:
            raise ValueError(f"cannot load GGUF model {path}: not a valid GGUF file llama.cpp can read")
        self.path = path
        self.ptr = model
        self.offload = offload
        self.vocab = llama.llama_model_get_vocab(model)
        self.n_vocab = llama.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_train = llama.llama_model_n_ctx_train(model)
        self.size_bytes = llama.llama_model_size(model)
        self._pieces: dict[int, bytes] = {}
        self._texts: dict[int, str] = {}
        # A conversation's messages come back every turn: each is tokenized once.
        self.tokenize_segment = functools.lru_cache(maxsize=4096)(self._tokenize_segment)

    def close(self) -> None:
        if self.ptr:
            llama.llama_model_free(self.ptr)
            self.ptr = None

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode()
        capacity = len(data) + 8
        buf = (llama.llama_token * capacity)()
        n = llama.llama_tokenize(self.vocab, data, len(data), buf, capacity, add_special, parse_special)
        if n < 0:  # a longer result than the guess: -n is the size needed
            capacity = -n
            buf = (llama.llama_token * capacity)()
            n = llama.llama_tokenize(self.vocab, data, len(data), buf, capacity, add_special, parse_special)
        return list(buf[:n])

    def _tokenize_segment(self, text: str, special: bool) -> tuple[int, ...]:
        """A prompt segment's tokens, no BOS added: template text parsed for special tokens, or not."""
        return tuple(self.tokenize(text, add_special=False, parse_special=special))

    def piece(self, token: int) -> bytes:
        """The bytes a token stands for; control tokens give b""."""
        cached = self._pieces.get(token)
        if cached is None:
            cached = self._render(token, special=False)
            self._pieces[token] = cached
        return cached

    def text(self, token: int) -> str:
        """A token's text on its own, for showing candidates (partial characters replaced)."""
        cached = self._texts.get(token)
        if cached is None:
            cached = self._texts[token] = self._render(token, special=True).decode(errors="replace")
        return cached

    def special_text(self, token: int) -> str:
        return self._render(token, special=True).decode(errors="replace")

    def _render(self, token: int, *, special: bool) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = llama.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    def is_end(self, token: int) -> bool:
        return bool(llama.llama_vocab_is_eog(self.vocab, token))

    @property
    def add_bos(self) -> bool:
        return bool(llama.llama_vocab_get_add_bos(self.vocab))

    @property
    def bos_text(self) -> str:
        return self.special_text(llama.llama_vocab_bos(self.vocab))

    @property
    def eos_text(self) -> str:
        return self.special_text(llama.llama_vocab_eos(self.vocab))

    def chat_template(self) -> str | None:
        raw = llama.llama_model_chat_template(self.ptr, None)
        return raw.decode() if raw else None
