"""Embeddings in domain terms: the request, what a provider returns, and the checks every request passes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from llmservice.kernel.errors import InvalidRequest

Vector = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class EmbedRequest:
    input: tuple[str, ...]
    model: str = ""
    provider: str = ""
    dimensions: int | None = None  # shorten the vectors to this length, where the model can
    user: str = ""
    # Where each input sits in the caller's request, when a provider is handed only some of
    # them (the rest came from the cache): errors then name the caller's field. Empty: in order.
    positions: tuple[int, ...] = ()

    def field(self, index: int) -> str:
        """The caller's name for input `index` of this request, e.g. input[3]."""
        return f"input[{self.positions[index] if self.positions else index}]"


@dataclass(frozen=True, slots=True)
class EmbedResult:
    """What a provider returns: one vector per input it was given, and the tokens it embedded."""

    vectors: tuple[Vector, ...]
    prompt_tokens: int


@dataclass(frozen=True, slots=True)
class Embeddings:
    """The answer to a caller: one vector per input, in order."""

    vectors: tuple[Vector, ...]
    model: str
    provider: str
    prompt_tokens: int  # embedded for this call; inputs from the cache count none
    cached: int = 0  # inputs answered from the cache


def validate_embed(request: EmbedRequest, max_inputs: int) -> None:
    """Refuse what no provider could answer: no input, too many, an empty one, a bad length."""
    if not request.input:
        raise InvalidRequest("input", "give at least one text to embed")
    if len(request.input) > max_inputs:
        raise InvalidRequest(
            "input", f"{len(request.input)} texts; at most {max_inputs} per call (embeddings.max_inputs)"
        )
    for i, text in enumerate(request.input):
        if not text:
            raise InvalidRequest(f"input[{i}]", "is empty; every input needs some text")
    if request.dimensions is not None and request.dimensions < 1:
        raise InvalidRequest("dimensions", "must be at least 1")


def as_vector(values: object) -> Vector:
    """A float32 vector from a list of numbers (or an array)."""
    return np.asarray(values, dtype=np.float32)
