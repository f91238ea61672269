"""A route whose every deployment failed answers with the kind of failure they share."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import pytest

from llmservice.grpc_api.status import to_status
from llmservice.kernel.errors import (
    BudgetExhausted,
    DeadlineExceeded,
    LLMServiceError,
    ProviderAuthFailed,
    ProviderTimeout,
    ResourceExhausted,
    Unavailable,
)
from llmservice.kernel.types import ChatRequest, Message, StreamEvent
from llmservice.service.routing import FallbackRoute

from ..fakes.one_model import OneModel

HELLO = ChatRequest((Message("user", "hi"),))


class Failing(OneModel):
    def __init__(self, name: str, error: LLMServiceError) -> None:
        self.name, self.error = name, error

    async def stream(self, model: str, request: ChatRequest) -> AsyncGenerator[StreamEvent]:
        raise self.error
        yield


@pytest.mark.parametrize(
    ("errors", "kind", "code", "retry"),
    [
        (
            (DeadlineExceeded("eu slow"), ProviderTimeout("us slow")),
            DeadlineExceeded,
            "DEADLINE_EXCEEDED",
            None,
        ),
        (
            (ResourceExhausted("eu busy", retry_after_s=9), ResourceExhausted("us busy", retry_after_s=3)),
            ResourceExhausted,
            "RESOURCE_EXHAUSTED",
            3,
        ),
        (
            (ProviderAuthFailed("eu key"), ProviderAuthFailed("us key")),
            ProviderAuthFailed,
            "FAILED_PRECONDITION",
            None,
        ),
        (
            (BudgetExhausted("eu spent"), BudgetExhausted("us spent")),
            BudgetExhausted,
            "RESOURCE_EXHAUSTED",
            None,
        ),
        ((DeadlineExceeded("eu slow"), Unavailable("us down")), Unavailable, "UNAVAILABLE", None),
        (
            (Unavailable("eu down"), ResourceExhausted("us busy", retry_after_s=4)),
            Unavailable,
            "UNAVAILABLE",
            4,
        ),
    ],
)
async def test_every_deployment_failing_keeps_the_kind_they_share(
    errors: tuple[LLMServiceError, ...], kind: type[LLMServiceError], code: str, retry: float | None
) -> None:
    route = FallbackRoute("m", [Failing(f"d{i}", e) for i, e in enumerate(errors)], cooldown_s=1)
    with pytest.raises(LLMServiceError) as raised:
        async for _ in route.stream("m", HELLO):
            pass
    assert type(raised.value) is kind
    assert raised.value.retry_after_s == retry
    assert "every deployment of m failed; the last said: " + errors[-1].message == raised.value.message
    assert to_status(raised.value)[0].name == code
