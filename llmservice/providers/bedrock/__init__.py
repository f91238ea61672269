"""The `aws_bedrock` provider: Bedrock's Converse API (botocore comes with the `bedrock` extra)."""

from __future__ import annotations

from typing import Any

from llmservice.kernel.provider import Provider, ProviderEntry
from llmservice.kernel.settings import SettingsError
from llmservice.providers.bedrock.settings import BedrockSettings
from llmservice.providers.bedrock.wire import WIRE


def _build(settings: Any, name: str) -> Provider:
    try:
        from llmservice.providers.bedrock.provider import BedrockProvider
    except ImportError as exc:  # botocore comes with the optional extra
        raise SettingsError(
            f"provider aws_bedrock needs the bedrock extra: pip install 'llmservice[bedrock]' ({exc})"
        ) from None
    return BedrockProvider(settings, name)


ENTRIES = (
    ProviderEntry(
        kind="aws_bedrock",
        title="Bedrock Converse; credentials from the AWS chain",
        settings=BedrockSettings,
        factory=_build,
        env={
            "AWS_BEDROCK_MODEL_ID": "model",
            "AWS_BEDROCK_REGION": "region",
            "AWS_BEDROCK_TEMPERATURE": "temperature",
            "AWS_BEDROCK_MAX_TOKENS": "max_tokens",
        },
        paid=True,
        extra="bedrock",
        wire=WIRE,
    ),
)
