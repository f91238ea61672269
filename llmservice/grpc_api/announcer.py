"""This service as a provider of another one: it registers with a gateway's
ProviderRegistryService (settings `announce.*`), renews its lease at a third of its length,
registers again when the lease was lost (the gateway restarted, or dropped it) and
deregisters before it drains, so the gateway stops sending it work first.

A gateway that refuses the registration for good (a bad key, a name taken, a target its
allowed hosts do not admit) is logged as an error and asked again every 30 s: the
operator may fix either side without restarting this one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

import grpc

from llmservice._pb.llmservice.v1 import provider_registry_pb2 as pb
from llmservice._pb.llmservice.v1 import provider_registry_pb2_grpc as pb_grpc
from llmservice.service.settings import AnnounceSettings

log = logging.getLogger(__name__)

RETRY_S = 1.0  # after a lost lease or an unreachable gateway
REFUSED_RETRY_S = 30.0  # after a refusal that a retry alone will not change
_FINAL = {
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.ALREADY_EXISTS,
}


class Announcer:
    def __init__(self, settings: AnnounceSettings, target: str) -> None:
        """`target`: where the gateway reaches this service (announce.target, or our own address)."""
        self._settings = settings
        self._channel = grpc.aio.insecure_channel(settings.to)
        self._stub = pb_grpc.ProviderRegistryServiceStub(self._channel)
        key = os.environ.get(settings.key_env, "") if settings.key_env else ""
        self._metadata = (("authorization", f"Bearer {key}"),) if key else ()
        replica_key = os.environ.get(settings.replica_key_env, "") if settings.replica_key_env else ""
        self._request = pb.RegisterProviderRequest(
            name=settings.name,
            target=target,
            models=settings.models,
            service="llmservice.v1",
            api_key=replica_key,
            lease_s=settings.lease_s,
        )
        self._lease_id = ""
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self.registered = asyncio.Event()  # set once the gateway has taken the registration

    async def start(self) -> None:
        self._task = asyncio.create_task(self._keep(), name=f"announce to {self._settings.to}")

    async def stop(self) -> None:
        """Stop renewing and deregister (the gateway's calls in flight here still finish)."""
        if self._stopped:
            return
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._lease_id:
            try:
                await self._stub.DeregisterProvider(
                    pb.DeregisterProviderRequest(lease_id=self._lease_id), metadata=self._metadata, timeout=5
                )
                log.info("announce: deregistered from %s", self._settings.to)
            except grpc.aio.AioRpcError as exc:
                log.warning("announce: deregistering from %s failed: %s", self._settings.to, exc.details())
            self._lease_id = ""
        await self._channel.close()

    async def _keep(self) -> None:
        while True:
            wait = await self._renew() if self._lease_id else await self._register()
            await asyncio.sleep(wait)

    async def _register(self) -> float:
        s = self._settings
        try:
            reply = await self._stub.RegisterProvider(self._request, metadata=self._metadata, timeout=15)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in _FINAL:
                log.error("announce: %s refused to register %s: %s", s.to, s.name, exc.details())
                return REFUSED_RETRY_S
            log.warning("announce: cannot register with %s yet (%s): retrying", s.to, exc.code().name)
            return RETRY_S
        self._lease_id = reply.lease_id
        log.info(
            "announce: registered with %s as %s at %s (lease %gs)",
            s.to,
            s.name,
            self._request.target,
            reply.lease_s,
        )
        self.registered.set()
        return reply.lease_s / 3

    async def _renew(self) -> float:
        try:
            reply = await self._stub.RenewLease(
                pb.RenewLeaseRequest(lease_id=self._lease_id), metadata=self._metadata, timeout=5
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                log.warning("announce: %s dropped the lease: registering again", self._settings.to)
                self._lease_id = ""
                return 0.0
            log.warning(
                "announce: renewing with %s failed (%s): retrying", self._settings.to, exc.code().name
            )
            return RETRY_S
        return reply.lease_s / 3
