"""What a loaded GGUF says about itself: metadata values and its quantisation's name."""

from __future__ import annotations

import ctypes
from pathlib import Path

import llama_cpp as llama

from llmservice.providers.llamacpp.model import LlamaModel

_GUESSED = llama.LLAMA_FTYPE_GUESSED  # a flag or'ed in when llama.cpp inferred the type
# llama_ftype numbers to their usual names (15 -> Q4_K_M), from llama.cpp's own constants.
FILE_TYPES: dict[int, str] = {
    getattr(llama, name): name.removeprefix("LLAMA_FTYPE_MOSTLY_").removeprefix("LLAMA_FTYPE_ALL_")
    for name in dir(llama)
    if name.startswith("LLAMA_FTYPE_") and name != "LLAMA_FTYPE_GUESSED"
}


def meta(model: LlamaModel, key: str) -> str | None:
    """A metadata value as text, or None when the GGUF has no such key."""
    buf = ctypes.create_string_buffer(256)
    n = llama.llama_model_meta_val_str(model.ptr, key.encode(), buf, len(buf))
    return buf.value.decode(errors="replace") if n >= 0 else None


def quantization(model: LlamaModel) -> str:
    """general.file_type by name (e.g. Q4_K_M); "" when the GGUF does not say."""
    raw = meta(model, "general.file_type")
    if raw is None or not raw.isdigit():
        return ""
    code = int(raw) & ~_GUESSED
    return FILE_TYPES.get(code, f"file_type {code}")


def has_chat_template(path: Path) -> bool:
    """Whether a GGUF carries tokenizer.chat_template, read without loading its weights."""
    llama.llama_backend_init()  # idempotent; a model may not have been loaded yet
    params = llama.llama_model_default_params()
    params.vocab_only = True
    model = llama.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        return False
    try:
        return bool(llama.llama_model_chat_template(model, None))
    finally:
        llama.llama_model_free(model)
