"""GGUF file types by name, and ModelInfo's new fields on the wire."""

from __future__ import annotations

from llmservice.grpc_api import codec
from llmservice.kernel.types import Capabilities, ModelInfo
from llmservice.providers.llamacpp.gguf_info import FILE_TYPES


def test_file_types_have_their_usual_names() -> None:
    assert (FILE_TYPES[0], FILE_TYPES[1], FILE_TYPES[7], FILE_TYPES[15]) == ("F32", "F16", "Q8_0", "Q4_K_M")


def test_quantization_and_size_reach_the_wire() -> None:
    (m,) = codec.encode_models(
        [ModelInfo("x", "llamacpp", 4096, quantization="Q6_K", size_bytes=5 << 30)]
    ).models
    assert (m.quantization, m.size_bytes, m.context_length) == ("Q6_K", 5 << 30, 4096)


def test_a_completion_only_model_says_so_on_the_wire() -> None:
    base = ModelInfo("base", "llamacpp", capabilities=Capabilities(tools=False, completion_only=True))
    chat, completion = codec.encode_models([ModelInfo("chat", "llamacpp"), base]).models
    assert (chat.capabilities.completion_only, completion.capabilities.completion_only) == (False, True)
