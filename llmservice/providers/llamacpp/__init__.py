"""In-process llama.cpp backend."""

from llmservice.providers.llamacpp.provider import LlamaCppProvider

__all__ = ["LlamaCppProvider"]
