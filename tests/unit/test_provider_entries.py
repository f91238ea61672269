"""A provider is one entry: settings, variables, pricing, the registry and the docs all
read `llmservice.providers.entries()`, and a third-party package adds a kind through the
`llmservice.providers` entry point group without touching the service."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from llmservice.providers import entries
from llmservice.providers.reference import reference, summary
from llmservice.service.limits.pricing import PriceBook, unpriced
from llmservice.service.settings import DOCUMENTED_ENV, Settings, env_name

ROOT = Path(__file__).resolve().parents[2]


def test_every_kind_is_a_settings_section_with_its_documented_variables() -> None:
    settings = Settings()
    for kind, entry in entries().items():
        assert isinstance(settings.section(kind), entry.settings)
        for variable, key in entry.env.items():
            assert DOCUMENTED_ENV[variable] == (kind, key)
            assert env_name((kind, key)) == variable


def test_paid_kinds_are_the_entries_that_say_so() -> None:
    settings = Settings(**{"openai": {"api_key": "k"}, "ollama": {"model": "m"}})  # ollama is free
    warnings = list(unpriced(settings, PriceBook({})))
    assert len(warnings) == 1
    assert "provider openai (openai) bills per token" in warnings[0]


def test_the_docs_are_written_from_the_entries() -> None:
    """docs/providers.md and the README's table are what `llmservice providers` writes."""
    assert (ROOT / "docs" / "providers.md").read_text() == reference(entries().values()), (
        "run: llmservice providers --reference > docs/providers.md"
    )
    readme = (ROOT / "README.md").read_text()
    table = readme.split("<!-- providers:", 1)[1].split("-->", 1)[1].split("<!-- /providers -->", 1)[0]
    assert table.lstrip("\n") == summary(entries().values()), "paste `llmservice providers` into README.md"


def test_docs_name_no_machine_path() -> None:
    assert str(Path.home()) not in reference(entries().values())


@pytest.fixture
def plugin_path(tmp_path: Path) -> Path:
    """A directory on sys.path holding only the metadata that registers tests.fakes.plugin_provider."""
    dist = tmp_path / "words_provider-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: words-provider\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[llmservice.providers]\nwords = tests.fakes.plugin_provider:ENTRY\n"
    )
    return tmp_path


def _run(plugin_path: Path, script: str, **env: str) -> dict[str, object]:
    """`script` in a fresh interpreter that has the plugin installed; it prints one JSON line."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("LLM", "OPENAI", "WORDS"))}
    environment |= {"PYTHONPATH": os.pathsep.join([str(plugin_path), str(ROOT)]), **env}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        env=environment,
        cwd=plugin_path,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_a_third_party_provider_is_configured_served_and_priced_like_a_built_in(plugin_path: Path) -> None:
    script = """
        import asyncio, json
        from llmservice.kernel.types import ChatRequest, Message
        from llmservice.providers import entries
        from llmservice.service.limits.pricing import PriceBook, unpriced
        from llmservice.service.registry import ProviderRegistry
        from llmservice.service.settings import load_settings

        async def main():
            settings = load_settings()
            async with ProviderRegistry.from_settings(settings) as registry:
                provider, model = registry.resolve("", "")
                reply = await provider.complete(model, ChatRequest((Message("user", "hi"),)))
                deployed, _ = registry.resolve("w2", "")
                again = await deployed.complete("m", ChatRequest((Message("user", "hi"),)))
            print(json.dumps({
                "kinds": list(entries()),
                "default": registry.default,
                "reply": reply.text,
                "deployment": again.text,
                "unpriced": list(unpriced(settings, PriceBook({}))),
            }))

        asyncio.run(main())
    """
    (plugin_path / "llm.toml").write_text('[deployments.w2]\nprovider = "words"\nwords = "from w2"\n')
    result = _run(plugin_path, script, LLM_PROVIDER="words", WORDS_LIST="hello plugin")
    assert result["kinds"] == [*entries(), "words"]  # the built-ins first, then the plugin
    assert result["default"] == "words"
    assert result["reply"] == "hello plugin"
    assert result["deployment"] == "from w2"
    assert any("provider words (words) bills per token" in w for w in result["unpriced"])  # type: ignore[union-attr]


def test_a_third_party_provider_missing_its_settings_is_named_at_start_up(plugin_path: Path) -> None:
    script = """
        import json
        from llmservice.kernel.settings import SettingsError
        from llmservice.service.registry import ProviderRegistry
        from llmservice.service.settings import load_settings

        try:
            ProviderRegistry.from_settings(load_settings())
        except SettingsError as exc:
            print(json.dumps({"error": str(exc)}))
    """
    result = _run(plugin_path, script, LLM_PROVIDER="words")
    assert result["error"] == "provider words is the default but needs WORDS_LIST"


def test_a_kind_declared_twice_is_refused(plugin_path: Path) -> None:
    (plugin_path / "words_provider-1.0.dist-info" / "entry_points.txt").write_text(
        "[llmservice.providers]\nwords = tests.fakes.plugin_provider:ENTRY\n"
        "again = tests.fakes.plugin_provider:ENTRY\n"
    )
    script = """
        import json
        from llmservice.kernel.settings import SettingsError
        from llmservice.providers import entries
        try:
            entries()
        except SettingsError as exc:
            print(json.dumps({"error": str(exc)}))
    """
    result = _run(plugin_path, script)
    assert result["error"] == "entry point again: provider kind 'words' is declared twice"
