from __future__ import annotations

from pathlib import Path

import pytest

from llmservice.kernel.errors import NotFound
from llmservice.kernel.settings import SettingsError
from llmservice.service.registry import ProviderRegistry
from llmservice.service.settings import DOCUMENTED_ENV, load_settings, parse_overrides


@pytest.fixture
def toml(tmp_path: Path) -> Path:
    path = tmp_path / "llm.toml"
    path.write_text(
        'provider = "from-toml"\n[server]\ngrpc_port = 1111\ndrain_grace_s = 3\n'
        "[llamacpp]\nn_ctx = 1024\nmax_tokens = 64\n"
    )
    return path


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in (
        *DOCUMENTED_ENV,
        "LLMSERVICE_PROVIDER",
        "LLMSERVICE_SERVER__GRPC_PORT",
        "LLMSERVICE_CONFIG",
        "LLMSERVICE_LLAMACPP__N_CTX",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no ./llm.toml unless a test writes one


def test_defaults() -> None:
    settings = load_settings()
    assert settings.provider == "llamacpp"
    assert settings.server.grpc_port == 50051
    assert settings.llamacpp.model_path is None


def test_toml_then_documented_env_then_prefixed_env_then_cli(
    toml: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert load_settings(toml).provider == "from-toml"
    monkeypatch.setenv("LLM_PROVIDER", "from-documented-env")
    assert load_settings(toml).provider == "from-documented-env"
    monkeypatch.setenv("LLMSERVICE_PROVIDER", "from-prefixed-env")
    assert load_settings(toml).provider == "from-prefixed-env"
    assert load_settings(toml, ["provider=from-cli"]).provider == "from-cli"


def test_nested_keys_merge_across_sources(toml: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMSERVICE_SERVER__GRPC_PORT", "2222")
    settings = load_settings(toml, ["llamacpp.n_ctx=2048"])
    assert settings.server.grpc_port == 2222  # env over toml
    assert settings.server.drain_grace_s == 3  # toml kept beside it
    assert settings.llamacpp.n_ctx == 2048  # cli over toml
    assert settings.llamacpp.max_tokens == 64


def test_llm_toml_in_the_working_directory_is_read(toml: Path) -> None:
    assert load_settings().provider == "from-toml"


def test_config_file_named_by_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "other.toml"
    other.write_text('provider = "named"\n')
    monkeypatch.setenv("LLMSERVICE_CONFIG", str(other))
    assert load_settings().provider == "named"


def test_unknown_toml_key_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[server]\ngrpc_prot = 1\n")
    with pytest.raises(SettingsError, match=r"server\.grpc_prot"):
        load_settings(path)


def test_unknown_cli_key_is_an_error() -> None:
    with pytest.raises(SettingsError, match="nonsense"):
        load_settings(overrides=["nonsense=1"])


def test_invalid_value_names_the_key_and_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMSERVICE_LLAMACPP__N_CTX", "many")
    with pytest.raises(SettingsError, match=r"llamacpp\.n_ctx \[env LLMSERVICE_LLAMACPP__N_CTX\]"):
        load_settings()


def test_out_of_range_value_is_an_error() -> None:
    with pytest.raises(SettingsError, match=r"llamacpp\.temperature"):
        load_settings(overrides=["llamacpp.temperature=3"])


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "absent.toml")


def test_overrides_parse_dotted_keys_and_json() -> None:
    assert parse_overrides(["a.b=1", "a.c=[1, 2]", "d=x=y"]) == {"a": {"b": "1", "c": [1, 2]}, "d": "x=y"}
    with pytest.raises(SettingsError, match="key=value"):
        parse_overrides(["novalue"])


def test_model_path_must_be_an_existing_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"llamacpp\.model_path \[env LLMSERVICE_LLAMACPP__MODEL_PATH\]"):
        load_settings(overrides=[f"llamacpp.model_path={tmp_path / 'absent.gguf'}"])


def test_documented_provider_variables_land_in_their_sections(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {
        "OPENAI_API_KEY": "sk-one",
        "OPENAI_MODEL": "gpt-4.1-mini",
        "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
        "OPENAI_TEMPERATURE": "0.5",
        "AZURE_OPENAI_API_KEY": "az-key",
        "AZURE_OPENAI_ENDPOINT": "https://example.openai.azure.com",
        "AZURE_OPENAI_DEPLOYMENT": "gpt-4o-eu",
        "AZURE_OPENAI_API_VERSION": "2025-01-01",
        "AZURE_OPENAI_TEMPERATURE": "0.2",
        "ANTHROPIC_API_KEY": "sk-ant",
        "ANTHROPIC_MODEL": "claude-x",
        "ANTHROPIC_TEMPERATURE": "0.3",
        "ANTHROPIC_MAX_TOKENS": "100",
        "AWS_BEDROCK_MODEL_ID": "anthropic.claude-3-haiku-20240307-v1:0",
        "AWS_BEDROCK_REGION": "eu-west-1",
        "AWS_BEDROCK_TEMPERATURE": "0.4",
        "AWS_BEDROCK_MAX_TOKENS": "200",
        "WATSONX_APIKEY": "wx-key",
        "WATSONX_URL": "https://us-south.ml.cloud.ibm.com",
        "WATSONX_PROJECT_ID": "proj",
        "WATSONX_MODEL_ID": "ibm/granite",
        "WATSONX_TEMPERATURE": "0.6",
        "OLLAMA_MODEL": "llama3.2:1b",
        "OLLAMA_BASE_URL": "http://127.0.0.1:11434",
        "OLLAMA_TEMPERATURE": "0.7",
        "LLM_GRPC_TARGET": "127.0.0.1:50052",
        "LLM_GRPC_API_KEY": "gpu-key",
        "LLM_GRPC_MODEL": "SmolLM2-135M-Instruct",
        "CACHE_TYPE": "redis",
        "REDIS_URL": "redis://127.0.0.1:6390/1",
        "LLMCHAT_CHAT_HISTORY_TTL": "60",
        "LLMCHAT_CHAT_HISTORY_MAX_MESSAGES": "10",
        "LLMCHAT_SESSION_TTL": "30",
        "LLMCHAT_SESSION_LOCK_TTL": "5",
        "LLMCHAT_SESSION_LOCK_RETRIES": "3",
        "LLMCHAT_SESSION_LOCK_WAIT": "0.1",
        "LLMCHAT_TURN_TIMEOUT": "50.0",
        "LLMCHAT_TOOL_TIMEOUT": "5.0",
        "LLMCHAT_MAX_STEPS": "4",
        "LLMCHAT_SECRET_KEY": "s3cret",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_SDK_DISABLED": "True",
        "OTEL_SERVICE_NAME": "llm-eu",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces",
        "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer otel",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "x-team=llm",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "5000",
        "OTEL_TRACES_SAMPLER_ARG": "0.5",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert set(values) == set(DOCUMENTED_ENV) - {"LLM_PROVIDER"}  # every documented variable is checked
    for name, path in DOCUMENTED_ENV.items():
        if name not in values:
            continue
        value = getattr(getattr(settings, path[0]), path[1])
        value = value.get_secret_value() if hasattr(value, "get_secret_value") else value
        assert str(value) == values[name], name
    assert "sk-one" not in repr(settings)  # secrets are masked wherever settings are shown


@pytest.mark.parametrize(
    ("provider", "env", "named"),
    [
        ("openai", {}, ["OPENAI_API_KEY"]),
        ("azure_openai", {"AZURE_OPENAI_API_KEY": "k"}, ["AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_DEPLOYMENT"]),
        ("openai_compatible", {}, ["LLMSERVICE_OPENAI_COMPATIBLE__BASE_URL"]),
    ],
)
def test_a_default_provider_without_its_required_settings_fails_naming_them(
    provider: str, env: dict[str, str], named: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLM_PROVIDER", provider)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as raised:
        ProviderRegistry.from_settings(load_settings())
    for variable in named:
        assert variable in str(raised.value)


def test_every_remote_provider_with_its_settings_is_served(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_PROVIDER", "openai")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    registry = ProviderRegistry.from_settings(
        load_settings(
            overrides=["openai_compatible.base_url=http://127.0.0.1:9/v1", "openai_compatible.model=m"]
        )
    )
    assert registry.resolve("", "")[0].name == "openai"
    assert registry.resolve("openai_compatible", "")[0].name == "openai_compatible"


# Two named deployments of every remote provider kind, as llm.toml holds them.
DEPLOYMENTS_TOML = """
provider = "gpt-eu"
[deployments.gpt-eu]
provider = "openai"
api_key_env = "GPT_EU_KEY"
[deployments.gpt-us]
provider = "openai"
api_key = "sk-us"
base_url = "http://127.0.0.1:9/v1"
[deployments.azure-eu]
provider = "azure_openai"
api_key = "k"
endpoint = "https://eu.example.openai.azure.com"
deployment = "gpt-4o"
[deployments.azure-us]
provider = "azure_openai"
api_key = "k"
endpoint = "https://us.example.openai.azure.com"
deployment = "gpt-4o-mini"
[deployments.vllm-a]
provider = "openai_compatible"
base_url = "http://127.0.0.1:9/v1"
model = "a"
[deployments.vllm-b]
provider = "openai_compatible"
base_url = "http://127.0.0.1:10/v1"
model = "b"
[deployments.claude-eu]
provider = "anthropic"
api_key = "k"
[deployments.claude-us]
provider = "anthropic"
api_key = "k"
model = "claude-x"
[deployments.gpu-a]
provider = "grpc"
target = "127.0.0.1:50052"
model = "m"
[deployments.gpu-b]
provider = "grpc"
target = "127.0.0.1:50053"
model = "m"
service = "protocol"
[deployments.ollama-a]
provider = "ollama"
model = "llama3.2:1b"
[deployments.ollama-b]
provider = "ollama"
model = "qwen3:0.6b"
base_url = "http://127.0.0.1:11435"
[deployments.granite-us]
provider = "watsonx"
api_key_env = "WX_US_KEY"
url = "https://us-south.ml.cloud.ibm.com"
project_id = "p-us"
[deployments.granite-eu]
provider = "watsonx"
api_key = "k"
url = "https://eu-de.ml.cloud.ibm.com"
project_id = "p-eu"
model = "ibm/granite-3-2b-instruct"
[deployments.bedrock-eu]
provider = "aws_bedrock"
model = "anthropic.claude-3-haiku-20240307-v1:0"
region = "eu-west-1"
[deployments.bedrock-us]
provider = "aws_bedrock"
model = "amazon.nova-lite-v1:0"
region = "us-east-1"
"""


def test_several_named_deployments_of_every_provider_load_and_are_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmservice.providers import entries

    remote = [kind for kind, entry in entries().items() if not entry.local]

    pytest.importorskip("botocore")
    config = tmp_path / "llm.toml"
    config.write_text(DEPLOYMENTS_TOML)
    monkeypatch.setenv("GPT_EU_KEY", "sk-eu")
    monkeypatch.setenv("WX_US_KEY", "wx-us")
    settings = load_settings(config)
    kinds = [d.provider for d in settings.deployments.values()]
    assert sorted(kinds) == sorted(remote * 2)  # every remote kind, twice
    assert settings.deployments["granite-eu"].model == "ibm/granite-3-2b-instruct"
    assert settings.deployments["bedrock-us"].region == "us-east-1"
    registry = ProviderRegistry.from_settings(settings)
    for name in settings.deployments:
        assert registry.resolve(name, "")[0].name == name
    assert registry.resolve("bedrock-us", "")[1] == "amazon.nova-lite-v1:0"
    assert registry.resolve("granite-us", "")[1] == "ibm/granite-3-8b-instruct"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[deployments.wx]\nprovider = "watsonx"\napi_key = "k"\nurl = "https://x"\n',
            "deployments.wx needs project_id",
        ),
        ('[deployments.br]\nprovider = "aws_bedrock"\nmodel = "m"\n', "deployments.br needs region"),
        (
            '[deployments.br]\nprovider = "aws_bedrock"\nmodel = "m"\nregion = "r"\napi_key_env = "K"\n',
            "deployments.br: api_key_env: this provider takes no API key",
        ),
        ('[deployments.wx]\nprovider = "watsonx"\nregion = "r"\n', r"deployments\.wx\.watsonx\.region"),
    ],
)
def test_incomplete_watsonx_and_bedrock_deployments_fail_naming_the_setting(
    tmp_path: Path, text: str, message: str
) -> None:
    pytest.importorskip("botocore")
    config = tmp_path / "llm.toml"
    config.write_text(text)
    with pytest.raises(SettingsError, match=message):
        ProviderRegistry.from_settings(load_settings(config))


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"AZURE_OPENAI_API_KEY": "k"}, ["AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_DEPLOYMENT"]),
        ({"WATSONX_APIKEY": "k", "WATSONX_URL": "https://x"}, ["WATSONX_PROJECT_ID"]),
        ({"AWS_BEDROCK_REGION": "eu-west-1"}, ["AWS_BEDROCK_MODEL_ID"]),
        ({"OLLAMA_BASE_URL": "http://127.0.0.1:11434"}, ["OLLAMA_MODEL"]),
        ({"OPENAI_MODEL": "gpt-4.1"}, ["OPENAI_API_KEY"]),
    ],
)
def test_a_provider_configured_in_part_fails_at_start_up_even_when_not_the_default(
    env: dict[str, str], named: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match="configured in part") as raised:
        ProviderRegistry.from_settings(load_settings())  # the default stays llamacpp
    for variable in named:
        assert variable in str(raised.value)


def test_a_provider_left_unconfigured_is_simply_not_served() -> None:
    registry = ProviderRegistry.from_settings(load_settings(overrides=["provider=ollama", "ollama.model=m"]))
    with pytest.raises(NotFound):
        registry.resolve("azure_openai", "")
