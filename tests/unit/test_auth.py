"""The auth policy: keys by digest, model patterns, open local mode."""

from __future__ import annotations

import hashlib

import pytest

from llmservice.kernel.errors import Unauthenticated
from llmservice.kernel.settings import SettingsError
from llmservice.service.auth import LOCAL, AuthPolicy, Principal
from llmservice.service.settings import AuthSettings


def test_open_mode_lets_everyone_in_as_local() -> None:
    policy = AuthPolicy({})
    assert policy.open
    assert policy.authenticate(()) is LOCAL


def test_keys_are_checked_by_digest_and_bytes_metadata_works() -> None:
    policy = AuthPolicy({"a": (hashlib.sha256(b"secret").hexdigest(), ("*",))})
    assert policy.authenticate([("authorization", b"Bearer secret")]).name == "a"
    assert policy.authenticate([("authorization", "bearer secret ")]).name == "a"
    for bad in ([], [("authorization", "Bearer other")], [("authorization", "Basic secret")]):
        with pytest.raises(Unauthenticated):
            policy.authenticate(bad)


@pytest.mark.parametrize(
    ("patterns", "provider", "model", "allowed"),
    [
        (("*",), "openai", "gpt-4o", True),
        (("gpt-4o",), "openai", "gpt-4o", True),
        (("gpt-4o",), "openai", "gpt-4o-mini", False),
        (("openai/*",), "openai", "gpt-4o-mini", True),
        (("openai/*",), "anthropic", "claude", False),
        (("gpt-*", "llamacpp/*"), "llamacpp", "gemma", True),
    ],
)
def test_model_patterns(patterns: tuple[str, ...], provider: str, model: str, allowed: bool) -> None:
    assert Principal("p", patterns).may_use(provider, model) is allowed


def test_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEAM_KEY", "from-env")
    settings = AuthSettings.model_validate({"principals": {"team": {"key_env": "TEAM_KEY"}}})
    assert (
        AuthPolicy.from_settings(settings).authenticate([("authorization", "Bearer from-env")]).name == "team"
    )
    monkeypatch.delenv("TEAM_KEY")
    with pytest.raises(SettingsError, match="TEAM_KEY"):
        AuthPolicy.from_settings(settings)


@pytest.mark.parametrize(
    ("principal", "message"), [({}, "key_sha256 or key_env"), ({"key_sha256": "abc"}, "64 hex")]
)
def test_a_principal_without_a_usable_key_fails_at_start_up(principal: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        AuthPolicy.from_settings(AuthSettings.model_validate({"principals": {"p": principal}}))
