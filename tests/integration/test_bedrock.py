"""Bedrock: requests signed by botocore with the caller's AWS credentials, Converse's body shape."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("botocore")  # the bedrock extra

from llmservice.kernel.errors import ProviderAuthFailed, Unavailable
from llmservice.kernel.types import ChatRequest, Message, Sampling, StreamEnd, Tool, ToolCall, ToolChoice
from llmservice.providers.bedrock.provider import BedrockProvider
from llmservice.providers.bedrock.settings import BedrockSettings

from ..fakes.bedrock_server import fake_bedrock
from ..fakes.upstream import Reply

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)


def settings(url: str) -> BedrockSettings:
    return BedrockSettings(
        model="anthropic.claude-3-haiku-20240307-v1:0", region="eu-west-1", endpoint_url=url
    )


async def test_the_converse_body_carries_system_inference_and_tools() -> None:
    request = ChatRequest(
        (Message("system", "Be brief."), Message("user", "Weather?")),
        sampling=Sampling(temperature=0.5, top_p=0.9, max_tokens=50, stop=("END",)),
        tools=(Tool("get_weather", "Weather", '{"type": "object", "properties": {}}'),),
        tool_choice=ToolChoice("required"),
    )
    with fake_bedrock(access_key="AKIDEXAMPLE", secret_key=SECRET, region="eu-west-1") as upstream:
        async with BedrockProvider(settings(upstream.url)) as provider:
            await provider.complete(provider.default_model, request)
    sent = upstream.requests[0]
    assert upstream.paths == ["/model/anthropic.claude-3-haiku-20240307-v1:0/converse"]  # %3A on the wire
    assert sent["system"] == [{"text": "Be brief."}]
    assert sent["messages"] == [{"role": "user", "content": [{"text": "Weather?"}]}]
    assert sent["inferenceConfig"] == {
        "maxTokens": 50,
        "temperature": 0.5,
        "topP": 0.9,
        "stopSequences": ["END"],
    }
    assert sent["toolConfig"]["toolChoice"] == {"any": {}}
    assert sent["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"] == {
        "json": {"type": "object", "properties": {}}
    }


async def test_a_signature_aws_rejects_is_a_rejected_credential() -> None:
    with fake_bedrock(access_key="AKIDEXAMPLE", secret_key="another-secret", region="eu-west-1") as upstream:
        async with BedrockProvider(settings(upstream.url)) as provider:
            with pytest.raises(ProviderAuthFailed, match="aws_bedrock rejected"):
                await provider.complete(provider.default_model, ChatRequest((Message("user", "Hi"),)))


async def test_a_history_of_tool_turns_with_no_tools_offered_declares_the_tools_it_calls() -> None:
    """Bedrock refuses toolUse and toolResult blocks without a toolConfig (the fake as AWS
    does): a summary turn that offers no tools still declares the one the history called."""
    request = ChatRequest(
        (
            Message("user", "Weather in Paris?"),
            Message("assistant", "", (ToolCall("call_1", "get_weather", '{"city": "Paris"}'),)),
            Message("tool", "18 degrees", tool_call_id="call_1"),
            Message("user", "Summarise it."),
        )
    )
    with fake_bedrock(access_key="AKIDEXAMPLE", secret_key=SECRET, region="eu-west-1") as upstream:
        async with BedrockProvider(settings(upstream.url)) as provider:
            completion = await provider.complete(provider.default_model, request)
    assert completion.text == "Hello there"
    (tool,) = upstream.requests[0]["toolConfig"]["tools"]
    assert tool["toolSpec"]["name"] == "get_weather"
    assert "toolChoice" not in upstream.requests[0]["toolConfig"]


async def test_access_denied_names_model_access_and_iam_and_never_the_principal() -> None:
    arn = "arn:aws:iam::123456789012:user/ci"
    reply = Reply(status=403, error=f"User: {arn} is not authorized to perform: bedrock:InvokeModel")
    with fake_bedrock(reply, access_key="AKIDEXAMPLE", secret_key=SECRET, region="eu-west-1") as upstream:
        async with BedrockProvider(settings(upstream.url)) as provider:
            with pytest.raises(ProviderAuthFailed, match="model access") as caught:
                await provider.complete(provider.default_model, ChatRequest((Message("user", "Hi"),)))
    assert "IAM policy" in caught.value.message
    assert arn not in caught.value.message
    assert SECRET not in caught.value.message


async def test_no_credentials_fail_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ProviderAuthFailed, match="no AWS credentials"):
        async with BedrockProvider(settings("http://127.0.0.1:9")):
            pass


async def test_bytes_that_are_not_an_event_stream_end_it_as_a_provider_error() -> None:
    reply = Reply(text="one two three", garbage=True)
    request = ChatRequest((Message("user", "Hi"),))
    with fake_bedrock(reply, access_key="AKIDEXAMPLE", secret_key=SECRET, region="eu-west-1") as upstream:
        async with BedrockProvider(settings(upstream.url)) as provider:
            with pytest.raises(Unavailable, match="could not be read"):
                await _drain(provider, request)


async def _drain(provider: BedrockProvider, request: ChatRequest) -> None:
    async for event in provider.stream(provider.default_model, request):
        assert not isinstance(event, StreamEnd)
