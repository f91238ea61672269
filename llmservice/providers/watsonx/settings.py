"""IBM watsonx.ai's settings: section `[watsonx]`."""

from __future__ import annotations

from pydantic import Field, SecretStr

from llmservice.providers.remote.settings import RemoteSettings


class WatsonxSettings(RemoteSettings):
    api_key: SecretStr | None = None
    url: str = Field("", description="the region's endpoint, e.g. https://us-south.ml.cloud.ibm.com")
    project_id: str = ""
    model: str = "ibm/granite-3-8b-instruct"
    temperature: float | None = Field(None, ge=0, le=2)
    iam_url: str = Field("https://iam.cloud.ibm.com", description="where the API key becomes a token")
    api_version: str = Field("2024-10-08", description="the version query parameter")

    def missing(self) -> list[str]:
        return [name for name in ("api_key", "url", "project_id") if not getattr(self, name)]
