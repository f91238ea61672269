"""AWS Bedrock's settings: section `[aws_bedrock]`."""

from __future__ import annotations

from pydantic import Field, SecretStr

from llmservice.providers.remote.settings import RemoteSettings


class BedrockSettings(RemoteSettings):
    """AWS Bedrock's Converse API. Credentials come from the standard AWS chain
    (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_PROFILE, roles)
    unless access_key_id and secret_access_key are given."""

    model: str = Field(
        "", description="a model or inference profile id, e.g. anthropic.claude-3-haiku-20240307-v1:0"
    )
    region: str = ""
    temperature: float | None = Field(None, ge=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    endpoint_url: str = Field("", description="overrides https://bedrock-runtime.REGION.amazonaws.com")
    access_key_id: SecretStr | None = Field(
        None, description="with secret_access_key: used instead of the AWS chain"
    )
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None

    def missing(self) -> list[str]:
        return [name for name in ("model", "region") if not getattr(self, name)]
