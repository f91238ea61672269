"""One gRPC call's metrics, counted once when the call ends: the servicer says when."""

from __future__ import annotations

import time
from typing import Any

import grpc

from llmservice.grpc_api.status import code_name
from llmservice.kernel.errors import LLMServiceError
from llmservice.observability.metrics import ServiceMetrics, surface_of

# The server's deadline is the caller's plus the request's way here, so a caller whose own
# deadline passes cancels a little before the server's does: that close, it is the deadline.
DEADLINE_SLACK_S = 0.5


class CallMetrics:
    """One call's metrics: counted once, when it ends (a stream: at its end event, error or cancel)."""

    __slots__ = (
        "_done",
        "_method",
        "_metrics",
        "_start",
        "_time_remaining",
        "first_token_s",
        "metadata",
        "model",
        "provider",
    )

    def __init__(
        self, metrics: ServiceMetrics, method: str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        self._metrics, self._method = metrics, method
        self.metadata = context.invocation_metadata() or ()
        self._time_remaining = context.time_remaining
        self._start = time.perf_counter()
        self.provider = self.model = ""  # until routed: a caller's model string is no label
        self.first_token_s = 0.0
        self._done = False

    def routed(self, provider: str, model: str) -> None:
        self.provider, self.model = provider, model

    def first_token(self) -> None:
        self.first_token_s = time.perf_counter() - self._start
        self._metrics.first_token.labels(self.provider, self.model).observe(self.first_token_s)

    def failed(self, exc: Exception) -> None:
        if isinstance(exc, LLMServiceError) and exc.provider and not self.provider:
            self.provider = exc.provider
        self.ended(code_name(exc))

    def cut(self) -> None:
        """The call was cancelled under it (asyncio cancels the handler, an exception no
        `failed` sees): its deadline passed, or the caller left."""
        remaining = self._time_remaining()
        late = remaining is not None and remaining <= DEADLINE_SLACK_S
        self.ended("DEADLINE_EXCEEDED" if late else "CANCELLED")

    def ended(self, code: str, tokens: int = 0) -> None:
        if self._done:
            return
        self._done = True
        m, elapsed = self._metrics, time.perf_counter() - self._start
        if code != "OK":
            # A remote backend passes any model name on: only one that answered is a label,
            # so callers cannot grow the label set with names that do not exist.
            self.model = ""
        m.requests.labels(self._method, surface_of(self.metadata), self.provider, self.model, code).inc()
        m.duration.labels(self._method, self.provider, self.model).observe(elapsed)
        if tokens:
            m.tokens.labels(self.provider, self.model).inc(tokens)
            generating_s = elapsed - self.first_token_s
            if self.first_token_s and generating_s > 0:
                m.token_rate.labels(self.provider, self.model).observe(tokens / generating_s)
