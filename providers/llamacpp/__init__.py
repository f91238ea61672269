"""In-process llama.cpp backend."""

from .provider import LlamaCppProvider

__all__ = ["LlamaCppProvider"]
