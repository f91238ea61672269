"""Any GGUF path can be configured; a file llama.cpp cannot read fails at start-up, named."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmservice.kernel.settings import SettingsError
from llmservice.kernel.types import ChatRequest, Message, Sampling, StreamEnd
from llmservice.providers.llamacpp.model_file import bundled_model_path
from llmservice.providers.llamacpp.provider import LlamaCppProvider
from llmservice.providers.llamacpp.settings import LlamaCppSettings


async def test_a_configured_gguf_is_served_under_its_file_name(tmp_path: Path) -> None:
    link = tmp_path / "my-model.gguf"
    link.symlink_to(bundled_model_path(LlamaCppSettings().cache_dir))
    async with LlamaCppProvider(LlamaCppSettings(model_path=link, n_ctx=512)) as provider:
        [info] = await provider.list_models()
        assert (info.id, info.context_length, info.loaded) == ("my-model", 512, True)
        request = ChatRequest((Message("user", "Hi"),), sampling=Sampling(max_tokens=2))
        provider.validate("my-model", request)
        events = [e async for e in provider.stream("my-model", request)]
        assert isinstance(events[-1], StreamEnd)
        assert events[-1].usage.completion_tokens == 2


async def test_a_file_that_is_not_gguf_fails_naming_the_setting(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.gguf"
    bogus.write_text("not a model")
    with pytest.raises(SettingsError, match=r"llamacpp\.model_path .*notes\.gguf"):
        async with LlamaCppProvider(LlamaCppSettings(model_path=bogus)):
            pass
