"""The ProviderRegistryService servicer: decode, call Registrations, encode."""

from __future__ import annotations

import grpc

from llmservice._pb.llmservice.v1 import provider_registry_pb2 as pb
from llmservice._pb.llmservice.v1 import provider_registry_pb2_grpc as pb_grpc
from llmservice.grpc_api.status import errors_to_status
from llmservice.service.auth import AuthPolicy
from llmservice.service.registrations import Announcement, ProviderView, Registrations

_HEALTH = {True: "serving", False: "not_serving", None: "unknown"}


class ProviderRegistryServicer(pb_grpc.ProviderRegistryServiceServicer):
    def __init__(self, registrations: Registrations, auth: AuthPolicy) -> None:
        self._registrations = registrations
        self._auth = auth

    @errors_to_status()
    async def RegisterProvider(
        self,
        request: pb.RegisterProviderRequest,
        context: grpc.aio.ServicerContext[pb.RegisterProviderRequest, pb.RegisterProviderResponse],
    ) -> pb.RegisterProviderResponse:
        principal = self._auth.authenticate(context.invocation_metadata() or ())
        announced = Announcement(
            name=request.name,
            target=request.target,
            models=tuple(request.models),
            service=request.service,
            tls=request.tls,
            api_key=request.api_key,
            lease_s=request.lease_s,
        )
        lease = await self._registrations.register(announced, principal)
        view = next(v for v in self._registrations.providers(principal) if v.name == lease.name)
        return pb.RegisterProviderResponse(lease_id=lease.id, lease_s=lease.length_s, provider=_encode(view))

    @errors_to_status()
    async def RenewLease(
        self,
        request: pb.RenewLeaseRequest,
        context: grpc.aio.ServicerContext[pb.RenewLeaseRequest, pb.RenewLeaseResponse],
    ) -> pb.RenewLeaseResponse:
        principal = self._auth.authenticate(context.invocation_metadata() or ())
        return pb.RenewLeaseResponse(lease_s=self._registrations.renew(request.lease_id, principal))

    @errors_to_status()
    async def DeregisterProvider(
        self,
        request: pb.DeregisterProviderRequest,
        context: grpc.aio.ServicerContext[pb.DeregisterProviderRequest, pb.DeregisterProviderResponse],
    ) -> pb.DeregisterProviderResponse:
        principal = self._auth.authenticate(context.invocation_metadata() or ())
        name = self._registrations.deregister(request.lease_id, request.name, principal)
        return pb.DeregisterProviderResponse(name=name)

    @errors_to_status()
    async def ListProviders(
        self,
        request: pb.ListProvidersRequest,
        context: grpc.aio.ServicerContext[pb.ListProvidersRequest, pb.ListProvidersResponse],
    ) -> pb.ListProvidersResponse:
        principal = self._auth.authenticate(context.invocation_metadata() or ())
        views = self._registrations.providers(principal)
        return pb.ListProvidersResponse(providers=[_encode(v) for v in views])


def _encode(view: ProviderView) -> pb.RegisteredProvider:
    return pb.RegisteredProvider(
        name=view.name,
        registered=view.registered,
        target=view.target,
        service=view.service,
        models=list(view.models),
        is_default=view.is_default,
        health=_HEALTH[view.health],
        lease_left_s=view.lease_left_s,
    )
