"""A GGUF with no chat template is served as a completion-only model, never dressed in some
other family's format; the operator can name a template for it.

`base.gguf` is the bundled file with its `tokenizer.chat_template` key renamed (same length,
so the GGUF stays valid): a model that carries no template, as a base model does.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from llmservice.kernel.errors import InvalidRequest
from llmservice.kernel.settings import SettingsError
from llmservice.kernel.types import ChatRequest, Message, Sampling, TokenDelta
from llmservice.providers.llamacpp.model_file import BUNDLED_MODEL_ID
from llmservice.providers.llamacpp.provider import LlamaCppProvider
from llmservice.providers.llamacpp.settings import LlamaCppSettings

from .test_model_lifecycle import BUNDLED

HI = ChatRequest(
    (Message("system", "You are a helpful AI assistant."), Message("user", "hi")),
    sampling=Sampling(max_tokens=12, temperature=0),
)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("templates")
    data = BUNDLED.read_bytes()
    assert data.count(b"tokenizer.chat_template") == 1
    (where / "base.gguf").write_bytes(data.replace(b"tokenizer.chat_template", b"tokenizer.chat_templatX"))
    return where


def local(models_dir: Path, **settings: object) -> LlamaCppSettings:
    return LlamaCppSettings.model_validate(
        {
            "model_path": BUNDLED,
            "model_id": BUNDLED_MODEL_ID,
            "cache_dir": models_dir,
            "n_ctx": 512,
            "n_slots": 1,
            **settings,
        }
    )


async def reply(p: LlamaCppProvider, model: str) -> str:
    return "".join([e.text async for e in p.stream(model, HI) if isinstance(e, TokenDelta)])


async def test_a_model_without_a_template_is_listed_completion_only_and_chat_is_refused(
    models_dir: Path,
) -> None:
    async with LlamaCppProvider(local(models_dir)) as p:
        listed = {m.id: (m.loaded, m.capabilities.completion_only) for m in await p.list_models()}
        # Known before it is loaded: read from the file's metadata.
        assert listed == {BUNDLED_MODEL_ID: (True, False), "base": (False, True)}
        with pytest.raises(InvalidRequest, match="has no chat template") as refused:
            await reply(p, "base")
        assert refused.value.field == "model"
        assert "llamacpp.chat_template" in str(refused.value)
        # Loaded now, and refused before any stream starts.
        with pytest.raises(InvalidRequest, match="has no chat template"):
            p.validate("base", HI)
        assert {m.id: m.capabilities.completion_only for m in await p.list_models()}["base"]


async def test_the_operator_names_a_template_for_it(models_dir: Path) -> None:
    async with LlamaCppProvider(local(models_dir, chat_templates={"base": "chatml"})) as p:
        assert not {m.id: m.capabilities.completion_only for m in await p.list_models()}["base"]
        # ChatML is SmolLM2's own format (less the default system turn HI replaces): it greets back.
        assert (await reply(p, "base")).startswith("Hello")


async def test_a_configured_model_without_a_template_starts_completion_only(models_dir: Path) -> None:
    settings = local(models_dir, model_path=models_dir / "base.gguf", model_id="base")
    async with LlamaCppProvider(settings) as p:
        with pytest.raises(InvalidRequest, match="has no chat template"):
            p.validate("base", HI)
    async with LlamaCppProvider(settings.model_copy(update={"chat_template": "chatml"})) as p:
        assert (await reply(p, "base")).startswith("Hello")


async def test_a_template_that_cannot_be_used_stops_start_up_naming_the_setting(
    models_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(SettingsError, match=r"llamacpp\.chat_template .*'vicuna' is neither a built-in"):
        async with LlamaCppProvider(local(models_dir, chat_template="vicuna")):
            pass
    broken = tmp_path / "broken.jinja"
    broken.write_text("{% for m in messages %}")
    with pytest.raises(SettingsError, match=r"llamacpp\.chat_template .*does not parse"):
        async with LlamaCppProvider(local(models_dir, chat_template=str(broken))):
            pass
