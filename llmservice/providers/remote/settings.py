"""What every remote backend's settings section has."""

from __future__ import annotations

from pydantic import Field

from llmservice.kernel.settings import ProviderSettings


class RemoteSettings(ProviderSettings):
    """What every remote backend has: a request timeout and a retry budget."""

    timeout_s: float = Field(120.0, gt=0, description="one upstream call, first byte to last")
    connect_timeout_s: float = Field(10.0, gt=0)
    max_attempts: int = Field(3, ge=1, description="tries per call, the first included")
    max_concurrency: int = Field(64, ge=1, description="calls in flight at once; more wait, by priority")
    max_waiting: int = Field(256, ge=0, description="calls queued for a slot before the least urgent is shed")
