"""gRPC health (`grpc.health.v1.Health`): the server's, each LLMService name's, and one
entry per provider that watches its connection (`provider/NAME`: SERVING while it can be
reached, NOT_SERVING while not), kept current as providers come, go and fail."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable

from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio

from llmservice.kernel.provider import Provider

PROVIDER_PREFIX = "provider/"
Status = int  # a health_pb2.HealthCheckResponse.ServingStatus
_STATUS = {True: health_pb2.HealthCheckResponse.SERVING, False: health_pb2.HealthCheckResponse.NOT_SERVING}


class ServiceHealth(health_aio.HealthServicer):  # type: ignore[misc]  # grpcio-health has no stubs
    """grpcio's asyncio health servicer, with the `List` call it lacks (every entry and its status)."""

    def __init__(self) -> None:
        super().__init__()
        self._statuses: dict[str, Status] = {"": health_pb2.HealthCheckResponse.SERVING}

    async def set(self, service: str, status: Status) -> None:
        await super().set(service, status)
        self._statuses[service] = status

    async def forget(self, service: str) -> None:
        """An entry that is gone: Check and Watch say SERVICE_UNKNOWN, List leaves it out."""
        await super().set(service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
        self._statuses.pop(service, None)

    async def List(
        self, request: health_pb2.HealthListRequest, context: object
    ) -> health_pb2.HealthListResponse:
        return health_pb2.HealthListResponse(
            statuses={name: health_pb2.HealthCheckResponse(status=s) for name, s in self._statuses.items()}
        )


async def watch_providers(
    health: ServiceHealth,
    named: Callable[[], Iterable[tuple[str, Provider]]],
    changed: asyncio.Event,
    period_s: float = 0.5,
) -> None:
    """Keep the `provider/NAME` entries current, every `period_s` and as soon as `changed`
    is set (a provider registered or dropped), until cancelled."""
    shown: dict[str, Status] = {}
    while True:
        now = {
            PROVIDER_PREFIX + name: _STATUS[up]
            for name, provider in named()
            if (up := provider.health()) is not None
        }
        for entry, status in now.items():
            if shown.get(entry) != status:
                await health.set(entry, status)
        for entry in shown.keys() - now.keys():
            await health.forget(entry)
        shown = now
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), period_s)
        changed.clear()
